"""End to end: the five services as separate processes, a real self-call with real RTP, the
result read back through the API — on embedded defaults and on the machine's PostgreSQL and
NATS — and a run that survives its orchestrator being SIGKILLed and restarted."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from callmeter.common.stores.database import create_database_engine
from callmeter.common.stores.nats import EmbeddedNats
from callmeter.common.tls import DevPki
from callmeter.state.bootstrap import bootstrap_local
from callmeter.state.migrate import upgrade
from callmeter.v1 import results_pb2, results_pb2_grpc
from tests.procs import ServiceProcess, base_env, callmeter_command, eventually, http_get, start_service

MACHINE_NATS = "nats://127.0.0.1:4222"

SPEC = """
name: e2e-selfcall
groups:
  - name: callees
    count: 2
    role: callee
    target: {{aor: "sip:callee{{n}}@127.0.0.1:{port}"}}
    codecs: [PCMU]
    media: {{tone: {{frequency_hz: 1004}}}}
  - name: callers
    count: 2
    role: caller
    target: {{call_uri: "group:callees"}}
    codecs: [PCMU]
    media: {{tone: {{frequency_hz: 1004}}}}
    scenario: {{call_duration: {duration}s}}
gates:
  - {{metric: mos_avg, comparison: ge, threshold: 3.5}}
