"""A worker dials out to the gateway over TLS: admission by token, liveness, revocation, and
metric batches over the link with and without compression."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.orm import Session

from callmeter.common.stores.database import create_database_engine
from callmeter.common.stores.nats import EmbeddedNats
from callmeter.common.tls import DevPki, ensure_dev_pki, issue_certificate
from callmeter.state.bootstrap import bootstrap_local
from callmeter.state.models import Worker, WorkerToken, utcnow
from callmeter.v1 import endpoint_metrics_pb2, results_pb2, workers_pb2
from services.worker.health import WorkerStatus
from services.worker.link import GatewayLink
from services.worker.settings import WorkerSettings
from services.worker.supervisor import Supervisor
from tests.procs import ServiceProcess, eventually, http_get, start_service, stored_batches


@dataclass
class ControlPlane:
    tmp_path: Path
    database_url: str
    orchestrator: ServiceProcess
    gateway: ServiceProcess
    pki: DevPki
    worker_token: str

    def start_worker(self, token: str | None = None, ca: Path | None = None, **env: str) -> ServiceProcess:
        return start_service("worker", self.tmp_path, {
            "CALLMETER_GATEWAY_ADDRESS": self.gateway.address, "CALLMETER_CA_FILE": str(ca or self.pki.ca_cert),
            "CALLMETER_WORKER_TOKEN": token or self.worker_token, "CALLMETER_HEALTH_PORT": "0",
            "CALLMETER_WORKER_NAME": "w1", "CALLMETER_WORKER_LABELS": "region=test,tier=a",
            "CALLMETER_RECONNECT_INITIAL_S": "0.2", "CALLMETER_RECONNECT_MAX_S": "0.5", **env})

    def worker_row(self, name: str = "w1") -> Worker | None:
        engine = create_database_engine(self.database_url)
        try:
            with Session(engine) as session:
                return session.scalar(sa.select(Worker).where(Worker.name == name))
        finally:
            engine.dispose()


def readiness(worker: ServiceProcess) -> tuple[int, dict[str, object]]:
    status, body = http_get(f"http://127.0.0.1:{worker.ready['health_port']}/readyz")
    return status, json.loads(body)


@pytest.fixture
def plane(tmp_path: Path, nats_server: EmbeddedNats, pki: DevPki) -> Iterator[ControlPlane]:
    database_url = f"sqlite:///{tmp_path / 'state.db'}"
    orchestrator = start_service("orchestrator", tmp_path, {
        "CALLMETER_DATABASE_URL": database_url, "CALLMETER_NATS_URL": nats_server.url, "CALLMETER_STALE_AFTER_S": "3", "CALLMETER_STALE_CHECK_INTERVAL_S": "0.5"})
    engine = create_database_engine(database_url)
    token = bootstrap_local(engine, existing_worker_token=None).worker_token_secret
    engine.dispose()
    gateway = start_service("gateway", tmp_path, {
        "CALLMETER_NATS_URL": nats_server.url, "CALLMETER_TLS_CERT_FILE": str(pki.server_cert),
        "CALLMETER_TLS_KEY_FILE": str(pki.server_key), "CALLMETER_ORCHESTRATOR_ADDRESS": orchestrator.address,
        "CALLMETER_HEARTBEAT_INTERVAL_S": "1", "CALLMETER_REPORT_INTERVAL_S": "0.2"})
    assert token is not None
    yield ControlPlane(tmp_path, database_url, orchestrator, gateway, pki, token)
    for service in (gateway, orchestrator):
        assert service.terminate() == 0, service.log()[-2000:]


def test_worker_is_admitted_and_recorded_online(plane: ControlPlane) -> None:
    worker = plane.start_worker()
    try:
        eventually(lambda: readiness(worker)[0] == 200, message="worker ready")
        row = eventually(lambda: plane.worker_row(), message="worker recorded")
        assert row.state == "WORKER_STATE_ONLINE"
        assert row.labels == [{"key": "region", "value": "test"}, {"key": "tier", "value": "a"}]
        assert row.gateway_id
    finally:
        assert worker.terminate() == 0
    eventually(lambda: plane.worker_row().state == "WORKER_STATE_OFFLINE", message="worker offline after it left")


def test_wrong_token_is_refused_with_one_clear_line(plane: ControlPlane) -> None:
    worker = plane.start_worker(token="cmw_wrong")
    try:
        eventually(lambda: "refused this worker's token" in str(readiness(worker)[1]["last_error"]),
                   message="token refusal reported")
        assert readiness(worker)[0] == 503
        refusals = [line for line in worker.log().splitlines() if "refused this worker's token" in line]
        assert refusals and all(json.loads(line)["level"] == "warning" for line in refusals)
        assert "Traceback" not in worker.log()
    finally:
        assert worker.terminate() == 0
    assert plane.worker_row() is None


def test_gateway_signed_by_another_ca_is_not_trusted(plane: ControlPlane) -> None:
    other = ensure_dev_pki(plane.tmp_path / "other-ca")
    worker = plane.start_worker(ca=other.ca_cert)
    try:
        eventually(lambda: readiness(worker)[1]["last_error"], message="link error reported")
        assert readiness(worker)[0] == 503
        assert plane.worker_row() is None
    finally:
        assert worker.terminate() == 0


def test_revoked_token_closes_the_live_stream(plane: ControlPlane) -> None:
    worker = plane.start_worker()
    try:
        eventually(lambda: readiness(worker)[0] == 200, message="worker ready")
        engine = create_database_engine(plane.database_url)
        with Session(engine) as session, session.begin():
            session.execute(sa.update(WorkerToken).values(revoked_at=utcnow()))
        engine.dispose()
        eventually(lambda: readiness(worker)[0] == 503, timeout_s=10, message="stream closed after revocation")
        eventually(lambda: "refused this worker's token" in str(readiness(worker)[1]["last_error"]),
                   message="reconnect refused")
    finally:
        assert worker.terminate() == 0


def test_silent_worker_goes_to_error_and_recovers(plane: ControlPlane) -> None:
    worker = plane.start_worker()
    try:
        eventually(lambda: (row := plane.worker_row()) is not None and row.state == "WORKER_STATE_ONLINE",
                   message="online")
        os.kill(worker.process.pid, signal.SIGSTOP)  # no heartbeats, stream still open
        try:
            eventually(lambda: plane.worker_row().state == "WORKER_STATE_ERROR", timeout_s=15, message="stale → ERROR")
        finally:
            os.kill(worker.process.pid, signal.SIGCONT)
        eventually(lambda: plane.worker_row().state == "WORKER_STATE_ONLINE", timeout_s=15, message="recovered")
    finally:
        assert worker.terminate() == 0


def test_expired_gateway_certificate_is_refused(tmp_path: Path, nats_server: EmbeddedNats, pki: DevPki) -> None:
    """A gateway whose certificate has expired is not trusted, even when signed by the pinned CA."""
    ca_key = serialization.load_pem_private_key((pki.ca_cert.parent / "ca-key.pem").read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    past = datetime.now(timezone.utc) - timedelta(days=30)
    expired = issue_certificate(ca_cert, ca_key, key, "callmeter-gateway", ("localhost", "127.0.0.1"),
                                not_before=past - timedelta(days=1), not_after=past)
    cert_file, key_file = tmp_path / "expired.pem", tmp_path / "expired-key.pem"
    cert_file.write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    gateway = start_service("gateway", tmp_path, {
        "CALLMETER_NATS_URL": nats_server.url, "CALLMETER_TLS_CERT_FILE": str(cert_file),
        "CALLMETER_TLS_KEY_FILE": str(key_file), "CALLMETER_ORCHESTRATOR_ADDRESS": "127.0.0.1:1"})
    worker = start_service("worker", tmp_path, {
        "CALLMETER_GATEWAY_ADDRESS": gateway.address, "CALLMETER_CA_FILE": str(pki.ca_cert),
        "CALLMETER_WORKER_TOKEN": "cmw_x", "CALLMETER_HEALTH_PORT": "0", "CALLMETER_RECONNECT_INITIAL_S": "0.2"})
    try:
        eventually(lambda: readiness(worker)[1]["last_error"], message="link error reported")
        assert readiness(worker)[0] == 503
        # With a valid certificate the hello would reach the gateway and be refused there (its
        # orchestrator is unreachable); with the expired one the TLS handshake never completes.
        assert "worker_refused" not in gateway.log()
    finally:
        assert worker.terminate() == 0
        assert gateway.terminate() == 0


# ---------------------------------------------------------------- metric batches, with and without gzip


class CountingRelay:
    """A TCP relay on loopback in front of ``target`` that counts the bytes the client sends."""

    def __init__(self, target: str) -> None:
        self.host, port = target.rsplit(":", 1)
        self.port = int(port)
        self.up = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(self.host, self.port)
        await asyncio.gather(self._pipe(reader, upstream_writer, count=True),
                             self._pipe(upstream_reader, writer, count=False))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: bool) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if count:
                    self.up += len(data)
                writer.write(data)
                await writer.drain()
        writer.close()

    def close(self) -> None:
        self.server.close()


def sample(second: int, endpoint: int) -> results_pb2.EndpointSample:
    return results_pb2.EndpointSample(group="callers", endpoint=endpoint, second=second,
                                      metrics=endpoint_metrics_pb2.EndpointMetrics(
                                          call_active=True, rx_packets=50, tx_packets=50, rx_bytes=8600, tx_bytes=8600,
                                          rx_jitter_us=1500 + endpoint % 7 * 100, mos=430))


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_metric_batches_reach_jetstream_with_and_without_link_compression(
        plane: ControlPlane, nats_server: EmbeddedNats, compression: str) -> None:
    """The worker's own link and supervisor send 20 batches of 50 in-call samples through a relay
    that counts the bytes going up: every batch is stored once, as protobuf, either way, and gzip
    shows on the wire (batches of near-alike samples shrink several times)."""
    run_id = f"run-{compression}"
    sent: list[results_pb2.MetricBatch] = []

    async def scenario() -> int:
        relay = CountingRelay(plane.gateway.address)
        address = await relay.start()
        settings = WorkerSettings(gateway_address=address, worker_token=plane.worker_token, ca_file=plane.pki.ca_cert,
                                  worker_name=f"w-{compression}", link_compression=compression)
        status = WorkerStatus(gateway=address)
        link: GatewayLink
        supervisor = Supervisor(settings, workers_pb2.WorkerCapacity(), send=lambda message: link.send(message))
        link = GatewayLink(settings, status, workers_pb2.WorkerCapacity(), on_message=supervisor.handle,
                           on_connected=supervisor.on_connected)
        runner = asyncio.create_task(link.run())
        try:
            deadline = time.monotonic() + 20
            while not status.connected:
                assert time.monotonic() < deadline, "not connected"
                await asyncio.sleep(0.02)
            connected_bytes = relay.up
            for second in range(1, 21):
                for endpoint in range(50):
                    supervisor.uplink.add(run_id, sample(second, endpoint))
                supervisor.flush()
            sent.extend(supervisor.uplink.unacked.values())
            while supervisor.uplink.unacked:
                assert time.monotonic() < deadline, "batches not acked"
                await asyncio.sleep(0.02)
            return relay.up - connected_bytes
        finally:
            await link.stop("test over")
            await asyncio.wait_for(runner, 10)
            relay.close()

    up = asyncio.run(scenario())
    assert len(sent) == 20
    batches = [b for b in stored_batches(nats_server.url) if b.run_id == run_id]
    assert sorted(b.sequence for b in batches) == list(range(1, 21)), "every batch stored once"
    by_sequence = {b.sequence: b for b in batches}
    assert all(list(by_sequence[b.sequence].samples) == list(b.samples) for b in sent)
    payload = sum(b.ByteSize() for b in sent)
    if compression == "gzip":
        assert up < payload / 3, (up, payload)
    else:
        assert up > payload, (up, payload)
