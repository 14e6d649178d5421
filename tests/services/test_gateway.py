"""The gateway under faults: a SIGKILL mid-stream, an HTTP CONNECT proxy, 100 workers, bad clients.

Real gateway, orchestrator and NATS processes on loopback, real TLS and real worker tokens.
Workers are the real `callmeter worker`, the worker's own link and supervisor in this process,
or `SimWorker`: a small client speaking the same protocol on its own connection, which can also
misbehave. Every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import nats
import pytest
import sqlalchemy as sa
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.orm import Session

from callmeter.common.stores.database import create_database_engine
from callmeter.common.stores.metrics_stream import STREAM, wait_for_stream
from callmeter.common.stores.nats import EmbeddedNats
from callmeter.common.tls import DevPki
from callmeter.common.tokens import WORKER_TOKEN_PREFIX, hash_secret, new_secret
from callmeter.state.bootstrap import bootstrap_local
from callmeter.state.models import Worker, WorkerToken
from callmeter.v1 import endpoint_metrics_pb2, results_pb2, workers_pb2
from services.metrics.stream import ensure_streams
from services.worker import link as link_module
from services.worker.health import WorkerStatus
from services.worker.link import GatewayLink
from services.worker.settings import WorkerSettings
from services.worker.supervisor import Supervisor
from tests.procs import ServiceProcess, eventually, http_get, start_service, stored_batches

CONNECT = "/callmeter.v1.GatewayService/Connect"


@dataclass
class Plane:
    tmp_path: Path
    nats: EmbeddedNats
    pki: DevPki
    database_url: str
    orchestrator: ServiceProcess
    organization_id: str
    token: str
    gateways: list[ServiceProcess] = field(default_factory=list)

    def start_gateway(self, port: int = 0, **env: str) -> ServiceProcess:
        gateway = start_service("gateway", self.tmp_path, {
            "CALLMETER_NATS_URL": self.nats.url, "CALLMETER_TLS_CERT_FILE": str(self.pki.server_cert),
            "CALLMETER_TLS_KEY_FILE": str(self.pki.server_key), "CALLMETER_ORCHESTRATOR_ADDRESS": self.orchestrator.address,
            "CALLMETER_GRPC_PORT": str(port), "CALLMETER_HEARTBEAT_INTERVAL_S": "1",
            "CALLMETER_REPORT_INTERVAL_S": "0.2", **env})
        self.gateways.append(gateway)
        return gateway

    def new_tokens(self, count: int) -> list[str]:
        """Worker tokens made as the API makes them: only their hashes are stored."""
        secrets = [new_secret(WORKER_TOKEN_PREFIX) for _ in range(count)]
        with self._session() as session, session.begin():
            session.add_all(WorkerToken(name=f"t{i}", organization_id=self.organization_id, secret_hash=hash_secret(s))
                            for i, s in enumerate(secrets))
        return secrets

    def workers(self) -> dict[str, Worker]:
        with self._session() as session:
            return {worker.name: worker for worker in session.scalars(sa.select(Worker))}

    @contextmanager
    def _session(self) -> Iterator[Session]:
        engine = create_database_engine(self.database_url)
        try:
            with Session(engine) as session:
                yield session
        finally:
            engine.dispose()


@pytest.fixture
def plane(tmp_path: Path, nats_server: EmbeddedNats, pki: DevPki) -> Iterator[Plane]:
    database_url = f"sqlite:///{tmp_path / 'state.db'}"
    orchestrator = start_service("orchestrator", tmp_path, {
        "CALLMETER_DATABASE_URL": database_url, "CALLMETER_NATS_URL": nats_server.url})
    engine = create_database_engine(database_url)
    boot = bootstrap_local(engine, existing_worker_token=None)
    engine.dispose()
    assert boot.worker_token_secret is not None
    plane = Plane(tmp_path, nats_server, pki, database_url, orchestrator, boot.organization_id, boot.worker_token_secret)
    yield plane
    for gateway in plane.gateways:
        if gateway.process.poll() is None:
            assert gateway.terminate() == 0, gateway.log()[-2000:]
    assert orchestrator.terminate() == 0, orchestrator.log()[-2000:]


def heartbeat() -> workers_pb2.WorkerMessage:
    sent = Timestamp()
    sent.GetCurrentTime()
    return workers_pb2.WorkerMessage(heartbeat=workers_pb2.Heartbeat(sent_at=sent, state=workers_pb2.WORKER_STATE_ONLINE))


class SimWorker:
    """One worker on its own TLS connection; sends raw bytes, so it can also send garbage."""

    def __init__(self, address: str, ca: bytes, token: str, name: str) -> None:
        self.token, self.name = token, name
        # A local subchannel pool: each simulated worker gets its own TCP connection.
        self.channel = grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(ca),
                                               options=[("grpc.use_local_subchannel_pool", 1)])
        self.call = self.channel.stream_stream(CONNECT)()
        self.received: list[tuple[float, workers_pb2.GatewayMessage]] = []
        self.ended = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def write(self, message: workers_pb2.WorkerMessage | bytes) -> None:
        await self.call.write(message if isinstance(message, bytes) else message.SerializeToString())

    async def hello(self) -> workers_pb2.Welcome:
        await self.write(workers_pb2.WorkerMessage(hello=workers_pb2.Hello(token=self.token, name=self.name)))
        first = workers_pb2.GatewayMessage.FromString(await self.call.read())
        assert first.WhichOneof("message") == "welcome", first
        self.tasks.append(asyncio.create_task(self._read()))
        return first.welcome

    def start_heartbeats(self, interval_s: float) -> None:
        async def beat() -> None:
            while not self.ended.is_set():
                await self.write(heartbeat())
                await asyncio.sleep(interval_s)
        self.tasks.append(asyncio.create_task(beat()))

    async def _read(self) -> None:
        try:
            while (data := await self.call.read()) is not grpc.aio.EOF:
                self.received.append((time.monotonic(), workers_pb2.GatewayMessage.FromString(data)))
        except grpc.aio.AioRpcError:
            pass  # ended with an error status, or by a write of ours that failed
        finally:
            self.ended.set()

    async def wait_for(self, kind: str, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(m.WhichOneof("message") == kind for _, m in self.received):
            assert time.monotonic() < deadline, f"no {kind} within {timeout_s} s"
            await asyncio.sleep(0.02)

    def acks_since(self, since: float) -> int:
        return sum(1 for at, m in self.received if at >= since and m.WhichOneof("message") == "heartbeat_ack")

    @property
    def disconnect_reason(self) -> str | None:
        return next((m.disconnect.reason for _, m in self.received if m.WhichOneof("message") == "disconnect"), None)

    async def close(self) -> None:
        """Half-closes (the gateway then ends the stream) and waits briefly for the end."""
        if self.tasks and not self.ended.is_set():
            await self.call.done_writing()
            await asyncio.wait_for(self.ended.wait(), 5)
        self.call.cancel()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.channel.close()


# ---------------------------------------------------------------- SIGKILL of the gateway mid-stream

RUN_ID = "run-restart"


def test_gateway_sigkill_mid_stream_loses_and_duplicates_no_batch(plane: Plane, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's own link and supervisor keep sealing one numbered batch every 50 ms while the
    gateway is SIGKILLed and restarted on the same port: the link reconnects on the specified
    backoff (5 s, ±20 %), resends what was not acked, and JetStream holds each batch once.

    The acks of the last half second before the kill are lost on the way (dropped in front of
    the supervisor), so batches JetStream already stored are certainly resent: de-duplication by
    Nats-Msg-Id is exercised on every run, not only when the kill happens to fall between a
    publish and its ack."""
    drawn: list[tuple[float, float]] = []  # (when, delay) of every backoff wait the link draws
    real_backoff = link_module.backoff_delays

    def recorded_backoff(initial_s: float, max_s: float, rng=None):  # type: ignore[no-untyped-def]
        for delay in real_backoff(initial_s, max_s, rng):
            drawn.append((time.monotonic(), delay))
            yield delay

    monkeypatch.setattr(link_module, "backoff_delays", recorded_backoff)
    gateway = plane.start_gateway()
    port = gateway.ready["grpc_port"]
    settings = WorkerSettings(gateway_address=gateway.address, worker_token=plane.token, ca_file=plane.pki.ca_cert,
                              worker_name="uplink")  # the default backoff: 5 s doubling to 60 s
    assert (settings.reconnect_initial_s, settings.reconnect_max_s) == (5.0, 60.0)

    lost_acks: list[int] = []

    async def scenario() -> tuple[int, float, float]:
        status = WorkerStatus(gateway=gateway.address)
        link: GatewayLink
        supervisor = Supervisor(settings, workers_pb2.WorkerCapacity(), send=lambda message: link.send(message))
        losing = False

        def on_message(message: workers_pb2.GatewayMessage) -> None:
            if losing and message.WhichOneof("message") == "batch_ack":
                lost_acks.append(message.batch_ack.sequence)
            else:
                supervisor.handle(message)

        link = GatewayLink(settings, status, workers_pb2.WorkerCapacity(), on_message=on_message,
                           on_connected=supervisor.on_connected)
        runner = asyncio.create_task(link.run())
        producing = True

        async def produce() -> None:
            for second in itertools.count(1):
                if not producing:
                    return
                supervisor.uplink.add(RUN_ID, results_pb2.EndpointSample(
                    group="g", endpoint=0, second=second, metrics=endpoint_metrics_pb2.EndpointMetrics(rx_packets=50)))
                supervisor.flush()  # one batch per tick: its sequence is `second`
                await asyncio.sleep(0.05)

        async def until(check, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
            deadline = time.monotonic() + timeout_s
            while not check():
                assert time.monotonic() < deadline, f"{what} not reached within {timeout_s} s"
                await asyncio.sleep(0.02)

        producer = asyncio.create_task(produce())
        try:
            await until(lambda: status.connected and supervisor.uplink.next_sequence.get(RUN_ID, 0) >= 20, 20, "streaming")
            losing = True
            await asyncio.sleep(0.5)
            gateway.process.kill()
            await asyncio.to_thread(gateway.process.wait, 10)
            killed_at = time.monotonic()
            await until(lambda: not status.connected, 5, "link down")
            losing = False  # only acks of the killed gateway are lost
            await asyncio.to_thread(plane.start_gateway, port)
            await until(lambda: status.connected, 40, "reconnected")
            reconnected_at = time.monotonic()
            await asyncio.sleep(1.0)  # streaming again after the resend
            producing = False
            await producer
            await until(lambda: not supervisor.uplink.unacked, 15, "every batch acked")
        finally:
            producing = losing = False
            await link.stop("test over")
            await asyncio.wait_for(runner, 10)
        return supervisor.uplink.next_sequence[RUN_ID], killed_at, reconnected_at

    last, killed_at, reconnected_at = asyncio.run(scenario())

    waits = [delay for at, delay in drawn if at >= killed_at - 0.5]
    assert waits, "no backoff wait drawn after the kill"
    nominal = [5.0 * 2**i for i in range(len(waits))]  # the backoff was reset by the session that got in
    assert all(0.8 * n <= w <= 1.2 * n for w, n in zip(waits, nominal, strict=True)), waits
    assert reconnected_at - killed_at >= waits[0] - 0.5, (reconnected_at - killed_at, waits)

    batches = stored_batches(plane.nats.url)
    assert len(batches) == last, f"{len(batches)} messages in {STREAM} for {last} batches"
    assert sorted(b.sequence for b in batches) == list(range(1, last + 1)), "every batch exactly once"
    assert all(b.run_id == RUN_ID and [s.second for s in b.samples] == [b.sequence] for b in batches)
    assert len(lost_acks) >= 5, lost_acks
    _, metrics = http_get(f"http://127.0.0.1:{plane.gateways[-1].ready['prometheus_port']}/metrics")
    duplicates = next(float(line.split()[1]) for line in metrics.splitlines()
                      if line.startswith("callmeter_gateway_duplicate_batches_total "))
    assert duplicates >= len(lost_acks), "the stored batches whose acks were lost were resent and dropped by JetStream"
    assert len({b.worker_id for b in batches}) == 1


# ---------------------------------------------------------------- HTTP CONNECT proxy


class ConnectProxy:
    """A minimal HTTP CONNECT proxy on loopback, in its own thread; records the targets asked for."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, name="connect-proxy", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, target, _ = (await reader.readline()).decode().split()
            while (await reader.readline()) not in (b"\r\n", b""):
                pass  # the request's headers
            self.targets.append(target)
            host, port = target.rsplit(":", 1)
            if method != "CONNECT" or host != "127.0.0.1":  # loopback only
                writer.write(b"HTTP/1.1 403 Forbidden\r\n\r\n")
                return
            upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))
        except (OSError, ValueError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    def close(self) -> None:
        async def shut() -> None:
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    server = ConnectProxy()
    yield server
    server.close()


def start_worker(plane: Plane, gateway: ServiceProcess, name: str, **env: str) -> ServiceProcess:
    return start_service("worker", plane.tmp_path, {
        "CALLMETER_GATEWAY_ADDRESS": gateway.address, "CALLMETER_CA_FILE": str(plane.pki.ca_cert),
        "CALLMETER_WORKER_TOKEN": plane.token, "CALLMETER_HEALTH_PORT": "0", "CALLMETER_WORKER_NAME": name,
        "CALLMETER_MAX_ENGINES": "1", **env})


def worker_ready(worker: ServiceProcess) -> bool:
    return http_get(f"http://127.0.0.1:{worker.ready['health_port']}/readyz")[0] == 200


# Operators write the upper-case names, which gRPC core alone ignores; the lower-case ones work too.
@pytest.mark.parametrize(("proxy_var", "no_proxy_var"), [("HTTPS_PROXY", "NO_PROXY"), ("https_proxy", "no_proxy")])
def test_worker_dials_through_https_proxy_unless_no_proxy_covers_the_gateway(
        plane: Plane, proxy: ConnectProxy, proxy_var: str, no_proxy_var: str) -> None:
    gateway = plane.start_gateway()
    through = start_worker(plane, gateway, "proxied", **{proxy_var: proxy.url})
    try:
        eventually(lambda: worker_ready(through), message="worker connected through the proxy")
        assert proxy.targets == [gateway.address]
        eventually(lambda: plane.workers().get("proxied") is not None, message="worker recorded")
        assert plane.workers()["proxied"].state == "WORKER_STATE_ONLINE"
    finally:
        assert through.terminate() == 0
    direct = start_worker(plane, gateway, "direct", **{proxy_var: proxy.url, no_proxy_var: "localhost,127.0.0.1"})
    try:
        eventually(lambda: worker_ready(direct), message="worker connected directly")
        assert proxy.targets == [gateway.address], "NO_PROXY covers the gateway: the proxy sees nothing new"
    finally:
        assert direct.terminate() == 0


# ---------------------------------------------------------------- 100 workers on one gateway


def test_hundred_workers_are_admitted_and_recorded_online(plane: Plane) -> None:
    gateway = plane.start_gateway()
    tokens = plane.new_tokens(100)
    ca = plane.pki.ca_cert.read_bytes()

    async def scenario() -> dict[str, Worker]:
        sims = [SimWorker(gateway.address, ca, token, f"sim-{i:03d}") for i, token in enumerate(tokens)]
        try:
            welcomes = await asyncio.wait_for(asyncio.gather(*(sim.hello() for sim in sims)), 60)
            assert len({w.worker_id for w in welcomes}) == 100
            for sim, welcome in zip(sims, welcomes, strict=True):
                sim.start_heartbeats(welcome.heartbeat_interval_s)
            await asyncio.sleep(3.5)
            since = time.monotonic() - 2.0
            assert all(sim.acks_since(since) >= 1 and not sim.ended.is_set() for sim in sims)
            online = await asyncio.to_thread(plane.workers)
        finally:
            await asyncio.gather(*(sim.close() for sim in sims))
        return online

    online = asyncio.run(scenario())
    assert len(online) == 100
    assert {w.state for w in online.values()} == {"WORKER_STATE_ONLINE"}
    # Admission sets both times; a later last_heartbeat is a heartbeat the orchestrator recorded.
    assert all(w.last_heartbeat > w.connected_at for w in online.values())
    eventually(lambda: {w.state for w in plane.workers().values()} == {"WORKER_STATE_OFFLINE"},
               message="all 100 recorded offline after they left")


# ---------------------------------------------------------------- malformed, oversized, flooding

BAD_CLIENT_GATEWAY = {
    "CALLMETER_MAX_BATCH_BYTES": "65536",
    "CALLMETER_RATE_LIMIT_MESSAGES_PER_S": "50", "CALLMETER_RATE_LIMIT_MESSAGE_BURST": "200",
    "CALLMETER_RATE_LIMIT_BYTES_PER_S": "131072", "CALLMETER_RATE_LIMIT_BYTE_BURST": "262144",
}


def big_batch(run_id: str, samples: int) -> workers_pb2.WorkerMessage:
    metrics = endpoint_metrics_pb2.EndpointMetrics(registered=True, call_active=True, rx_packets=50, rx_bytes=8000,
                                                   tx_packets=50, tx_bytes=8000, rx_jitter_us=900, mos=441)
    return workers_pb2.WorkerMessage(metrics=results_pb2.MetricBatch(run_id=run_id, sequence=1, samples=[
        results_pb2.EndpointSample(group="callers", endpoint=i, second=1_700_000_000, metrics=metrics)
        for i in range(samples)]))


async def flood(sim: SimWorker, message: workers_pb2.WorkerMessage, max_messages: int) -> None:
    """Writes as fast as the stream takes them until the gateway ends it (bounded in count)."""
    data = message.SerializeToString()
    for _ in range(max_messages):
        if sim.ended.is_set():
            return
        try:
            await sim.write(data)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return


async def admitted_then(sim: SimWorker, misbehave) -> str | None:  # type: ignore[no-untyped-def]
    """Hello, then the misbehaviour; the reason of the Disconnect the gateway sends."""
    await sim.hello()
    await misbehave(sim)
    await asyncio.wait_for(sim.ended.wait(), 10)
    return sim.disconnect_reason


async def refused(sim: SimWorker, first: bytes) -> grpc.aio.AioRpcError:
    await sim.write(first)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(sim.call.read(), 10)
    return caught.value


def raw_tls_garbage(address: str, ca_file: Path) -> bytes:
    """Garbage where HTTP/2 frames should be, inside TLS; what the gateway sends until it closes."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.set_alpn_protocols(["h2"])
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(b"\x00\xffNOT-HTTP/2\r\n" * 64)
        received = b""
        while chunk := tls.recv(65536):  # ends when the gateway closes the connection (or times out)
            received += chunk
    return received


def test_bad_clients_are_disconnected_with_a_reason_and_others_are_unaffected(plane: Plane) -> None:
    gateway = plane.start_gateway(**BAD_CLIENT_GATEWAY)
    tokens = plane.new_tokens(9)
    ca = plane.pki.ca_cert.read_bytes()
    oversized = big_batch("run-big", 3000)
    assert 65536 < oversized.metrics.ByteSize() < 262144, "over max_batch_bytes, within the byte burst"

    async def garbage(sim: SimWorker) -> None:
        await sim.write(b"\xff\xfe not a protobuf \x00")

    async def send_oversized(sim: SimWorker) -> None:
        await sim.write(oversized)

    async def heartbeat_flood(sim: SimWorker) -> None:
        await flood(sim, heartbeat(), 5000)

    async def byte_flood(sim: SimWorker) -> None:
        await flood(sim, big_batch("run-flood", 500), 100)

    async def scenario() -> None:
        good = [SimWorker(gateway.address, ca, token, f"good-{i}") for i, token in enumerate(tokens[:3])]
        bad = [SimWorker(gateway.address, ca, token, f"bad-{i}") for i, token in enumerate(tokens[3:])]
        try:
            for sim in good:
                sim.start_heartbeats((await sim.hello()).heartbeat_interval_s)
            began = time.monotonic()

            error = await refused(bad[0], heartbeat().SerializeToString())
            assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a hello")
            error = await refused(bad[1], b"\xff\xfe not a protobuf \x00")
            assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                       "the first message is not a WorkerMessage")
            assert await admitted_then(bad[2], garbage) == "malformed message: not a WorkerMessage"
            assert await admitted_then(bad[3], send_oversized) == \
                f"metric batch of {oversized.metrics.ByteSize()} bytes exceeds 65536"
            assert await admitted_then(bad[4], heartbeat_flood) == "rate limit: more than 50 messages/s (burst 200)"
            assert await admitted_then(bad[5], byte_flood) == "rate limit: more than 131072 bytes/s (burst 262144)"
            # Not even HTTP/2: the gateway answers with its own preface (a SETTINGS frame) and hangs up.
            received = await asyncio.to_thread(raw_tls_garbage, gateway.address, plane.pki.ca_cert)
            assert received[3] == 0x4, received[:16]

            # The well-behaved workers kept their streams and their heartbeats were acked throughout.
            await asyncio.sleep(1.5)
            for sim in good:
                assert not sim.ended.is_set() and sim.disconnect_reason is None, sim.name
                assert sim.acks_since(began) >= int(time.monotonic() - began) - 1, sim.name
                assert sim.acks_since(time.monotonic() - 1.5) >= 1, sim.name
        finally:
            await asyncio.gather(*(sim.close() for sim in good + bad))

    asyncio.run(scenario())
    workers = plane.workers()
    assert all(workers[f"good-{i}"].state == "WORKER_STATE_ONLINE" for i in range(3))
    eventually(lambda: all(w.state == "WORKER_STATE_OFFLINE" for n, w in plane.workers().items() if n.startswith("bad")),
               message="the disconnected bad clients recorded offline")
    assert "Traceback" not in gateway.log()


