"""`callmeter up`: the whole platform as a user starts it, and stopped with Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

from cryptography import x509

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


def test_a_killed_service_is_restarted_and_up_keeps_running(tmp_path: Path) -> None:
    data_dir, output = tmp_path / "data", tmp_path / "up.out"
    process = start_up(data_dir, tmp_path / "profile.json", output)
    try:
        table = wait_until_up(process, output)
        gateway_pid, gateway_address = table["gateway"]
        os.kill(gateway_pid, signal.SIGKILL)
        eventually(lambda: "gateway exited with code -9" in output.read_text(), timeout_s=30,
                   message="the restart line")
        line = next(line for line in output.read_text().splitlines() if "gateway exited with code -9" in line)
        assert "restarting in 1 s" in line and "gateway.log" in line, line
        assert not pid_alive(gateway_pid)
        eventually(lambda: check_health(gateway_address, data_dir / "tls" / "ca.pem"), timeout_s=60,
                   message="a new gateway healthy")
        # The worker dials the new gateway in.
        eventually(lambda: http_get(f"http://{table['worker'][1]}/readyz")[0] == 200, timeout_s=60,
                   message="the worker connected again")
        assert process.poll() is None, output.read_text()
        for name in ("metrics", "orchestrator", "api", "worker"):  # nothing else was restarted
            assert pid_alive(table[name][0]), name
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(60)
    assert code == 0, output.read_text()


def gateway_cert_names(data_dir: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate((data_dir / "tls" / "server.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {*names.get_values_for_type(x509.DNSName), *map(str, names.get_values_for_type(x509.IPAddress))}


def test_the_gateway_listens_where_told_with_a_certificate_for_the_names_given(tmp_path: Path) -> None:
    data_dir, profile, output = tmp_path / "data", tmp_path / "profile.json", tmp_path / "up.out"
    process = start_up(data_dir, profile, output, "--gateway-listen", "127.0.0.2:0",
                       "--dev-cert-names", "gw.example.test,10.9.8.7")
    try:
        table = wait_until_up(process, output)
        host, port = table["gateway"][1].rsplit(":", 1)
        assert host == "127.0.0.2", output.read_text()
        assert check_health(table["gateway"][1], data_dir / "tls" / "ca.pem")
        with socket.socket() as sock:  # bound to 127.0.0.2 only
            assert sock.connect_ex(("127.0.0.1", int(port))) != 0
        assert http_get(f"http://{table['worker'][1]}/readyz")[0] == 200  # the worker dialled 127.0.0.2
        assert gateway_cert_names(data_dir) == {"localhost", "127.0.0.1", "::1", "127.0.0.2", "gw.example.test",
                                                "10.9.8.7"}
        internal = x509.load_pem_x509_certificate((data_dir / "tls" / "internal-api.pem").read_bytes())
        assert "gw.example.test" not in str(internal.extensions)
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0, output.read_text()
    ca = (data_dir / "tls" / "ca.pem").read_bytes()

    again = tmp_path / "again.out"
    process = start_up(data_dir, profile, again)
    try:
        table = wait_until_up(process, again)
        assert table["gateway"][1].startswith("127.0.0.1:")
        assert gateway_cert_names(data_dir) == {"localhost", "127.0.0.1", "::1"}  # issued again, by the same CA
        assert (data_dir / "tls" / "ca.pem").read_bytes() == ca
        assert check_health(table["gateway"][1], data_dir / "tls" / "ca.pem")
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0, again.read_text()


def test_a_bad_gateway_listen_is_one_line_naming_it(tmp_path: Path) -> None:
    result = subprocess.run(callmeter_command("up", "--data-dir", str(tmp_path / "data"), "--auto-ports",
                                              "--gateway-listen", "127.0.0.2"),
                            env=base_env(CALLMETER_PROFILE=str(tmp_path / "p.json")), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "callmeter: error: --gateway-listen: expected HOST:PORT (port 0 to 65535), got '127.0.0.2'"]


def child_pid(up_pid: int, name: str) -> int | None:
    """The pid of `up`'s child running `callmeter NAME`, if one runs."""
    for task in Path(f"/proc/{up_pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if name.encode() in argv and pid_alive(int(pid)):
                return int(pid)
    return None


def test_a_killed_nats_server_is_restarted(tmp_path: Path) -> None:
    output = tmp_path / "up.out"
    process = start_up(tmp_path / "data", tmp_path / "profile.json", output)
    try:
        table = wait_until_up(process, output)
        nats_pid, nats_url = table["nats-server"]
        os.kill(nats_pid, signal.SIGKILL)
        eventually(lambda: "nats-server exited with code -9" in output.read_text(), timeout_s=30,
                   message="the restart line")

        def listening() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", int(nats_url.rsplit(":", 1)[1]))) == 0

        eventually(listening, timeout_s=30, message="a new nats-server listening")
        assert process.poll() is None, output.read_text()
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(60)
    assert code == 0, output.read_text()
    assert output.read_text().count(" exited with code ") == 1, output.read_text()  # the services reconnected


def test_a_child_that_keeps_dying_stops_everything_with_one_line(tmp_path: Path) -> None:
    output = tmp_path / "up.out"
    process = start_up(tmp_path / "data", tmp_path / "profile.json", output)
    table = wait_until_up(process, output)
    killed: list[int] = []
    try:
        while process.poll() is None and len(killed) < 6:
            pid = eventually(lambda: process.poll() is not None or child_pid(process.pid, "gateway"), timeout_s=60,
                             message="a gateway to kill")
            if pid is True or pid in killed:
                continue
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        assert process.wait(60) == 2, output.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    assert len(killed) == 5, output.read_text()
    errors = [line for line in output.read_text().splitlines() if line.startswith("callmeter: error:")]
    assert len(errors) == 1 and "gateway exited with code -9" in errors[0] and "giving up" in errors[0], errors
    for name, (pid, _address) in table.items():
        eventually(lambda pid=pid: not pid_alive(pid), timeout_s=30, message=f"{name} gone")
