"""GatewayService.Connect: one bidirectional stream per worker.

The first message must be a Hello; the orchestrator admits it (token check) and the gateway
answers with a Welcome. Then heartbeats are acked and reported, metric batches are stored in
JetStream and acked, statuses are reported. Messages for the worker (assignments, cancels)
arrive through ``WorkerSession.send`` and are written on the stream.

Whatever ends a stream is its reason: a Disconnect carrying it is the last message the worker
gets (unless the worker closed the stream itself), and the orchestrator is told it. A message
that does not parse, a batch above ``max_batch_bytes`` or traffic beyond the rate limits ends
only that worker's stream.

Several replicas: a worker admitted here is announced to the others (``on_admitted``); a replica
still holding an older stream of that worker (its connection not yet known to be dead) ends it
through ``moved`` and does not report it disconnected, since the worker is online elsewhere. A
stopping gateway tells every worker why (``say_goodbye``) before the server cancels the streams.
Messages for a worker reach this replica through ``routes`` (commands.py: a NATS subscription per
stream), open from admission until the stream begins to end.

Metrics (docs/prometheus.md): ``callmeter_gateway_workers{state}``, the streams admitted here by
the state of their worker's last heartbeat; ``callmeter_gateway_auth_failures_total{reason}``,
streams refused or ended for their credentials (``AUTH_FAILURE_REASONS``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import NoReturn, Protocol

import grpc
import nats.errors
import structlog
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Counter, Gauge

from callmeter.common.enum_words import word
from callmeter.common.stores.metrics_stream import is_subject_token
from callmeter.v1 import orchestrator_pb2, orchestrator_pb2_grpc, workers_pb2, workers_pb2_grpc
from services.gateway.limits import StreamLimits
from services.gateway.publisher import BatchPublisher
from services.gateway.reporter import EventReporter
from services.gateway.settings import GatewaySettings
from services.gateway.wire import Received, with_worker_id

log = structlog.get_logger(__name__)

# gRPC cancels the handler of a stream that ends without a status: a keepalive timeout (a worker
# frozen or its network gone), the worker's deadline or cancel, a reset connection. Its reads end
# first, as a clean half-close does, and the cancellation follows at once; a read loop that sees
# the end waits this long for it before taking the end as the worker's own close.
STREAM_END_GRACE_S = 0.25
CONNECTION_LOST = "connection lost: keepalive timeout, deadline, cancel or reset"

# How long a stream the gateway ends stays open after its Disconnect, unread, so that a worker busy
# writing reads the reason before its writes fail; a worker that hangs up ends it sooner.
DISCONNECT_LINGER_S = 2.0

WORKERS = Gauge("callmeter_gateway_workers", "Workers connected to this gateway, by the state of their last heartbeat",
                ["state"])
AUTH_FAILURES = Counter("callmeter_gateway_auth_failures_total", "Worker streams refused or ended for their credentials",
                        ["reason"])
AUTH_FAILURE_REASONS = (
    "no_hello",  # no hello within the hello timeout, or the stream closed before one
    "bad_hello",  # the first message is not a hello, or the orchestrator refused the hello as invalid
    "bad_token",  # the orchestrator refused the hello's token: unknown or revoked
    "token_revoked",  # the token of a connected worker was revoked: its stream was ended
)
#: The orchestrator's refusals of a hello passed on to the worker, and the reason each counts as;
#: any other failure of AdmitWorker is UNAVAILABLE to the worker (it retries).
REFUSALS = {grpc.StatusCode.UNAUTHENTICATED: "bad_token", grpc.StatusCode.INVALID_ARGUMENT: "bad_hello"}
#: The states a connected worker is in: admitted ONLINE, then what its heartbeats claim (any
#: other claim is ignored, as the orchestrator ignores it), DRAINING after its goodbye.
CONNECTED_STATES = (workers_pb2.WORKER_STATE_ONLINE, workers_pb2.WORKER_STATE_BUSY, workers_pb2.WORKER_STATE_DRAINING)
for _state in CONNECTED_STATES:  # every series from the start, at 0
    WORKERS.labels(word(workers_pb2.WorkerState, _state))
for _reason in AUTH_FAILURE_REASONS:
    AUTH_FAILURES.labels(_reason)


async def refuse(context: grpc.aio.ServicerContext, reason: str, code: grpc.StatusCode, detail: str) -> NoReturn:
    AUTH_FAILURES.labels(reason).inc()
    await context.abort(code, detail)


class WorkerSession:
    """One connected worker: its id, the messages waiting to be written to it, why it ended."""

    def __init__(self, worker_id: str, context: grpc.aio.ServicerContext, limits: StreamLimits,
                 admitted_at_ns: int = 0) -> None:
        self.worker_id = worker_id
        self.context = context
        self.limits = limits
        #: When the orchestrator admitted this connection, by its clock: orders connections of one
        #: worker across replicas.
        self.admitted_at_ns = admitted_at_ns
        self.outbound: asyncio.Queue[workers_pb2.GatewayMessage | None] = asyncio.Queue()
        self.reason: str | None = None
        self.told_worker = False
        #: Ended because the worker connected to another replica: not reported disconnected.
        self.moved = False
        self.ended = asyncio.Event()
        #: Its label in ``WORKERS``, where ``Connect`` counts it while the stream is open.
        self.state = word(workers_pb2.WorkerState, workers_pb2.WORKER_STATE_ONLINE)

    def set_state(self, state: int) -> None:
        """Moves the worker in ``WORKERS`` to ``state`` (one of ``CONNECTED_STATES``, else ignored)."""
        label = word(workers_pb2.WorkerState, state)
        if state in CONNECTED_STATES and label != self.state:
            WORKERS.labels(self.state).dec()
            WORKERS.labels(label).inc()
            self.state = label

    def send(self, message: workers_pb2.GatewayMessage) -> bool:
        """Queues ``message``; False (dropping it) once the stream is ending."""
        if self.reason is not None:
            return False
        self.outbound.put_nowait(message)
        return True

    def close(self, reason: str, tell_worker: bool = True) -> None:
        """Ends the stream after what is queued; the first reason given is the one kept."""
        if self.reason is not None:
            return
        if tell_worker:
            self.send(workers_pb2.GatewayMessage(disconnect=workers_pb2.Disconnect(reason=reason)))
        self.reason, self.told_worker = reason, tell_worker
        self.outbound.put_nowait(None)


class CommandRoutes(Protocol):
    """How messages for a worker reach the replica holding its stream (commands.py)."""

    async def open(self, session: WorkerSession) -> None:
        """From now on messages for ``session.worker_id`` go to ``session.send``."""

    async def close(self, session: WorkerSession) -> None:
        """Ends what ``open`` began for this session, not for a newer one of the worker; idempotent."""


def add_to_server(servicer: GatewayServicer, server: grpc.aio.Server) -> None:
    """Registers Connect with a request deserializer that keeps each message's bytes (see wire.py)."""
    handlers = {"Connect": grpc.stream_stream_rpc_method_handler(
        servicer.Connect, request_deserializer=Received.parse,
        response_serializer=workers_pb2.GatewayMessage.SerializeToString)}
    name = workers_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)