# ---------------------------------------------------------------- who a batch belongs to


def test_a_batch_is_stored_under_the_authenticated_worker_not_the_one_it_claims(plane: Plane) -> None:
    gateway = plane.start_gateway()
    ca = plane.pki.ca_cert.read_bytes()

    async def scenario() -> tuple[str, list[tuple[str, results_pb2.MetricBatch]]]:
        sim = SimWorker(gateway.address, ca, plane.token, "claimant")
        try:
            welcome = await sim.hello()
            claim = big_batch("run-claim", 3)
            claim.metrics.worker_id = "someone-else"
            await sim.write(claim)
            await sim.wait_for("batch_ack")
        finally:
            await sim.close()
        nc = await nats.connect(plane.nats.url)
        try:
            js = nc.jetstream()
            info = await js.stream_info(STREAM)
            stored = [await js.get_msg(STREAM, seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)]
        finally:
            await nc.close()
        return welcome.worker_id, [(m.subject, results_pb2.MetricBatch.FromString(m.data)) for m in stored]

    worker_id, stored = asyncio.run(scenario())
    assert [(subject, batch.worker_id, len(batch.samples)) for subject, batch in stored] == \
        [(f"callmeter.metrics.run-claim.{worker_id}", worker_id, 3)]


# ---------------------------------------------------------------- a part that ended while the worker was away


