"""Run-start notices: which test a run belongs to, for trends across runs.

metrics-ingest knows runs only by id. The orchestrator publishes a serialized callmeter.v1.Run
on ``callmeter.runs.started`` when a run starts executing; this consumer stores
(run_id, test_id, started_at, answering_groups) in run_tests, acking each notice after the insert.
The answering groups (callees, from the placements' roles) are what the run's call totals leave
out when it has callers (services/metrics/queries.py).
"""

from __future__ import annotations

import asyncio
import time

import nats.errors
import structlog
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from callmeter.v1 import common_pb2, runs_pb2
from services.metrics.backoff import retry_until_stopped, stopped_within
from services.metrics.deadletter import dead_letter
from services.metrics.settings import MetricsSettings
from services.metrics.store import MetricsStore, insert_runs
from services.metrics.stream import (
    RUNS_CONSUMER,
    RUNS_DEADLETTER_SUBJECT,
    RUNS_STREAM,
    PullConsumer,
    consumer_config,
)

log = structlog.get_logger(__name__)

FETCH_BATCH = 100
FETCH_WAIT_S = 1.0


def run_row(payload: bytes) -> tuple[str, str, int, list[str]] | str:
    """(run_id, test_id, started_at, answering_groups) from a notice, or why it is unusable."""
    run = runs_pb2.Run()
    try:
        run.ParseFromString(payload)
    except DecodeError as exc:
        return f"not a Run: {exc}"
    if not run.id or not run.test_id:
        return f"id {run.id!r} and test_id {run.test_id!r} must both be set"
    started = run.started_at.seconds or run.created_at.seconds or int(time.time())
    answering = sorted({p.group for p in run.placements if p.role == common_pb2.ENDPOINT_ROLE_CALLEE})
    return run.id, run.test_id, started, answering


class RunNotices(PullConsumer):
    def __init__(self, js: JetStreamContext, store: MetricsStore, settings: MetricsSettings) -> None:
        super().__init__(js, RUNS_STREAM, consumer_config(RUNS_CONSUMER, settings.ingest_ack_wait_s, FETCH_BATCH))
        self.store = store
        self.settings = settings

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                try:
                    messages = await self._subscription.fetch(FETCH_BATCH, timeout=FETCH_WAIT_S)
                except (nats.errors.TimeoutError, asyncio.TimeoutError):
                    continue
                await self._store(messages)
            except Exception:  # unacked notices come back; the loop must go on
                log.exception("run_notices_error")
                await stopped_within(self._stopping, 1.0)

    async def _store(self, messages: list[Msg]) -> None:
        rows, good = [], []
        for msg in messages:
            row = run_row(msg.data)
            if isinstance(row, str):
                await dead_letter(self.js, msg, RUNS_DEADLETTER_SUBJECT, "invalid_run_notice", row)
            else:
                rows.append(row)
                good.append(msg)
        if not rows:
            return

        async def insert() -> None:
            await self.store.call(insert_runs, rows)

        async def on_failure(error: Exception, retry_in_s: float) -> None:
            log.warning("run_notice_insert_failed", error=str(error).splitlines()[0] if str(error) else type(error).__name__,
                        retry_in_s=retry_in_s)

        if await retry_until_stopped(insert, self._stopping, self.settings.store_retry_max_s, on_failure):
            for msg in good:
                await msg.ack()
            log.info("runs_started_stored", runs=[row[0] for row in rows])