class GatewayServicer(workers_pb2_grpc.GatewayServiceServicer):
    def __init__(self, settings: GatewaySettings, orchestrator: orchestrator_pb2_grpc.OrchestratorServiceStub,
                 reporter: EventReporter, publisher: BatchPublisher,
                 on_admitted: Callable[[workers_pb2.Worker], Awaitable[None]] | None = None,
                 routes: CommandRoutes | None = None) -> None:
        self.settings = settings
        self.orchestrator = orchestrator
        self.reporter = reporter
        self.publisher = publisher
        #: Called with the orchestrator's record of each worker admitted here (before its welcome).
        self.on_admitted = on_admitted
        self.routes = routes
        self.sessions: dict[str, WorkerSession] = {}
        #: Set when the gateway stops: the reason given to every stream, old and new.
        self.closing: str | None = None

    def close_worker(self, worker_id: str, reason: str) -> None:
        session = self.sessions.get(worker_id)
        if session is not None:
            log.info("closing_worker", worker_id=worker_id, reason=reason)
            session.close(reason)

    def revoke(self, worker_id: str) -> None:
        """The orchestrator found the worker's token revoked: ends its stream, counted once."""
        session = self.sessions.get(worker_id)
        if session is None or session.reason is not None:  # gone, or ending: reports repeat the news meanwhile
            return
        AUTH_FAILURES.labels("token_revoked").inc()
        self.close_worker(worker_id, "token revoked")

    def close_all(self, reason: str) -> None:
        for worker_id in list(self.sessions):
            self.close_worker(worker_id, reason)

    async def say_goodbye(self, reason: str, timeout_s: float) -> None:
        """Refuses new streams, ends every stream with ``reason`` and waits (at most ``timeout_s``)
        for them to end: each Disconnect is written and read before the server cancels anything."""
        self.closing = reason
        self.close_all(reason)
        sessions = list(self.sessions.values())
        try:
            await asyncio.wait_for(asyncio.gather(*(session.ended.wait() for session in sessions)), timeout_s)
        except asyncio.TimeoutError:
            log.warning("goodbye_timeout", streams=sum(not session.ended.is_set() for session in sessions))

    def moved(self, worker: workers_pb2.Worker) -> None:
        """Another replica admitted ``worker``: ends an older stream of it held here."""
        session = self.sessions.get(worker.id)
        if session is None or worker.gateway_id == self.settings.gateway_id:
            return
        if session.admitted_at_ns >= worker.last_heartbeat.ToNanoseconds():
            return  # ours is the newer connection; the announcement is of an older one
        session.moved = True
        log.info("worker_moved", worker_id=worker.id, gateway_id=worker.gateway_id)
        session.close(f"replaced by a new connection of the same worker on gateway {worker.gateway_id}")

    def _limits(self) -> StreamLimits:
        s = self.settings
        return StreamLimits(s.rate_limit_messages_per_s, s.rate_limit_message_burst,
                            s.rate_limit_bytes_per_s, s.rate_limit_byte_burst)

    async def Connect(self, request_iterator, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        if self.closing is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, self.closing)
        hello = await self._read_hello(context)
        try:
            admitted = await self.orchestrator.AdmitWorker(
                orchestrator_pb2.AdmitWorkerRequest(hello=hello, gateway_id=self.settings.gateway_id, peer=context.peer()),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            log.info("worker_refused", peer=context.peer(), code=exc.code().name, detail=exc.details())
            detail = exc.details() or "worker not admitted"
            if (reason := REFUSALS.get(exc.code())) is not None:
                await refuse(context, reason, exc.code(), detail)
            await context.abort(grpc.StatusCode.UNAVAILABLE, detail)
        worker_id = admitted.worker.id
        session = WorkerSession(worker_id, context, self._limits(), admitted.worker.last_heartbeat.ToNanoseconds())
        previous = self.sessions.get(worker_id)
        if previous is not None:
            previous.close("replaced by a new connection of the same worker")
        self.sessions[worker_id] = session
        if self.closing is not None:  # admitted while the gateway began to stop
            session.close(self.closing)
        log.info("worker_connected", worker_id=worker_id, name=hello.name, peer=context.peer())
        reader: asyncio.Task[None] | None = None
        WORKERS.labels(session.state).inc()
        try:
            if self.routes is not None:
                await self.routes.open(session)
            if self.on_admitted is not None:
                await self.on_admitted(admitted.worker)
            await context.write(workers_pb2.GatewayMessage(welcome=workers_pb2.Welcome(
                worker_id=worker_id, gateway_id=self.settings.gateway_id,
                heartbeat_interval_s=self.settings.heartbeat_interval_s, max_batch_bytes=self.settings.max_batch_bytes)))
            reader = asyncio.create_task(self._read_loop(session), name=f"read-{worker_id}")
            # The only writer of the stream; the reader and the gateway end it through session.close.
            while (message := await session.outbound.get()) is not None:
                await context.write(message)
            reader.cancel()
            if self.routes is not None:  # at once: a command must not wait on a stream that is ending
                await self.routes.close(session)
            if session.told_worker:
                await asyncio.sleep(DISCONNECT_LINGER_S)
        except asyncio.CancelledError:
            session.close(CONNECTION_LOST, tell_worker=False)  # unless a reason was given before
            raise
        finally:
            if reader is not None:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            reason = session.reason or CONNECTION_LOST
            if self.sessions.get(worker_id) is session:  # not replaced by a newer stream of the same worker
                del self.sessions[worker_id]
                if not session.moved:  # the worker is online on another replica
                    self.reporter.add(orchestrator_pb2.WorkerEvent(worker_id=worker_id, disconnected=reason))
            try:
                if self.routes is not None:  # this stream's own route: a newer one of the worker keeps its own
                    await self.routes.close(session)
            finally:
                WORKERS.labels(session.state).dec()
                session.ended.set()
                log.info("worker_disconnected", worker_id=worker_id, reason=reason)

    async def _read_hello(self, context: grpc.aio.ServicerContext) -> workers_pb2.Hello:
        try:
            first = await asyncio.wait_for(context.read(), self.settings.hello_timeout_s)
        except asyncio.TimeoutError:
            await refuse(context, "no_hello", grpc.StatusCode.DEADLINE_EXCEEDED, "no hello within the hello timeout")
        except DecodeError:
            await refuse(context, "bad_hello", grpc.StatusCode.INVALID_ARGUMENT, "the first message is not a WorkerMessage")
        if first is grpc.aio.EOF or first.message.WhichOneof("message") != "hello":
            await refuse(context, "no_hello" if first is grpc.aio.EOF else "bad_hello", grpc.StatusCode.INVALID_ARGUMENT,
                         "the first message must be a hello")
        return first.message.hello

    async def _read_loop(self, session: WorkerSession) -> None:
        """Reads until the stream ends, then closes the session with the reason."""
        try:
            reason = await self._handle_messages(session)
        except DecodeError:
            reason = "malformed message: not a WorkerMessage"
        except nats.errors.Error as exc:  # the batch stays unacked: the worker resends it after reconnecting
            log.warning("publish_failed", worker_id=session.worker_id, error=str(exc) or type(exc).__name__)
            reason = "metrics store unavailable"
        except Exception:  # a bug must end this stream, not leave it open and deaf
            log.exception("read_loop_failed", worker_id=session.worker_id)
            reason = "internal error in the gateway"
        if reason is None:
            await asyncio.sleep(STREAM_END_GRACE_S)  # cancelled with Connect if gRPC cancels the stream
            session.close("worker closed the stream", tell_worker=False)
        else:
            session.close(reason)

    async def _handle_messages(self, session: WorkerSession) -> str | None:
        """Handles the worker's messages; returns why the gateway ends the stream (None: the worker did)."""
        context = session.context
        while True:
            received = await context.read()
            if received is grpc.aio.EOF:
                return None
            if (exceeded := session.limits.exceeded(len(received.data))) is not None:
                return f"rate limit: {exceeded}"
            message = received.message
            kind = message.WhichOneof("message")
            if kind == "heartbeat":
                now = Timestamp()
                now.GetCurrentTime()
                session.send(workers_pb2.GatewayMessage(heartbeat_ack=workers_pb2.HeartbeatAck(received_at=now)))
                session.set_state(message.heartbeat.state)
                self.reporter.add(orchestrator_pb2.WorkerEvent(worker_id=session.worker_id, heartbeat=message.heartbeat))
            elif kind == "metrics":
                batch, payload = message.metrics, received.batch_bytes()
                if len(payload) > self.settings.max_batch_bytes:
                    return f"metric batch of {len(payload)} bytes exceeds {self.settings.max_batch_bytes}"
                if not is_subject_token(batch.run_id):
                    return f"metric batch with an invalid run id {batch.run_id[:64]!r}"
                # Never trust the worker's claim of who it is: the authenticated id overrides it.
                await self.publisher.publish(session.worker_id, batch, with_worker_id(payload, session.worker_id))
                session.send(workers_pb2.GatewayMessage(
                    batch_ack=workers_pb2.BatchAck(run_id=batch.run_id, sequence=batch.sequence)))
            elif kind == "status":
                self.reporter.add(orchestrator_pb2.WorkerEvent(worker_id=session.worker_id, status=message.status))
            elif kind == "goodbye":
                session.set_state(workers_pb2.WORKER_STATE_DRAINING)
                self.reporter.add(orchestrator_pb2.WorkerEvent(worker_id=session.worker_id, goodbye=message.goodbye))
            else:
                return f"unexpected message {kind!r}"
