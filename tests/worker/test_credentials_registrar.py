"""A password per extension against a registrar with a password per user (Kamailio on loopback).

`callmeter worker --local` with the worker's secrets file: the phones of one group share one
credential and each registers with its own number's password, from a {n} pattern or from a CSV
table; a wrong table entry fails that phone alone (401), a number the table lacks is refused by
name before it sends anything.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from tests.procs import eventually
from tests.worker.kamailio import kamailio
from tests.worker.test_local import CALLMETER, local_env, summaries

SPEC = """
name: per-extension
groups:
  - name: pattern
    count: 4
    role: registrar_only
    credential_ref: office
    target: {{registrar: "127.0.0.1:{port}", number_start: 101}}
  - name: table
    count: 5
    role: registrar_only
    credential_ref: pbx
    target: {{registrar: "127.0.0.1:{port}", number_start: 201}}
"""


def test_one_credential_gives_each_phone_of_a_group_its_own_password(tmp_path: Path) -> None:
    pattern = {str(n): f"pw-{n}-x" for n in range(101, 105)}
    table = {str(n): secrets.token_hex(8) for n in range(201, 205)}
    table["alice"] = table.pop("204")  # 204 authenticates as alice, by its table row
    (tmp_path / "pbx.csv").write_text("number,password,username\n201,{},\n202,{},\n203,wrong,\n204,{},alice\n"
                                      .format(table["201"], table["202"], table["alice"]))  # no 205
    (tmp_path / "secrets.yaml").write_text('office: {password: "pw-{n}-x"}\npbx: {passwords_file: pbx.csv}\n')
    lines: list[dict[str, Any]] = []
    log = tmp_path / "worker.log"
    with kamailio(tmp_path, passwords=pattern | table) as port:
        (tmp_path / "spec.yaml").write_text(SPEC.format(port=port))
        with log.open("w") as stderr:
            process = subprocess.Popen(
                [CALLMETER, "worker", "--local", "spec.yaml"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=stderr,
                text=True, env=local_env() | {"CALLMETER_SECRETS_FILE": str(tmp_path / "secrets.yaml")})
        reader = threading.Thread(target=lambda: lines.extend(json.loads(line) for line in process.stdout))
        reader.start()
        try:
            def settled() -> bool:  # every phone registered or failed
                assert process.poll() is None, "the worker ended early:\n" + log.read_text(errors="replace")[-4000:]
                done = {(line["group"], line["endpoint"]) for line in lines
                        if line["type"] == "error" or line.get("metrics", {}).get("registered")}
                return len(done) == 9
            eventually(settled, timeout_s=90, message="every phone registered or failed")
            process.send_signal(signal.SIGINT)
            process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            reader.join(10)
    worker_log = log.read_text(errors="replace")
    assert (process.returncode, summaries(lines)[""]["state"]) == (2, "cancelled"), worker_log[-4000:]  # by SIGINT

    errors = sorted((e["group"], e["endpoint"], e["sip_code"], e["reason"]) for e in lines if e["type"] == "error")
    assert [error[:3] for error in errors] == [("table", 2, 401), ("table", 4, 0)], errors
    assert errors[1][3] == "credential 'pbx' of group 'table' has no password for number 205 on this worker"
    by_group = summaries(lines)
    assert (by_group["pattern"]["registered"], by_group["pattern"]["register_failures"]) == (4, 0), by_group
    assert (by_group["table"]["registered"], by_group["table"]["endpoints_failed"]) == (3, 2), by_group
    output = json.dumps(lines) + worker_log
    shown = [password for password in [*pattern.values(), *table.values(), "pw-{n}"] if password in output]
    assert not shown, f"passwords shown: {shown}"
