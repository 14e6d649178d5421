"""GatewayService.Connect: one bidirectional stream per worker.

The first message must be a Hello; the orchestrator admits it (token check) and the gateway
answers with a Welcome. Then heartbeats are acked and reported, metric batches are stored in
JetStream and acked, statuses are reported. Messages for the worker (assignments, cancels)
arrive through ``WorkerSessions.send`` and are written on the stream.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from callmeter.common.stores.metrics_stream import is_subject_token
from callmeter.v1 import orchestrator_pb2, orchestrator_pb2_grpc, workers_pb2, workers_pb2_grpc
from services.gateway.publisher import BatchPublisher
from services.gateway.reporter import EventReporter
from services.gateway.settings import GatewaySettings

log = structlog.get_logger(__name__)


class WorkerSession:
    """One connected worker: its id and the messages waiting to be written to it."""

    def __init__(self, worker_id: str, context: grpc.aio.ServicerContext) -> None:
        self.worker_id = worker_id
        self.context = context
        self.outbound: asyncio.Queue[workers_pb2.GatewayMessage | None] = asyncio.Queue()
        self.last_heartbeat = time.monotonic()

    def send(self, message: workers_pb2.GatewayMessage) -> None:
        self.outbound.put_nowait(message)

    def close(self, reason: str) -> None:
        self.send(workers_pb2.GatewayMessage(disconnect=workers_pb2.Disconnect(reason=reason)))
        self.outbound.put_nowait(None)


class GatewayServicer(workers_pb2_grpc.GatewayServiceServicer):
    def __init__(self, settings: GatewaySettings, orchestrator: orchestrator_pb2_grpc.OrchestratorServiceStub,
                 reporter: EventReporter, publisher: BatchPublisher) -> None:
        self.settings = settings
        self.orchestrator = orchestrator
        self.reporter = reporter
        self.publisher = publisher
        self.sessions: dict[str, WorkerSession] = {}

    def close_worker(self, worker_id: str, reason: str) -> None:
        session = self.sessions.get(worker_id)
        if session is not None:
            log.info("closing_worker", worker_id=worker_id, reason=reason)
            session.close(reason)

    def close_all(self, reason: str) -> None:
        for worker_id in list(self.sessions):
            self.close_worker(worker_id, reason)

    async def Connect(self, request_iterator, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        hello = await self._read_hello(context)
        try:
            admitted = await self.orchestrator.AdmitWorker(
                orchestrator_pb2.AdmitWorkerRequest(hello=hello, gateway_id=self.settings.gateway_id, peer=context.peer()),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code() if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT) \
                else grpc.StatusCode.UNAVAILABLE
            log.info("worker_refused", peer=context.peer(), code=exc.code().name, detail=exc.details())
            await context.abort(code, exc.details() or "worker not admitted")
        worker_id = admitted.worker.id
        session = WorkerSession(worker_id, context)
        previous = self.sessions.get(worker_id)
        if previous is not None:
            previous.close("replaced by a new connection of the same worker")
        self.sessions[worker_id] = session
        log.info("worker_connected", worker_id=worker_id, name=hello.name, peer=context.peer())
        await context.write(workers_pb2.GatewayMessage(welcome=workers_pb2.Welcome(
            worker_id=worker_id, gateway_id=self.settings.gateway_id,
            heartbeat_interval_s=self.settings.heartbeat_interval_s, max_batch_bytes=self.settings.max_batch_bytes)))
        reader = asyncio.create_task(self._read_loop(session), name=f"read-{worker_id}")
        reason = "stream ended"
        try:
            while True:
                getter = asyncio.create_task(session.outbound.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    reason = reader.result()
                    break
                message = getter.result()
                if message is None:
                    reason = "closed by the gateway"
                    break
                await context.write(message)
        finally:
            reader.cancel()
            if self.sessions.get(worker_id) is session:
                del self.sessions[worker_id]
            self.reporter.add(orchestrator_pb2.WorkerEvent(worker_id=worker_id, disconnected=reason))
            log.info("worker_disconnected", worker_id=worker_id, reason=reason)

    async def _read_hello(self, context: grpc.aio.ServicerContext) -> workers_pb2.Hello:
        try:
            first = await asyncio.wait_for(context.read(), self.settings.hello_timeout_s)
        except asyncio.TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no hello within the hello timeout")
        if first is grpc.aio.EOF or first.WhichOneof("message") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a hello")
        return first.hello

    async def _read_loop(self, session: WorkerSession) -> str:
        """Handles the worker's messages; returns why the stream ended."""
        context = session.context
        while True:
            message = await context.read()
            if message is grpc.aio.EOF:
                return "worker closed the stream"
            kind = message.WhichOneof("message")
            if kind == "heartbeat":
                session.last_heartbeat = time.monotonic()
                received = Timestamp()
                received.GetCurrentTime()
                session.send(workers_pb2.GatewayMessage(heartbeat_ack=workers_pb2.HeartbeatAck(received_at=received)))
                self.reporter.add(orchestrator_pb2.WorkerEvent(worker_id=session.worker_id, heartbeat=message.heartbeat))
            elif kind == "metrics":
                batch = message.metrics
                if batch.ByteSize() > self.settings.max_batch_bytes:
                    session.close(f"metric batch of {batch.ByteSize()} bytes exceeds {self.settings.max_batch_bytes}")
                    return "oversized metric batch"
                batch.worker_id = session.worker_id  # never trust the worker's claim of who it is
                if not is_subject_token(batch.run_id):
                    session.close(f"metric batch with an invalid run id {batch.run_id[:64]!r}")
                    return "invalid run id"
                await self.publisher.publish(batch)
                session.send(workers_pb2.GatewayMessage(
                    batch_ack=workers_pb2.BatchAck(run_id=batch.run_id, sequence=batch.sequence)))
            elif kind == "status":
                self.reporter.add(orchestrator_pb2.WorkerEvent(worker_id=session.worker_id, status=message.status))
            elif kind == "goodbye":
                self.reporter.add(orchestrator_pb2.WorkerEvent(worker_id=session.worker_id, goodbye=message.goodbye))
            else:
                session.close(f"unexpected message {kind!r}")
                return f"unexpected message {kind!r}"
