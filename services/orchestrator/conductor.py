"""Drives runs forward on a tick: dispatch pending assignments, start prepared runs, send cancels,
collect summaries.

Everything it decides is read from and written to the state store (services/orchestrator/runs.py),
so a restarted orchestrator picks up every run where the last one left it.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import structlog
from nats.aio.client import Client
from nats.errors import Error as NatsError
from sqlalchemy.orm import Session, sessionmaker

from callmeter.common.stores.metrics_stream import publish_run_started
from callmeter.common.stores.worker_commands import send_to_worker
from callmeter.state.models import utcnow
from callmeter.v1 import results_pb2, results_pb2_grpc, runs_pb2, workers_pb2
from services.orchestrator import runs
from services.orchestrator.leadership import Leadership
from services.orchestrator.settings import OrchestratorSettings

log = structlog.get_logger(__name__)

# An assignment no gateway took is sent again on every tick for this long before its placement
# fails: a worker admitted a moment ago may not be subscribed on its gateway yet, and one whose
# gateway just went away is reconnecting to another replica.
DELIVERY_RETRY_S = 10.0


class Conductor:
    def __init__(self, settings: OrchestratorSettings, sessions: sessionmaker[Session], nats: Client,
                 metrics: results_pb2_grpc.MetricsQueryServiceStub) -> None:
        self.settings = settings
        self.sessions = sessions
        self.nats = nats
        self.metrics = metrics
        self.wake = asyncio.Event()
        #: (run, worker) → when its assignment was first not delivered (this process's clock).
        self.undelivered_since: dict[tuple[str, str], float] = {}

    async def run_forever(self, leadership: Leadership) -> None:
        """Ticks while this replica leads (services/orchestrator/leadership.py); stands by otherwise."""
        while True:
            try:
                if await asyncio.to_thread(leadership.hold):
                    await self.tick()
                else:
                    self.undelivered_since.clear()  # the leader's to retry now
            except Exception:  # a store or broker hiccup must not end the loop; the next tick retries
                log.exception("tick_failed")
            try:
                await asyncio.wait_for(self.wake.wait(), self.settings.tick_interval_s)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()

    async def tick(self) -> None:
        for dispatch in await asyncio.to_thread(runs.pending_dispatches, self.sessions):
            delivered = await send_to_worker(self.nats, dispatch.worker_id,
                                             workers_pb2.GatewayMessage(assignment=dispatch.assignment))
            log.info("assignment_sent", run_id=dispatch.run_id, worker_id=dispatch.worker_id, delivered=delivered)
            key = (dispatch.run_id, dispatch.worker_id)
            if not delivered and time.monotonic() - self.undelivered_since.setdefault(key, time.monotonic()) < DELIVERY_RETRY_S:
                continue  # sent again next tick
            self.undelivered_since.pop(key, None)
            await asyncio.to_thread(runs.mark_delivery, self.sessions, dispatch, delivered)
        s = self.settings
        for start in await asyncio.to_thread(runs.due_starts, self.sessions, utcnow(), s.start_lead_s,
                                             s.prepare_wait_s, s.registration_wait_s):
            await self.send_start(start)
        cancels, collects = await asyncio.to_thread(
            runs.advance, self.sessions, utcnow(), self.settings.stale_after_s, self.settings.collect_delay_s)
        for cancel in cancels:
            await self.send_cancel(cancel, "the run reached its timeout")
        for collect in collects:
            await self.collect(collect)

    async def announce(self, run: runs_pb2.Run) -> None:
        """Tells metrics-ingest the run's test, for trends; a failure costs only the trend point."""
        try:
            await publish_run_started(self.nats.jetstream(), run)
        except (NatsError, asyncio.TimeoutError) as exc:
            log.warning("run_notice_failed", run_id=run.id, error=str(exc) or type(exc).__name__)

    async def send_start(self, start: runs.Start) -> None:
        """Tells a worker when its groups begin; undelivered, it is sent again next tick."""
        message = workers_pb2.GatewayMessage(start=workers_pb2.StartAssignment(run_id=start.run_id, groups=start.groups))
        message.start.start_at.FromDatetime(start.start_at)
        delivered = await send_to_worker(self.nats, start.worker_id, message)
        log.info("start_sent", run_id=start.run_id, worker_id=start.worker_id, groups=start.groups,
                 delivered=delivered)
        if delivered:
            await asyncio.to_thread(runs.mark_begun, self.sessions, start)

    async def send_cancel(self, cancel: runs.Dispatch, reason: str) -> None:
        message = workers_pb2.GatewayMessage(cancel=workers_pb2.CancelAssignment(run_id=cancel.run_id, reason=reason))
        delivered = await send_to_worker(self.nats, cancel.worker_id, message)
        log.info("cancel_sent", run_id=cancel.run_id, worker_id=cancel.worker_id, delivered=delivered)

    async def collect(self, collect: runs.Collect) -> None:
        try:
            summary = await self.metrics.GetRunSummary(
                collect.request, timeout=30)
        except grpc.aio.AioRpcError as exc:
            log.warning("summary_unavailable", run_id=collect.run_id, code=exc.code().name, detail=exc.details())
            if (utcnow() - collect.ended_at).total_seconds() > self.settings.collect_timeout_s:
                await asyncio.to_thread(runs.fail, self.sessions, collect.run_id,
                                        f"the metrics store did not answer for {self.settings.collect_timeout_s:.0f} s")
            return
        give_up = (utcnow() - collect.ended_at).total_seconds() >= self.settings.collect_wait_s
        awaited = await asyncio.to_thread(runs.finish, self.sessions, collect.run_id, summary, give_up,
                                          self.settings.completeness_min_pct)
        if awaited and not give_up:
            log.debug("collect_waiting", run_id=collect.run_id, awaited=awaited)  # read again next tick
        elif awaited:
            log.warning("run_collected_incomplete", run_id=collect.run_id, awaited=awaited)
        else:
            log.info("run_collected", run_id=collect.run_id)
