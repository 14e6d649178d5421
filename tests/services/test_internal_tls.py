"""The internal links are mutual TLS: the orchestrator and metrics-ingest, real processes, answer
only a caller with a certificate of the platform's CA; the api's clients present theirs; the API
serves TLS to the CLI; a TLS setting that cannot be used is one line and exit 2."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from callmeter.common.channels import sync_channel
from callmeter.common.errors import CallmeterError, ErrorCode
from callmeter.common.grpc_server import TlsFiles
from callmeter.common.stores.database import create_database_engine
from callmeter.common.stores.nats import EmbeddedNats
from callmeter.common.tls import DevPki, ensure_dev_pki
from callmeter.state.bootstrap import bootstrap_local
from callmeter.state.migrate import upgrade
from callmeter.v1 import results_pb2, results_pb2_grpc
from services.api.clients import Metrics, Orchestrator
from tests.procs import ROOT, ServiceProcess, run_callmeter, start_service
from tests.services.test_bad_settings import assert_one_line_error

SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass
class Plane:
    tmp_path: Path
    pki: DevPki
    #: A CA the platform does not trust, with certificates of its own.
    other: DevPki
    services: dict[str, ServiceProcess]
    owner_token: str


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    """metrics-ingest and the orchestrator on mutual TLS, and the api calling them with its
    certificate and serving TLS itself; the internal links' plaintext fallback switched off."""
    tmp_path = tmp_path_factory.mktemp("internal-tls")
    pki, other = ensure_dev_pki(tmp_path / "tls"), ensure_dev_pki(tmp_path / "other-ca")
    database_url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = create_database_engine(database_url)
    upgrade(engine)
    owner_token = bootstrap_local(engine, existing_worker_token=None).owner_token_secret
    engine.dispose()
    assert owner_token
    nats = EmbeddedNats(tmp_path / "nats")
    nats.start()
    services: dict[str, ServiceProcess] = {}
    secure = {"CALLMETER_INSECURE_INTERNAL": "false"}
    try:
        services["metrics"] = start_service("metrics", tmp_path, {
            **secure, **pki.internal("metrics").env(), "CALLMETER_NATS_URL": nats.url,
            "CALLMETER_CLICKHOUSE_URL": f"chdb://{tmp_path / 'metrics'}"})
        services["orchestrator"] = start_service("orchestrator", tmp_path, {
            **secure, **pki.internal("orchestrator").env(), "CALLMETER_NATS_URL": nats.url,
            "CALLMETER_DATABASE_URL": database_url, "CALLMETER_METRICS_ADDRESS": services["metrics"].address})
        services["api"] = start_service("api", tmp_path, {
            **secure, **pki.internal("api").env(), "CALLMETER_DATABASE_URL": database_url,
            "CALLMETER_TLS_CERT_FILE": str(pki.server_cert), "CALLMETER_TLS_KEY_FILE": str(pki.server_key),
            "CALLMETER_ORCHESTRATOR_ADDRESS": services["orchestrator"].address,
            "CALLMETER_METRICS_ADDRESS": services["metrics"].address})
        yield Plane(tmp_path, pki, other, services, owner_token)
    finally:
        codes = {name: service.terminate() for name, service in reversed(services.items())}
        nats.stop()
    assert all(code == 0 for code in codes.values()), codes


def health(address: str, ca_file: Path | None = None, identity: TlsFiles | None = None) -> object:
    """SERVING, or the status code of the refusal."""
    with sync_channel(address, ca_file, identity) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[attr-defined]


# Callers that the internal services refuse, each as (CA file, identity) given the plane.
REFUSED: dict[str, Callable[[Plane], tuple[Path | None, TlsFiles | None]]] = {
    "plaintext": lambda plane: (None, None),
    "tls-without-a-certificate": lambda plane: (plane.pki.ca_cert, None),
    # It trusts the server, but its own certificate was signed by another CA.
    "certificate-of-another-ca": lambda plane: (None, dataclasses.replace(plane.other.internal("api"),
                                                                          ca=plane.pki.ca_cert)),
    # The platform's CA signed it, for servers only (the gateway's certificate for workers).
    "server-only-certificate": lambda plane: (None, TlsFiles(plane.pki.server_cert, plane.pki.server_key,
                                                             plane.pki.ca_cert)),
}


@pytest.mark.parametrize("caller", REFUSED)
@pytest.mark.parametrize("service", ["orchestrator", "metrics"])
def test_an_internal_service_refuses_a_caller_without_a_certificate_of_the_platforms_ca(
        plane: Plane, service: str, caller: str) -> None:
    address = plane.services[service].address
    assert health(address, identity=plane.pki.internal("api")) == SERVING  # it is up, and answers the right one
    ca_file, identity = REFUSED[caller](plane)
    assert health(address, ca_file, identity) == grpc.StatusCode.UNAVAILABLE


def test_metrics_ingest_answers_a_query_of_a_caller_with_its_certificate(plane: Plane) -> None:
    with sync_channel(plane.services["metrics"].address, identity=plane.pki.internal("orchestrator")) as channel:
        summary = results_pb2_grpc.MetricsQueryServiceStub(channel).GetRunSummary(
            results_pb2.RunSummaryRequest(run_id="no-such-run"), timeout=10)
    assert summary.total.endpoints == 0