def test_a_worker_still_running_a_run_the_platform_has_ended_is_told_to_cancel_it(plane: Plane) -> None:
    """The cancel of a run found no gateway holding the worker (it was reconnecting); the status
    the worker resends after the welcome says it still runs that part: the orchestrator cancels it
    again. A part reported finished is left alone."""
    gateway = plane.start_gateway()
    ca = plane.pki.ca_cert.read_bytes()

    def status(run_id: str, state: int) -> workers_pb2.WorkerMessage:
        return workers_pb2.WorkerMessage(status=workers_pb2.AssignmentStatus(run_id=run_id, state=state))

    async def scenario() -> list[workers_pb2.CancelAssignment]:
        sim = SimWorker(gateway.address, ca, plane.token, "returning")
        try:
            await sim.hello()
            await sim.write(status("ended-and-done", workers_pb2.ASSIGNMENT_STATE_DONE))
            await sim.write(status("ended-while-away", workers_pb2.ASSIGNMENT_STATE_RUNNING))
            await sim.wait_for("cancel")
            await asyncio.sleep(1.0)  # several report intervals: any other cancel would be here by now
        finally:
            await sim.close()
        return [m.cancel for _, m in sim.received if m.WhichOneof("message") == "cancel"]

    [cancel] = asyncio.run(scenario())
    assert cancel.run_id == "ended-while-away" and "ended" in cancel.reason, cancel


