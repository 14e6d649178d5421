"""What an operator scrapes from real gateway and orchestrator processes as workers come and go.

Real orchestrator, gateway and NATS processes on loopback, real TLS and a real worker token; the
test speaks the worker's side of GatewayService.Connect: a hello with a wrong token, then one with
the right token, a heartbeat, and the token revoked under the live stream.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session

from callmeter.common.stores.database import create_database_engine
from callmeter.common.stores.nats import EmbeddedNats
from callmeter.common.tls import DevPki
from callmeter.common.tokens import hash_secret
from callmeter.state.bootstrap import bootstrap_local
from callmeter.state.models import WorkerToken, utcnow
from callmeter.v1 import workers_pb2, workers_pb2_grpc
from tests.procs import ServiceProcess, eventually, http_get, start_service

GATEWAY = "callmeter.v1.GatewayService"
ORCHESTRATOR = "callmeter.v1.OrchestratorService"
RUN_STATES = ["queued", "dispatching", "running", "collecting", "finished", "failed", "cancelled", "timed_out"]


class Scrape:
    """One GET of a service's /metrics: the text, and its samples by name and labels."""

    def __init__(self, service: ServiceProcess) -> None:
        status, self.text = http_get(f"http://127.0.0.1:{service.ready['prometheus_port']}/metrics")
        assert status == 200
        self.samples = {(sample.name, frozenset(sample.labels.items())): sample.value
                        for family in text_string_to_metric_families(self.text) for sample in family.samples}

    def __call__(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))


def rpc(service: str, method: str, kind: str = "unary") -> dict[str, str]:
    return {"grpc_type": kind, "grpc_service": service, "grpc_method": method}


def hello(token: str) -> workers_pb2.WorkerMessage:
    return workers_pb2.WorkerMessage(hello=workers_pb2.Hello(token=token, name="w1"))


async def read_until(call: grpc.aio.StreamStreamCall, kind: str) -> workers_pb2.GatewayMessage:
    while (message := await call.read()) is not grpc.aio.EOF:
        if message.WhichOneof("message") == kind:
            return message
    raise AssertionError(f"the stream ended before a {kind}")


def revoke(database_url: str, token: str) -> None:
    engine = create_database_engine(database_url)
    try:
        with Session(engine) as session, session.begin():
            session.execute(sa.update(WorkerToken).where(WorkerToken.secret_hash == hash_secret(token))
                            .values(revoked_at=utcnow()))
    finally:
        engine.dispose()


def test_gateway_and_orchestrator_metrics_as_a_worker_is_refused_admitted_and_revoked(
    tmp_path: Path, nats_server: EmbeddedNats, pki: DevPki
) -> None:
    database_url = f"sqlite:///{tmp_path / 'state.db'}"
    orchestrator = start_service("orchestrator", tmp_path, {
        "CALLMETER_DATABASE_URL": database_url, "CALLMETER_NATS_URL": nats_server.url})
    services = [orchestrator]
    try:
        engine = create_database_engine(database_url)
        token = bootstrap_local(engine, existing_worker_token=None).worker_token_secret
        engine.dispose()
        assert token is not None
        gateway = start_service("gateway", tmp_path, {
            "CALLMETER_NATS_URL": nats_server.url, "CALLMETER_TLS_CERT_FILE": str(pki.server_cert),
            "CALLMETER_TLS_KEY_FILE": str(pki.server_key), "CALLMETER_ORCHESTRATOR_ADDRESS": orchestrator.address,
            "CALLMETER_REPORT_INTERVAL_S": "0.2"})
        services.append(gateway)
        connect = rpc(GATEWAY, "Connect", "bidi_stream")

        async def worker_visits() -> None:
            credentials = grpc.ssl_channel_credentials(pki.ca_cert.read_bytes())
            async with grpc.aio.secure_channel(gateway.address, credentials) as channel:
                stub = workers_pb2_grpc.GatewayServiceStub(channel)
                refused = stub.Connect()
                await refused.write(hello("cmw_not-a-token"))
                assert await refused.code() == grpc.StatusCode.UNAUTHENTICATED

                call = stub.Connect()
                await call.write(hello(token))
                await read_until(call, "welcome")
                metrics = Scrape(gateway)
                assert metrics("callmeter_gateway_workers", state="online") == 1
                assert metrics("grpc_server_rpcs_in_flight", **connect) == 1
                await call.write(workers_pb2.WorkerMessage(heartbeat=workers_pb2.Heartbeat(
                    state=workers_pb2.WORKER_STATE_BUSY)))
                await read_until(call, "heartbeat_ack")
                metrics = Scrape(gateway)
                assert (metrics("callmeter_gateway_workers", state="online"),
                        metrics("callmeter_gateway_workers", state="busy")) == (0, 1)

                revoke(database_url, token)
                assert (await read_until(call, "disconnect")).disconnect.reason == "token revoked"
                assert await call.code() == grpc.StatusCode.OK  # the gateway ended it, after its linger

        asyncio.run(worker_visits())

        metrics = Scrape(gateway)
        assert metrics("callmeter_gateway_auth_failures_total", reason="bad_token") == 1
        assert metrics("callmeter_gateway_auth_failures_total", reason="token_revoked") == 1
        assert metrics("callmeter_gateway_auth_failures_total", reason="no_hello") == 0
        assert metrics("callmeter_gateway_workers", state="busy") == 0
        assert metrics("grpc_server_rpcs_in_flight", **connect) == 0
        assert metrics("grpc_server_handled_total", **connect, grpc_code="UNAUTHENTICATED") == 1
        assert metrics("grpc_server_handled_total", **connect, grpc_code="OK") == 1
        assert metrics("grpc_server_handling_seconds_count", **connect) == 2

        metrics = eventually(lambda: (m := Scrape(orchestrator))("callmeter_orchestrator_runs", state="queued") == 0 and m,
                             message="runs by state on the leading orchestrator")
        assert metrics("grpc_server_handled_total", **rpc(ORCHESTRATOR, "AdmitWorker"), grpc_code="UNAUTHENTICATED") == 1
        assert metrics("grpc_server_handled_total", **rpc(ORCHESTRATOR, "AdmitWorker"), grpc_code="OK") == 1
        assert (metrics("grpc_server_handled_total", **rpc(ORCHESTRATOR, "ReportWorkerEvents"), grpc_code="OK") or 0) >= 1
        assert [metrics("callmeter_orchestrator_runs", state=state) for state in RUN_STATES] == [0] * len(RUN_STATES)
        for scraped in (metrics, Scrape(gateway)):
            assert "_created" not in scraped.text
    finally:
        for service in reversed(services):
            assert service.terminate() == 0, service.log()[-2000:]