def test_the_apis_clients_reach_the_internal_services_only_with_its_certificate(plane: Plane) -> None:
    orchestrator, metrics = plane.services["orchestrator"].address, plane.services["metrics"].address

    async def calls(tls: TlsFiles | None) -> tuple[ErrorCode, results_pb2.RunSummary | grpc.StatusCode]:
        runs, queries = Orchestrator(orchestrator, 10, tls), Metrics(metrics, 10, tls)
        try:
            with pytest.raises(CallmeterError) as refused:
                await runs.submit_run("no-such-run")
            try:
                summary: results_pb2.RunSummary | grpc.StatusCode = await queries.run_summary("no-such-run", [])
            except grpc.aio.AioRpcError as exc:
                summary = exc.code()
        finally:
            await runs.close()
            await queries.close()
        return refused.value.code, summary

    # With the api's certificate, the orchestrator itself answers: there is no such run.
    code, summary = asyncio.run(calls(plane.pki.internal("api")))
    assert code == ErrorCode.NOT_FOUND and isinstance(summary, results_pb2.RunSummary)
    assert asyncio.run(calls(None)) == (ErrorCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE)


def test_the_api_serves_tls_to_the_cli(plane: Plane) -> None:
    env = {"CALLMETER_API": plane.services["api"].address, "CALLMETER_TOKEN": plane.owner_token,
           "CALLMETER_PROFILE": str(plane.tmp_path / "no-profile.json")}
    spec = str(ROOT / "examples" / "selfcall.yaml")
    # The run is stored by the API and submitted to the orchestrator over mutual TLS.
    started = run_callmeter("run", spec, env={**env, "CALLMETER_API_CA_FILE": str(plane.pki.ca_cert)})
    assert started.returncode == 0 and started.stdout.startswith("run "), started.stdout + started.stderr
    plain = run_callmeter("workers", "list", env=env)
    assert plain.returncode == 2 and "unavailable" in plain.stderr, plain.stderr
    untrusted = run_callmeter("workers", "list", env={**env, "CALLMETER_API_CA_FILE": str(plane.other.ca_cert)})
    assert untrusted.returncode == 2 and "unavailable" in untrusted.stderr, untrusted.stderr


def internal_except(pki: DevPki, party: str, **changed: Path) -> dict[str, str]:
    return pki.internal(party).env() | {name: str(path) for name, path in changed.items()}


# (service, its environment given the two CAs and a directory, the setting the error names, words in it)
BAD_SETTINGS: dict[str, tuple[str, Callable[[DevPki, DevPki, Path], dict[str, str]], str, tuple[str, ...]]] = {
    "no-certificate": ("orchestrator", lambda pki, other, tmp: {"CALLMETER_INSECURE_INTERNAL": "false"},
                       "CALLMETER_INTERNAL_CERT_FILE", ("required", "CALLMETER_INSECURE_INTERNAL=true")),
    "no-key": ("gateway", lambda pki, other, tmp: {
        "CALLMETER_TLS_CERT_FILE": str(pki.server_cert), "CALLMETER_TLS_KEY_FILE": str(pki.server_key),
        "CALLMETER_INTERNAL_CERT_FILE": str(pki.internal("gateway").cert)},
        "CALLMETER_INTERNAL_KEY_FILE", ("required with CALLMETER_INTERNAL_CERT_FILE",)),
    "missing-certificate": ("metrics", lambda pki, other, tmp: internal_except(
        pki, "metrics", CALLMETER_INTERNAL_CERT_FILE=tmp / "nope.pem"),
        "CALLMETER_INTERNAL_CERT_FILE", ("nope.pem",)),
    "key-of-another-certificate": ("orchestrator", lambda pki, other, tmp: internal_except(
        pki, "orchestrator", CALLMETER_INTERNAL_KEY_FILE=other.internal("orchestrator").key),
        "CALLMETER_INTERNAL_KEY_FILE", ("is not the key of the certificate",)),
    "ca-file-without-a-certificate": ("api", lambda pki, other, tmp: internal_except(
        pki, "api", CALLMETER_INTERNAL_CA_FILE=pki.internal("api").key),
        "CALLMETER_INTERNAL_CA_FILE", ("holds no certificate",)),
    "api-certificate-without-key": ("api", lambda pki, other, tmp: {"CALLMETER_TLS_CERT_FILE": str(pki.server_cert)},
                                    "CALLMETER_TLS_KEY_FILE", ("required with CALLMETER_TLS_CERT_FILE",)),
    "api-key-of-another-certificate": ("api", lambda pki, other, tmp: {
        "CALLMETER_TLS_CERT_FILE": str(pki.server_cert), "CALLMETER_TLS_KEY_FILE": str(other.server_key)},
        "CALLMETER_TLS_KEY_FILE", ("is not the key of the certificate",)),
}


@pytest.mark.parametrize("case", BAD_SETTINGS)
def test_a_tls_setting_that_cannot_be_used_is_one_line_and_exit_2(tmp_path: Path, case: str) -> None:
    service, env, setting, words = BAD_SETTINGS[case]
    pki, other = ensure_dev_pki(tmp_path / "tls"), ensure_dev_pki(tmp_path / "other-ca")
    # No NATS answers there: each of these stops on its TLS setting first.
    result = run_callmeter(service, env={"CALLMETER_NATS_URL": "nats://127.0.0.1:1", **env(pki, other, tmp_path)},
                           cwd=tmp_path)
    assert_one_line_error(result, setting, *words)
