"""The first day of docs/first-day.md, for real: the platform as production runs it (the machine's
PostgreSQL, a nats-server with JetStream, the four services started one by one with certificates
of one CA, mutual TLS between them), then bootstrap → a project → a worker token → a worker
started from nothing but the printed lines → a test run that passes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from callmeter.common.channels import check_health
from callmeter.common.stores.nats import EmbeddedNats
from callmeter.common.tls import DevPki, ensure_dev_pki
from tests.procs import callmeter_command, eventually

pytestmark = [pytest.mark.timeout(420), pytest.mark.postgres]

SERVICES = ("metrics", "orchestrator", "gateway", "api")
EXAMPLE = Path(__file__).parents[2] / "examples" / "selfcall.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def callmeter(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*callmeter_command(), *argv], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        os.killpg(process.pid, signal.SIGTERM)
    for process in started:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start_services(tmp_path: Path, database_url: str, nats_url: str, pki: DevPki,
                   processes: list[subprocess.Popen[bytes]]) -> dict[str, str]:
    """The four services as an operator starts them: each its own settings and certificate."""
    address = {name: f"127.0.0.1:{free_port()}" for name in SERVICES}
    common = {"CALLMETER_NATS_URL": nats_url, "CALLMETER_PROMETHEUS_PORT": "0"}
    settings = {
        "metrics": {"CALLMETER_CLICKHOUSE_URL": f"chdb://{tmp_path / 'metrics'}"},
        "orchestrator": {"CALLMETER_DATABASE_URL": database_url, "CALLMETER_METRICS_ADDRESS": address["metrics"]},
        "gateway": {"CALLMETER_TLS_CERT_FILE": str(pki.server_cert), "CALLMETER_TLS_KEY_FILE": str(pki.server_key),
                    "CALLMETER_ORCHESTRATOR_ADDRESS": address["orchestrator"]},
        "api": {"CALLMETER_DATABASE_URL": database_url, "CALLMETER_ORCHESTRATOR_ADDRESS": address["orchestrator"],
                "CALLMETER_METRICS_ADDRESS": address["metrics"]},
    }
    for name in SERVICES:
        log = (tmp_path / f"{name}.log").open("wb")
        env = {**os.environ, **common, **settings[name], **pki.internal(name).env(),
               "CALLMETER_GRPC_PORT": address[name].rsplit(":", 1)[1]}
        processes.append(subprocess.Popen([*callmeter_command(), name], env=env, stdout=log, stderr=log,
                                          start_new_session=True))
    internal = pki.internal("api")
    eventually(lambda: check_health(address["metrics"], identity=internal)
               and check_health(address["orchestrator"], identity=internal)
               and check_health(address["gateway"], pki.ca_cert) and check_health(address["api"]),
               timeout_s=120, interval_s=0.5, message="the four services healthy")
    return address


def test_the_first_day_from_bootstrap_to_a_passing_run(tmp_path: Path, postgres_url: str,
                                                        processes: list[subprocess.Popen[bytes]]) -> None:
    database = {"CALLMETER_DATABASE_URL": postgres_url}
    first = callmeter("bootstrap", "--organization", "acme", "--owner", "alice", env=database)
    assert first.returncode == 0, first.stderr
    token = first.stdout.strip()
    assert token.startswith("cma_") and "\n" not in token, "stdout is the token alone"
    again = callmeter("bootstrap", "--organization", "acme", "--owner", "alice", env=database)
    assert (again.returncode, again.stdout) == (0, ""), again.stderr

    pki = ensure_dev_pki(tmp_path / "tls")  # stands in for the operator's certificates
    nats = EmbeddedNats(tmp_path / "nats", port=free_port())
    nats.start()
    try:
        address = start_services(tmp_path, postgres_url, nats.url, pki, processes)
        assert not check_health(address["metrics"], pki.ca_cert), "no client certificate: refused"
        cli = {"CALLMETER_API": address["api"], "CALLMETER_TOKEN": token,
               "CALLMETER_PROFILE": str(tmp_path / "profile.json")}
        project = callmeter("projects", "create", "pbx-lab", env=cli)
        assert project.returncode == 0 and "created project 'pbx-lab'" in project.stdout, project.stderr

        minted = callmeter("workers", "token", "create", "lab-1", "--gateway", address["gateway"],
                           "--ca-file", str(pki.ca_cert), env=cli)
        assert minted.returncode == 0, minted.stderr
        lines = dict(line.split("=", 1) for line in minted.stdout.splitlines())
        assert set(lines) == {"CALLMETER_GATEWAY_ADDRESS", "CALLMETER_CA_FILE", "CALLMETER_WORKER_TOKEN"}
        # Elsewhere: nothing but the printed lines and the machine's SIP address.
        bare = {name: value for name, value in os.environ.items() if not name.startswith("CALLMETER_")}
        log = (tmp_path / "worker.log").open("wb")
        processes.append(subprocess.Popen(
            [*callmeter_command(), "worker"], env={**bare, **lines, "SIP_IP": "127.0.0.1", "CALLMETER_HEALTH_PORT": "0"},
            stdout=log, stderr=log, start_new_session=True))

        def online() -> bool:
            listed = callmeter("workers", "list", "--json", env=cli)
            return listed.returncode == 0 and any(w["state"] == "online" for w in json.loads(listed.stdout))
        eventually(online, timeout_s=120, interval_s=1, message="the worker online")

        run = callmeter("run", str(EXAMPLE), "--wait", "--json", env=cli)
        assert run.returncode == 0, run.stdout + run.stderr[-3000:]
        result = json.loads(run.stdout)
        assert (result["state"], result["verdict"]) == ("finished", "pass"), result
        assert result["total"]["calls_connected"] == 2 and result["total"]["outcomes"] == [
            {"outcome": "success", "sip_code": None, "endpoints": 4}], result["total"]
    finally:
        nats.stop()
