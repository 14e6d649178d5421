"""End to end: a self-hosted worker as docs/self-hosted-worker.md starts one. A second `callmeter
worker` process, given only the lines `callmeter workers token create` printed and the documented
network settings, joins a real `callmeter up` and runs a self-call with `up`'s local worker: the
callees on one, the callers on the other (each group's worker_selector), every call connected."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_selfcall import free_port
from tests.procs import base_env, callmeter_command, eventually, run_callmeter
from tests.test_up import wait_until_up

pytestmark = pytest.mark.timeout(420)

#: The console script, as a host with `pip install 'callmeter[worker]'` runs it.
CALLMETER = str(Path(sys.executable).parent / "callmeter")

SPEC = """
name: second-worker-selfcall
groups:
  - name: callees
    count: 2
    role: callee
    worker_selector: [{{key: site, value: remote}}]
    target: {{aor: "sip:callee{{n}}@127.0.0.1:{port}"}}
    codecs: [PCMU]
    media: {{tone: {{frequency_hz: 1004}}}}
  - name: callers
    count: 2
    role: caller
    worker_selector: [{{key: site, value: local}}]
    target: {{call_uri: "group:callees"}}
    codecs: [PCMU]
    media: {{tone: {{frequency_hz: 1004}}}}
    scenario: {{call_duration: 4s}}
gates:
  - {{metric: calls_connected_pct, comparison: ge, threshold: 100}}
  - {{metric: mos_avg, comparison: ge, threshold: 3.5}}
timeout: 120s
"""


def test_a_worker_started_from_a_minted_token_runs_a_selfcall_with_the_local_worker(tmp_path: Path) -> None:
    data, profile, output = tmp_path / "data", tmp_path / "profile.json", tmp_path / "up.out"
    # `up`'s local worker inherits `up`'s environment: a label the callers select it by, and an
    # RTP range of its own (the two workers share this host's ports).
    up = subprocess.Popen(callmeter_command("up", "--data-dir", str(data), "--auto-ports"),
                          env=base_env(CALLMETER_PROFILE=str(profile), CALLMETER_WORKER_LABELS="site=local",
                                       CALLMETER_RTP_PORT_MIN="20000", CALLMETER_RTP_PORT_MAX="20999"),
                          stdout=output.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        table = wait_until_up(up, output)

        def cli(*argv: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
            return run_callmeter(*argv, env={"CALLMETER_PROFILE": str(profile)}, timeout_s=timeout_s)

        created = cli("workers", "token", "create", "remote-1", "--gateway", table["gateway"][1],
                      "--ca-file", str(data / "tls" / "ca.pem"))
        assert created.returncode == 0, created.stderr
        printed = dict(line.split("=", 1) for line in created.stdout.splitlines())
        assert set(printed) == {"CALLMETER_GATEWAY_ADDRESS", "CALLMETER_CA_FILE", "CALLMETER_WORKER_TOKEN"}, printed
        # Nothing inherited from this process: the printed lines and the documented settings alone
        # (the health port 0 only because another test may hold 3030).
        worker_env = {"PATH": os.environ["PATH"], **printed, "SIP_IP": "127.0.0.1",
                      "CALLMETER_RTP_PORT_MIN": "21000", "CALLMETER_RTP_PORT_MAX": "21999",
                      "CALLMETER_WORKER_NAME": "remote-1", "CALLMETER_WORKER_LABELS": "site=remote",
                      "CALLMETER_HEALTH_PORT": "0"}
        home = tmp_path / "remote-host"
        home.mkdir()
        log_file = tmp_path / "remote-1.log"
        with log_file.open("wb") as log:
            worker = subprocess.Popen([CALLMETER, "worker"], env=worker_env, cwd=home, stdin=subprocess.DEVNULL,
                                      stdout=log, stderr=log)
        try:
            def both_online() -> bool:
                assert worker.poll() is None, log_file.read_text()[-3000:]
                listed = cli("workers", "list", "--json")
                assert listed.returncode == 0, listed.stderr
                states = {w["name"]: w["state"] for w in json.loads(listed.stdout)}
                return states.get("local") == "online" and states.get("remote-1") == "online"

            eventually(both_online, timeout_s=60, interval_s=0.5, message="both workers online")
            remote = next(w for w in json.loads(cli("workers", "list", "--json").stdout) if w["name"] == "remote-1")
            assert remote["labels"] == [{"key": "site", "value": "remote"}], remote

            spec = tmp_path / "selfcall.yaml"
            spec.write_text(SPEC.format(port=free_port()))
            ran = cli("run", str(spec), "--wait", "--json", timeout_s=240)
            assert ran.returncode == 0, ran.stdout + ran.stderr + log_file.read_text()[-3000:]
            summary = json.loads(ran.stdout)
            assert (summary["state"], summary["verdict"]) == ("finished", "pass"), summary
            groups = {group["name"]: group for group in summary["groups"]}
            for name in ("callers", "callees"):
                assert groups[name]["endpoints"] == 2 and groups[name]["calls_connected"] == 2, groups[name]
                assert 3.5 <= groups[name]["mos_avg"] <= 4.5 and groups[name]["loss_pct"] < 1, groups[name]
            assert (summary["total"]["calls_attempted"], summary["total"]["calls_connected"]) == (2, 2), summary

            shown = cli("runs", "show", summary["run_id"], "--json")
            assert shown.returncode == 0, shown.stderr
            placed = {(p["group"], p["worker"]) for p in json.loads(shown.stdout)["placements"]}
            assert placed == {("callees", "remote-1"), ("callers", "local")}, placed
            # Both workers measured their phones' seconds and sent them up.
            loads = summary["workers"]
            assert len(loads) == 2 and all(load["endpoint_seconds"] > 0 for load in loads), loads
        finally:
            assert stop(worker, signal.SIGTERM, 30) == 0, log_file.read_text()[-3000:]
        assert "Traceback" not in log_file.read_text()
    finally:
        assert stop(up, signal.SIGINT, 60) == 0, output.read_text()[-3000:]


def stop(process: subprocess.Popen[bytes], signum: int, timeout_s: float) -> int | None:
    """The exit code after ``signum``; None, and the process killed, if it did not exit in time."""
    process.send_signal(signum)
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None