timeout: 120s
"""


@dataclass
class Platform:
    tmp_path: Path
    database_url: str
    nats_url: str
    pki: DevPki
    services: dict[str, ServiceProcess]
    owner_token: str
    worker_token: str
    #: Fixed, so that a restarted orchestrator or gateway is found where the others look.
    orchestrator_port: int
    gateway_port: int

    def start_orchestrator(self) -> ServiceProcess:
        self.services["orchestrator"] = start_service("orchestrator", self.tmp_path, {
            "CALLMETER_DATABASE_URL": self.database_url, "CALLMETER_NATS_URL": self.nats_url,
            "CALLMETER_METRICS_ADDRESS": self.services["metrics"].address, "CALLMETER_COLLECT_DELAY_S": "2",
            "CALLMETER_GRPC_PORT": str(self.orchestrator_port)})
        return self.services["orchestrator"]

    def start_gateway(self) -> ServiceProcess:
        self.services["gateway"] = start_service("gateway", self.tmp_path, {
            "CALLMETER_NATS_URL": self.nats_url, "CALLMETER_TLS_CERT_FILE": str(self.pki.server_cert),
            "CALLMETER_TLS_KEY_FILE": str(self.pki.server_key),
            "CALLMETER_ORCHESTRATOR_ADDRESS": self.services["orchestrator"].address,
            "CALLMETER_GRPC_PORT": str(self.gateway_port)})
        return self.services["gateway"]

    def start_worker(self) -> ServiceProcess:
        worker = self.services["worker"] = start_service("worker", self.tmp_path, {
            "CALLMETER_GATEWAY_ADDRESS": self.services["gateway"].address, "CALLMETER_CA_FILE": str(self.pki.ca_cert),
            "CALLMETER_WORKER_TOKEN": self.worker_token, "CALLMETER_HEALTH_PORT": "0",
            "CALLMETER_WORKER_NAME": "e2e", "CALLMETER_RECONNECT_INITIAL_S": "1", "CALLMETER_RECONNECT_MAX_S": "2"})
        eventually(lambda: http_get(f"http://127.0.0.1:{worker.ready['health_port']}/readyz")[0] == 200,
                   timeout_s=60, message="worker connected")
        return worker

    def start_run(self, duration_s: int, *extra: str) -> tuple[subprocess.Popen[str], str]:
        """`callmeter run --wait --json` of the self-call in the background; returns it and its run id."""
        spec = self.tmp_path / "long.yaml"
        spec.write_text(SPEC.format(port=free_port(), duration=duration_s))
        env = base_env(CALLMETER_API=self.services["api"].address, CALLMETER_TOKEN=self.owner_token)
        runner = subprocess.Popen(callmeter_command("run", str(spec), "--wait", "--json", *extra), env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert runner.stderr is not None
        started = runner.stderr.readline()  # "run ID of 'NAME' version N started"
        assert started.startswith("run "), started + runner.stderr.read()
        return runner, started.split()[1]

    def wait_until_stored(self, run_id: str) -> None:
        """Until every endpoint of the self-call has seconds in the metrics store."""
        with grpc.insecure_channel(self.services["metrics"].address) as channel:
            metrics = results_pb2_grpc.MetricsQueryServiceStub(channel)
            eventually(lambda: metrics.GetRunSummary(results_pb2.RunSummaryRequest(run_id=run_id)).total.endpoints == 4,
                       timeout_s=60, message="every endpoint's first seconds stored")

    def run(self, spec_text: str, *extra: str, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
        spec = self.tmp_path / f"spec-{len(list(self.tmp_path.glob('spec-*')))}.yaml"
        spec.write_text(spec_text)
        env = base_env(CALLMETER_API=self.services["api"].address, CALLMETER_TOKEN=self.owner_token)
        return subprocess.run(callmeter_command("run", str(spec), "--wait", "--json", *extra), env=env,
                              capture_output=True, text=True, timeout=timeout_s)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_platform(tmp_path: Path, database_url: str, nats_url: str, pki: DevPki) -> Platform:
    engine = create_database_engine(database_url)
    upgrade(engine)
    boot = bootstrap_local(engine, existing_worker_token=None)
    engine.dispose()
    assert boot.owner_token_secret and boot.worker_token_secret
    platform = Platform(tmp_path, database_url, nats_url, pki, {}, boot.owner_token_secret, boot.worker_token_secret,
                        orchestrator_port=free_port(), gateway_port=free_port())
    platform.services["metrics"] = start_service("metrics", tmp_path, {
        "CALLMETER_NATS_URL": nats_url, "CALLMETER_CLICKHOUSE_URL": f"chdb://{tmp_path / 'metrics'}"})
    platform.start_orchestrator()
    platform.start_gateway()
    platform.services["api"] = start_service("api", tmp_path, {
        "CALLMETER_DATABASE_URL": database_url, "CALLMETER_ORCHESTRATOR_ADDRESS": platform.services["orchestrator"].address,
        "CALLMETER_METRICS_ADDRESS": platform.services["metrics"].address})
    platform.start_worker()
    return platform


def stop_platform(platform: Platform) -> None:
    for name in ("worker", "api", "gateway", "orchestrator", "metrics"):
        service = platform.services[name]
        assert service.terminate(timeout_s=20) == 0, f"{name}:\n{service.log()[-2000:]}"


@pytest.fixture
def embedded(tmp_path: Path, nats_server: EmbeddedNats, pki: DevPki) -> Iterator[Platform]:
    platform = start_platform(tmp_path, f"sqlite:///{tmp_path / 'state.db'}", nats_server.url, pki)
    yield platform
    stop_platform(platform)


@pytest.fixture
def production(tmp_path: Path, postgres_url: str, pki: DevPki) -> Iterator[Platform]:
    platform = start_platform(tmp_path, postgres_url, MACHINE_NATS, pki)
    yield platform
    stop_platform(platform)


def assert_good_call_result(result: subprocess.CompletedProcess[str]) -> dict:  # type: ignore[type-arg]
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert (summary["state"], summary["verdict"]) == ("finished", "pass"), summary
    groups = {group["name"]: group for group in summary["groups"]}
    for name in ("callers", "callees"):
        group = groups[name]
        assert group["endpoints"] == 2 and group["calls_connected"] == 2, group
        assert 3.5 <= group["mos_avg"] <= 4.5, group
        assert group["loss_pct"] < 1, group
    # Two calls, each counted by its caller and its callee; the run counts them once.
    assert (summary["total"]["calls_attempted"], summary["total"]["calls_connected"]) == (2, 2), summary["total"]
    assert summary["gates"] == [{"gate": "mos_avg >= 3.5", "observed": summary["total"]["mos_avg"], "baseline": None,
                                 "passed": True}]
    assert summary["total"]["completeness_pct"] == 100.0, summary["total"]
    return summary


def test_selfcall_on_embedded_defaults(embedded: Platform) -> None:
    assert_good_call_result(embedded.run(SPEC.format(port=free_port(), duration=5)))


@pytest.mark.postgres
def test_selfcall_on_postgresql_and_the_machines_nats(production: Platform) -> None:
    assert_good_call_result(production.run(SPEC.format(port=free_port(), duration=5)))


def test_run_survives_the_orchestrator_killed_and_restarted(embedded: Platform) -> None:
    runner, _ = embedded.start_run(12)
    worker_log = embedded.services["worker"]
    eventually(lambda: "assignment_accepted" in worker_log.log(), timeout_s=60, message="run dispatched")
    orchestrator = embedded.services["orchestrator"]
    os.kill(orchestrator.process.pid, signal.SIGKILL)
    orchestrator.process.wait()
    embedded.start_orchestrator()  # same port, same database: the api and gateway reconnect to it
    stdout, stderr = runner.communicate(timeout=180)
    assert_good_call_result(subprocess.CompletedProcess(runner.args, runner.returncode, stdout, stderr))


def worker_health(platform: Platform) -> dict:  # type: ignore[type-arg]
    status, body = http_get(f"http://127.0.0.1:{platform.services['worker'].ready['health_port']}/readyz")
    return {"http_status": status, **json.loads(body)}


def test_a_run_cancelled_while_the_worker_is_away_stops_when_it_is_back(embedded: Platform) -> None:
    """The gateway dies mid-run; the run is cancelled meanwhile (the cancel reaches nobody); the
    gateway comes back, the worker reconnects, its resent status says it still runs the part,
    and the orchestrator cancels it again: the phones hang up instead of calling for a minute."""
    runner, _ = embedded.start_run(60, "--timeout", "15")
    eventually(lambda: worker_health(embedded).get("running_endpoints") == 4, timeout_s=60, message="calls running")
    gateway = embedded.services["gateway"]
    os.kill(gateway.process.pid, signal.SIGKILL)
    gateway.process.wait()
    # The CLI gives up after 15 s and cancels the run; its summary waits collect_wait_s for the
    # worker's samples, which do not come while it is away.
    _, stderr = runner.communicate(timeout=120)
    assert runner.returncode != 0 and "cancelled it" in stderr, stderr
    assert worker_health(embedded)["running_endpoints"] == 4, "nothing told the worker yet"

    embedded.start_gateway()
    eventually(lambda: worker_health(embedded).get("running_endpoints") == 0, timeout_s=30,
               message="the worker stopped the cancelled run")
    assert "this part of the run has ended on the platform" in embedded.services["worker"].log()


def test_ctrl_c_cancels_the_waited_run_and_prints_what_it_measured(embedded: Platform) -> None:
    runner, run_id = embedded.start_run(60)
    embedded.wait_until_stored(run_id)
    runner.send_signal(signal.SIGINT)
    stdout, stderr = runner.communicate(timeout=60)
    assert runner.returncode == 2 and "cancelled by Ctrl-C" in stderr, stderr
    result = json.loads(stdout)
    assert (result["state"], result["verdict"]) == ("cancelled", "error"), result
    assert result["total"]["endpoints"] == 4, "the summary keeps what was measured until the cancel"
    # Collected once the worker had stopped and every sample it sent was stored, however late.
    assert result["total"]["completeness_pct"] == 100.0 and result["total"]["endpoint_seconds"] >= 4, result
    eventually(lambda: worker_health(embedded).get("running_endpoints") == 0, timeout_s=30,
               message="the worker stopped the cancelled run")


def test_a_worker_restarted_mid_run_ends_the_run_at_once_as_incomplete(embedded: Platform) -> None:
    """Seen: a worker restarted mid-run came back running nothing; the run stayed "running" to its
    timeout, then PASSED with most of its endpoint-seconds missing."""
    runner, run_id = embedded.start_run(60)
    embedded.wait_until_stored(run_id)
    worker = embedded.services["worker"]
    os.kill(worker.process.pid, signal.SIGKILL)
    worker.process.wait()
    embedded.start_worker()
    stdout, stderr = runner.communicate(timeout=60)  # well before the calls' 60 s
    assert runner.returncode == 2, stdout + stderr
    result = json.loads(stdout)
    assert (result["state"], result["verdict"]) == ("failed", "error"), result
    assert result["reasons"][0].startswith("results incomplete: "), result["reasons"]
    # Their ends never came: each endpoint is counted once, as lost by the load generator, with why.
    assert "group callers: 2 endpoints worker/engine error: worker restarted; its endpoints stopped" in \
        result["reasons"], result["reasons"]
    assert 0 < result["total"]["completeness_pct"] < 99, result["total"]


def test_a_run_whose_worker_lacks_the_credential_is_an_error_not_a_pass(embedded: Platform) -> None:
    """Seen: a spec naming a credential the worker does not have ended PASS, exit 0, JUnit tests="0"."""
    spec = embedded.tmp_path / "nocred.yaml"
    spec.write_text(f"""
name: e2e-no-credential
groups:
  - name: phones
    count: 2
    role: registrar_only
    target: {{registrar: "sip:127.0.0.1:{free_port()}"}}
    credential_ref: nobody-defined-this
    codecs: [PCMU]
timeout: 60s
""")
    junit = embedded.tmp_path / "report.xml"
    result = embedded.run(spec.read_text(), "--junit", str(junit))
    assert result.returncode == 2, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert (summary["state"], summary["verdict"]) == ("failed", "error"), summary
    assert summary["reasons"][0].startswith("no endpoint ran"), summary
    assert any("nobody-defined-this" in reason for reason in summary["reasons"]), summary
    assert 'errors="1"' in junit.read_text()
