"""Forwards worker events to the orchestrator in batches, and learns which workers to close."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import grpc
import structlog

from callmeter.v1 import orchestrator_pb2, orchestrator_pb2_grpc

log = structlog.get_logger(__name__)

# Events kept while the orchestrator is unreachable; the oldest go first (heartbeats supersede).
MAX_PENDING = 10_000


class EventReporter:
    def __init__(self, stub: orchestrator_pb2_grpc.OrchestratorServiceStub, gateway_id: str,
                 interval_s: float, on_revoked: Callable[[str], None]) -> None:
        self.stub = stub
        self.gateway_id = gateway_id
        self.interval_s = interval_s
        self.on_revoked = on_revoked
        self.pending: list[orchestrator_pb2.WorkerEvent] = []
        self.stopping = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def add(self, event: orchestrator_pb2.WorkerEvent) -> None:
        self.pending.append(event)

    def start(self) -> None:
        self.task = asyncio.create_task(self._loop(), name="event-reporter")

    async def stop(self) -> None:
        """Sends what is pending, after the report under way if there is one. The loop is not
        cancelled: a report cancelled in flight would lose its events (the last disconnects)."""
        self.stopping.set()
        if self.task is not None:
            await self.task
        if self.pending:  # added while the loop's last report was on its way
            await self.flush()

    async def _loop(self) -> None:
        """A report every interval; stopping ends the wait early and the loop after its report."""
        while not self.stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.interval_s)
            await self.flush()

    async def flush(self) -> None:
        """Sends what is pending (even nothing: the reply carries revocations)."""
        events, self.pending = self.pending, []
        try:
            reply = await self.stub.ReportWorkerEvents(
                orchestrator_pb2.ReportWorkerEventsRequest(gateway_id=self.gateway_id, events=events), timeout=10
            )
        except asyncio.CancelledError:
            self.pending[:0] = events
            raise
        except grpc.aio.AioRpcError as exc:
            # Keep the events for the next try; the orchestrator may be restarting.
            self.pending[:0] = events
            del self.pending[:-MAX_PENDING]
            log.warning("report_failed", code=exc.code().name, detail=exc.details(), pending=len(self.pending))
            return
        for worker_id in reply.revoked_worker_ids:
            self.on_revoked(worker_id)