def test_a_gateway_start_keeps_the_stream_limits_metrics_ingest_set(plane: Plane) -> None:
    """Seen: each gateway start reset max_age 3600 → 604800, max_bytes 10 MB → unlimited, the
    duplicate window 300 → 120 s. metrics-ingest owns the stream; the gateway only waits for it."""
    async def configure() -> None:
        nc = await nats.connect(plane.nats.url)
        await ensure_streams(nc.jetstream(), replicas=1, duplicate_window_s=300, max_age_s=3600,
                             max_bytes=10_000_000, deadletter_max_age_s=3600)
        await nc.close()

    async def limits() -> tuple[float, int, float]:
        nc = await nats.connect(plane.nats.url)
        config = (await nc.jetstream().stream_info(STREAM)).config
        await nc.close()
        return config.max_age, config.max_bytes, config.duplicate_window

    asyncio.run(configure())
    plane.start_gateway()
    assert asyncio.run(limits()) == (3600, 10_000_000, 300)


def test_a_publisher_waits_for_the_stream_until_metrics_ingest_creates_it(nats_server: EmbeddedNats) -> None:
    async def scenario() -> None:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await js.delete_stream(STREAM)
        waiting = asyncio.create_task(wait_for_stream(js, poll_s=0.05))
        await asyncio.sleep(0.5)
        assert not waiting.done(), "no stream yet: still waiting"
        await ensure_streams(js, replicas=1, duplicate_window_s=120, max_age_s=3600, max_bytes=-1,
                             deadletter_max_age_s=3600)
        await asyncio.wait_for(waiting, 10)
        await nc.close()

    asyncio.run(scenario())
