"""`callmeter up`: the whole platform as a user starts it, and stopped with Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

from callmeter.common.channels import check_health
from callmeter.common.tls import ensure_dev_pki
from tests.procs import base_env, callmeter_command, eventually, http_get

SERVICES = ("nats-server", "metrics", "orchestrator", "gateway", "api", "worker")


def start_up(data_dir: Path, profile: Path, output: Path, *args: str) -> subprocess.Popen[bytes]:
    env = base_env(CALLMETER_PROFILE=str(profile))
    return subprocess.Popen(callmeter_command("up", "--data-dir", str(data_dir), "--auto-ports", *args), env=env,
                            stdout=output.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_until_up(process: subprocess.Popen[bytes], output: Path) -> dict[str, tuple[int, str]]:
    """Waits for the ready line; returns the table: service → (pid, address)."""
    def ready() -> bool:
        assert process.poll() is None, output.read_text()
        return "Ctrl-C stops everything" in output.read_text()

    eventually(ready, timeout_s=90, message="`up` ready")
    rows = re.findall(r"^\s+(\S+)\s+(\d+)\s+(\S+)\s+\d+ MB(?:\s+\S+)?$", output.read_text(), re.MULTILINE)
    return {name: (int(pid), address) for name, pid, address in rows}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_up_starts_everything_healthy_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    data_dir, profile, output = tmp_path / "data", tmp_path / "profile.json", tmp_path / "up.out"
    process = start_up(data_dir, profile, output)
    try:
        table = wait_until_up(process, output)
        assert set(table) == set(SERVICES), output.read_text()
        for name in ("metrics", "orchestrator"):  # mutual TLS: only a certificate of up's CA is answered
            assert check_health(table[name][1], identity=ensure_dev_pki(data_dir / "tls").internal("api")), name
            assert not check_health(table[name][1], data_dir / "tls" / "ca.pem"), name
        assert check_health(table["api"][1])
        assert check_health(table["gateway"][1], data_dir / "tls" / "ca.pem")
        status, body = http_get(f"http://{table['worker'][1]}/readyz")
        assert status == 200 and json.loads(body)["state"] == "online"
        scrapes = dict(re.findall(r"^\s+(\S+)\s+\d+\s+\S+\s+\d+ MB\s+(\S+)$", output.read_text(), re.MULTILINE))
        assert set(scrapes) == set(SERVICES) - {"nats-server"}, output.read_text()
        for name, url in scrapes.items():
            status, body = http_get(url)
            assert status == 200 and "# TYPE" in body, name
        saved = json.loads(profile.read_text())
        assert saved["api"] == table["api"][1] and saved["token"].startswith("cma_")
        assert saved["token"] in output.read_text()  # shown once, on the first start
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(60)
    assert code == 0, output.read_text()
    assert "stopped cleanly" in output.read_text()
    for name, (pid, _address) in table.items():
        assert not pid_alive(pid), f"{name} (pid {pid}) still running"


def test_second_up_reuses_its_state(tmp_path: Path) -> None:
    data_dir, profile = tmp_path / "data", tmp_path / "profile.json"
    first_out, second_out = tmp_path / "first.out", tmp_path / "second.out"
    first = start_up(data_dir, profile, first_out)
    wait_until_up(first, first_out)
    token = json.loads(profile.read_text())["token"]
    first.send_signal(signal.SIGINT)
    assert first.wait(60) == 0
    ca = (data_dir / "tls" / "ca.pem").read_bytes()
    worker_token = (data_dir / "secrets" / "worker-token").read_text()

    second = start_up(data_dir, profile, second_out)
    try:
        table = wait_until_up(second, second_out)
        assert "owner API token" not in second_out.read_text()
        assert json.loads(profile.read_text())["token"] == token
        assert json.loads(profile.read_text())["api"] == table["api"][1]
        assert (data_dir / "tls" / "ca.pem").read_bytes() == ca
        assert (data_dir / "secrets" / "worker-token").read_text() == worker_token
    finally:
        second.send_signal(signal.SIGINT)
        assert second.wait(60) == 0, second_out.read_text()


def test_up_killed_leaves_nothing_running(tmp_path: Path) -> None:
    """Even a SIGKILLed `up` takes its children down (they die with their parent)."""
    output = tmp_path / "up.out"
    process = start_up(tmp_path / "data", tmp_path / "profile.json", output)
    table = wait_until_up(process, output)
    process.kill()
    process.wait()
    for name, (pid, _address) in table.items():
        eventually(lambda pid=pid: not pid_alive(pid), timeout_s=30, message=f"{name} gone")
