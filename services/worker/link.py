"""The worker's link to the gateway: dial out over TLS, hello, heartbeats, reconnect with backoff.

Backoff: ``reconnect_initial_s`` doubling to ``reconnect_max_s``, each wait jittered by ±20 %,
forever, and cut short by a stop. A refused token is logged once per attempt as one line and
retried on the same backoff, never faster. The link goes through the HTTP CONNECT proxy that
``HTTPS_PROXY`` names (either case) unless ``NO_PROXY`` covers the gateway's host. What the worker
sends is compressed as ``link_compression`` says (gzip by default; see settings.py).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from callmeter import __version__
from callmeter.common.channels import aio_channel
from callmeter.v1 import workers_pb2, workers_pb2_grpc
from services.worker.health import WorkerStatus
from services.worker.settings import WorkerSettings

log = structlog.get_logger(__name__)

# How long a stopping worker waits for queued messages to be written.
FLUSH_TIMEOUT_S = 5.0
COMPRESSION = {"none": None, "gzip": grpc.Compression.Gzip}


def backoff_delays(initial_s: float, max_s: float, rng: random.Random | None = None):  # type: ignore[no-untyped-def]
    """Yields the waits between attempts: initial, doubled up to max, each jittered ±20 %."""
    rng = rng or random.Random()
    delay = initial_s
    while True:
        yield delay * rng.uniform(0.8, 1.2)
        delay = min(delay * 2, max_s)


class GatewayLink:
    """Holds the stream; what the gateway sends goes to ``on_message``, what the supervisor sends
    goes through ``send`` (dropped while disconnected: statuses and unacked batches are resent
    from ``on_connected`` after the next welcome)."""

    def __init__(self, settings: WorkerSettings, status: WorkerStatus, capacity: workers_pb2.WorkerCapacity,
                 on_message: Callable[[workers_pb2.GatewayMessage], None],
                 on_connected: Callable[[], list[workers_pb2.WorkerMessage]]) -> None:
        self.settings = settings
        self.status = status
        self.capacity = capacity
        self.on_message = on_message
        self.on_connected = on_connected
        self.stopping = asyncio.Event()
        self.instance_id = uuid.uuid4().hex  # said in every hello: the platform tells a restart from a reconnect
        self.call: grpc.aio.StreamStreamCall | None = None
        self.outbound: asyncio.Queue[workers_pb2.WorkerMessage] | None = None

    def send(self, message: workers_pb2.WorkerMessage) -> None:
        if self.outbound is not None:
            self.outbound.put_nowait(message)

    async def run(self) -> None:
        """Connects and reconnects until ``stop()``."""
        delays = backoff_delays(self.settings.reconnect_initial_s, self.settings.reconnect_max_s)
        while not self.stopping.is_set():
            connected_once = await self._session()
            if self.stopping.is_set():
                break
            if connected_once:  # a session that got in resets the backoff
                delays = backoff_delays(self.settings.reconnect_initial_s, self.settings.reconnect_max_s)
            wait = next(delays)
            log.info("reconnecting", in_s=round(wait, 1))
            try:
                await asyncio.wait_for(self.stopping.wait(), wait)
            except asyncio.TimeoutError:
                pass

    async def stop(self, reason: str) -> None:
        """Says goodbye after what is queued and half-closes the stream; the gateway then ends it
        and ``run`` returns."""
        self.stopping.set()
        call, queue = self.call, self.outbound
        if call is None or queue is None or not self.status.connected:
            return
        self._set_state(workers_pb2.WORKER_STATE_DRAINING)
        queue.put_nowait(workers_pb2.WorkerMessage(goodbye=workers_pb2.Goodbye(reason=reason)))
        try:
            await asyncio.wait_for(queue.join(), FLUSH_TIMEOUT_S)
            await call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, asyncio.TimeoutError):
            pass

    def _set_state(self, state: int, **fields: object) -> None:
        with self.status.lock:
            self.status.state = state
            for name, value in fields.items():
                setattr(self.status, name, value)

    async def _session(self) -> bool:
        """One connection; returns whether the gateway welcomed us."""
        settings = self.settings
        welcomed = False
        # Always TLS (the hello carries the token): without CALLMETER_CA_FILE, the system's roots.
        channel = aio_channel(settings.gateway_address, settings.ca_file, server_name=settings.gateway_server_name,
                              proxy=True, compression=COMPRESSION[settings.link_compression], always_tls=True)
        try:
            call = workers_pb2_grpc.GatewayServiceStub(channel).Connect()
            self.call = call
            await call.write(workers_pb2.WorkerMessage(hello=workers_pb2.Hello(
                token=settings.worker_token.get_secret_value(), name=settings.worker_name,
                labels=settings.labels(), capacity=self.capacity, version=__version__, instance_id=self.instance_id)))
            first = await call.read()
            if first is grpc.aio.EOF or first.WhichOneof("message") != "welcome":
                raise ConnectionError("the gateway did not answer the hello with a welcome")
            welcomed = True
            welcome = first.welcome
            self._set_state(workers_pb2.WORKER_STATE_ONLINE, worker_id=welcome.worker_id, last_error="")
            log.info("connected", gateway=settings.gateway_address, worker_id=welcome.worker_id,
                     gateway_id=welcome.gateway_id, heartbeat_s=welcome.heartbeat_interval_s)
            self.outbound = asyncio.Queue()
            for message in self.on_connected():
                self.outbound.put_nowait(message)
            writers = [asyncio.create_task(self._heartbeats(welcome.heartbeat_interval_s)),
                       asyncio.create_task(self._write_loop(call))]
            try:
                await self._read_loop(call)
            finally:
                self.outbound = None
                for task in writers:
                    task.cancel()
                await asyncio.gather(*writers, return_exceptions=True)
        except grpc.aio.AioRpcError as exc:
            if not self.stopping.is_set():
                self._report_error(exc)
        except (ConnectionError, OSError) as exc:
            self._set_state(workers_pb2.WORKER_STATE_OFFLINE, last_error=str(exc))
            log.warning("link_failed", error=str(exc))
        finally:
            self.call = None
            if not self.stopping.is_set():
                self._set_state(workers_pb2.WORKER_STATE_OFFLINE)
            await channel.close()
        return welcomed

    def _report_error(self, exc: grpc.aio.AioRpcError) -> None:
        code, detail = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.UNAUTHENTICATED:
            message = f"the gateway refused this worker's token: {detail}"
        elif code == grpc.StatusCode.UNAVAILABLE:
            message = f"gateway {self.settings.gateway_address} unreachable: {detail}"
        else:
            message = f"gateway stream ended with {code.name}: {detail}"
        self._set_state(workers_pb2.WORKER_STATE_OFFLINE, last_error=message)
        log.warning("link_down", code=code.name, error=message)

    async def _heartbeats(self, interval_s: int) -> None:
        while True:
            sent = Timestamp()
            sent.GetCurrentTime()
            with self.status.lock:
                state, running = self.status.state, self.status.running_endpoints
            self.send(workers_pb2.WorkerMessage(heartbeat=workers_pb2.Heartbeat(
                sent_at=sent, running_endpoints=running, state=state, dropped_samples=self.status.dropped_samples)))
            await asyncio.sleep(interval_s * random.uniform(0.9, 1.0))

    async def _write_loop(self, call: grpc.aio.StreamStreamCall) -> None:
        """The only writer of the stream, so messages never interleave."""
        assert self.outbound is not None
        queue = self.outbound
        while True:
            message = await queue.get()
            await call.write(message)
            queue.task_done()

    async def _read_loop(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                return
            kind = message.WhichOneof("message")
            if kind == "heartbeat_ack":
                with self.status.lock:
                    self.status.last_heartbeat_ack = time.time()
            elif kind == "disconnect":
                log.warning("disconnected_by_gateway", reason=message.disconnect.reason)
                self._set_state(workers_pb2.WORKER_STATE_OFFLINE, last_error=message.disconnect.reason)
                return
            else:
                self.on_message(message)
