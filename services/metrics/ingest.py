"""The durable consumer that moves metric batches from JetStream into the metrics store.

Fetch → decode and check → buffer → one insert per ``max_rows`` rows or ``max_delay_s`` →
refresh of the rollup rows of the (run, group, second)s the insert touched → ack. The next
insert's rows are fetched and decoded while an insert runs (at most one runs: the store thread's
engine releases the GIL, so Python and ClickHouse work side by side). A message is acked only
after the insert that holds its rows and the rollup refresh after it succeeded, so a crash at
any point leaves it unacked and JetStream delivers it again; the replayed rows land on the same
ReplacingMergeTree keys and queries read FINAL, so they count once, and the rollup rows of their
seconds are recomputed from the raw rows, so they count once there too. Refused messages go to
the dead-letter subject and never hold the consumer up. While the store is down, the consumer
keeps its rows, stops fetching once the next insert's rows are gathered too, retries with
back-off and tells JetStream it is still working on the held messages so they are not handed to
another replica.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from prometheus_client import Counter, Gauge, Histogram

from services.metrics.backoff import retry_until_stopped, stopped_within
from services.metrics.batches import MAX_CLOCK_AHEAD_S, ProtobufRows, Refusal, RowBuffer, Rows, decode_rows
from services.metrics.deadletter import dead_letter
from services.metrics.settings import MetricsSettings
from services.metrics.store import MetricsStore, insert_samples, refresh_rollups
from services.metrics.stream import (
    METRICS_CONSUMER,
    METRICS_DEADLETTER_SUBJECT,
    METRICS_STREAM,
    PullConsumer,
    consumer_config,
)

log = structlog.get_logger(__name__)

ROWS = Counter("callmeter_metrics_rows_inserted_total", "Endpoint-seconds inserted into the metrics store")
BATCHES = Counter("callmeter_metrics_batches_ingested_total", "MetricBatch messages stored and acked")
INSERT_SECONDS = Histogram("callmeter_metrics_insert_seconds", "Duration of one successful insert",
                           buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
ROLLUP_SECONDS = Histogram("callmeter_metrics_rollup_refresh_seconds",
                           "Duration of one successful refresh of the rollup rows an insert touched",
                           buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
INSERT_FAILURES = Counter("callmeter_metrics_insert_failures_total",
                          "Inserts or rollup refreshes that failed (they are retried)")
PENDING = Gauge("callmeter_metrics_consumer_pending_messages", "Messages in the stream not yet delivered to ingest")
LAG = Gauge("callmeter_metrics_ingest_lag_seconds", "At the newest insert: age of its oldest message in the stream")

#: Longest a fetch waits for messages; also bounds how long stop() waits for the loop.
FETCH_WAIT_S = 1.0


@dataclass(eq=False)
class _Insert:
    """Rows bound for one insert, and the messages acked once it succeeded."""

    buffer: RowBuffer = field(default_factory=RowBuffer)
    held: list[Msg] = field(default_factory=list)
    positions: set[int] = field(default_factory=set)
    first_held_at: float = 0.0
    #: Set when the insert succeeded: a copy redelivered after that is acked at once.
    stored: bool = False


class SampleIngest(PullConsumer):
    """Fetches and decodes the next insert's rows while the previous insert runs (at most one).
    Stopping inserts and acks what is buffered (if the store takes it)."""

    def __init__(self, js: JetStreamContext, store: MetricsStore, settings: MetricsSettings) -> None:
        super().__init__(js, METRICS_STREAM, consumer_config(
            METRICS_CONSUMER, settings.ingest_ack_wait_s, settings.ingest_max_ack_pending))
        self.store = store
        self.settings = settings
        self.pending = _Insert()  # being filled
        self._inserting: _Insert | None = None
        self._insert_task: asyncio.Task[bool] | None = None

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                messages = await self._fetch()
                if messages:
                    decoded = await asyncio.to_thread(self._decode, messages)
                    for msg, refusal in await self._hold(decoded):
                        await dead_letter(self.js, msg, METRICS_DEADLETTER_SUBJECT, refusal.reason, refusal.detail)
                if self.pending.held and (self.pending.buffer.rows >= self.settings.ingest_max_rows or self._delay_left() <= 0):
                    await self._start_insert()
            except Exception:  # the loop must outlive NATS hiccups; held messages stay held
                log.exception("ingest_loop_error")
                await stopped_within(self._stopping, 1.0)
        await self._finish_insert()
        if self.pending.held:
            batch, self.pending = self.pending, _Insert()
            await self._insert(batch)

    async def _fetch(self) -> list[Msg]:
        wait_s = min(FETCH_WAIT_S, max(0.05, self._delay_left()))
        try:
            messages = await self._subscription.fetch(self.settings.ingest_fetch_batch, timeout=wait_s)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            PENDING.set(0)
            return []
        if messages:  # nats-py can also answer a fetch with no messages and no error
            PENDING.set(messages[-1].metadata.num_pending)
        return messages

    def _delay_left(self) -> float:
        if not self.pending.held:
            return FETCH_WAIT_S
        return self.pending.first_held_at + self.settings.ingest_max_delay_s - time.monotonic()

    def _decode(self, messages: list[Msg]) -> list[tuple[Msg, Rows | Refusal]]:
        """Decodes and checks every message; runs on a worker thread and touches nothing shared."""
        now = int(time.time())
        oldest = now - self.settings.raw_ttl_days * 86400
        return [(msg, decode_rows(msg.subject, msg.data, self.settings.ingest_max_message_bytes, oldest,
                                  now + MAX_CLOCK_AHEAD_S)) for msg in messages]

    async def _hold(self, decoded: list[tuple[Msg, Rows | Refusal]]) -> list[tuple[Msg, Refusal]]:
        """Buffers the good batches; returns the refused ones."""
        refused = []
        for msg, result in decoded:
            position = msg.metadata.sequence.stream
            inserting = self._inserting
            if inserting is not None and position in inserting.positions:  # redelivered while its insert runs
                if inserting.stored:
                    await self._ack([msg])
                else:
                    inserting.held.append(msg)
                continue
            if position in self.pending.positions:  # redelivered while we still hold it: ack both copies
                self.pending.held.append(msg)
                continue
            if isinstance(result, Refusal):
                refused.append((msg, result))
                continue
            if not self.pending.held:
                self.pending.first_held_at = time.monotonic()
            self.pending.buffer.add(result)
            self.pending.held.append(msg)
            self.pending.positions.add(position)
        return refused

    async def _start_insert(self) -> None:
        """Waits for the insert in flight, then starts one of the pending rows."""
        await self._finish_insert()
        batch, self.pending = self.pending, _Insert()
        self._inserting = batch
        self._insert_task = asyncio.create_task(self._insert(batch), name="metrics-insert")

    async def _finish_insert(self) -> None:
        task, self._insert_task = self._insert_task, None
        if task is None:
            return
        try:
            await task
        except Exception:  # its messages were not acked: JetStream delivers them again
            log.exception("metrics_insert_error")

    async def _insert(self, batch: _Insert) -> bool:
        """Inserts the batch's rows and refreshes the rollup (retrying while the store is down), then acks."""
        token = _insert_token(batch.positions)
        rows = batch.buffer.rows
        buffer = batch.buffer
        build = buffer.protobuf_rows if self.store.protobuf_rows else lambda: buffer.columns
        data, keys = await asyncio.to_thread(lambda: (build(), buffer.keys())) if rows else (None, [])
        inserted = False

        async def insert() -> None:
            nonlocal inserted
            if rows and not inserted:
                started = time.monotonic()
                await self.store.call(insert_samples, data, token)
                INSERT_SECONDS.observe(time.monotonic() - started)
                inserted = True
            if keys:  # after a failed refresh, only the refresh is tried again
                started = time.monotonic()
                await self.store.call(refresh_rollups, keys)
                ROLLUP_SECONDS.observe(time.monotonic() - started)

        async def on_failure(error: Exception, retry_in_s: float) -> None:
            nonlocal data
            INSERT_FAILURES.inc()
            log.warning("metrics_insert_failed", error=str(error).splitlines()[0] if str(error) else type(error).__name__,
                        step="rollup_refresh" if inserted else "insert", rows=rows, messages=len(batch.held),
                        retry_in_s=retry_in_s)
            if isinstance(data, ProtobufRows) and not inserted:
                # Should a sample the store cannot parse be the cause, columns read from the same
                # samples by upb (which skips what it does not know) still go in: never stuck.
                data = await asyncio.to_thread(lambda: buffer.columns)
            # Also the rows gathered meanwhile: they wait for this insert.
            await self._still_working([*batch.held, *self.pending.held])

        if not await retry_until_stopped(insert, self._stopping, self.settings.store_retry_max_s, on_failure):
            log.warning("stopping_with_unstored_rows", rows=rows, messages=len(batch.held), rows_inserted=inserted)
            return False
        batch.stored = True
        LAG.set(max(0.0, time.time() - min(m.metadata.timestamp.timestamp() for m in batch.held)))
        ROWS.inc(rows)
        BATCHES.inc(len(batch.positions))
        await self._ack(list(batch.held))
        return True

    async def _ack(self, messages: list[Msg]) -> None:
        """Acks stored messages; one whose ack is lost is redelivered and lands on its own rows again."""
        try:
            for msg in messages:
                await msg.ack()
        except Exception as exc:
            log.warning("ack_failed", error=str(exc) or type(exc).__name__, messages=len(messages))

    async def _still_working(self, messages: list[Msg]) -> None:
        """Resets the ack timer of held messages, so JetStream does not redeliver them meanwhile."""
        try:
            for msg in messages:
                await msg.in_progress()
        except Exception as exc:  # NATS down too: they will simply be redelivered
            log.warning("in_progress_failed", error=str(exc) or type(exc).__name__)


def _insert_token(positions: set[int]) -> str:
    """Names an insert by the stream positions of its messages: a retry of it has the same name."""
    digest = hashlib.sha256(",".join(map(str, sorted(positions))).encode()).hexdigest()
    return f"{METRICS_STREAM}:{digest}"
