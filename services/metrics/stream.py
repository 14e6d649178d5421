"""The JetStream streams and durable consumers metrics-ingest reads and writes.

metrics-ingest owns all three (it alone creates them and sets their limits): CALLMETER_METRICS
(metric batches from the gateway, which waits for it: callmeter.common.stores.metrics_stream
names its subjects), dead letters, and the orchestrator's run-start notices. Nothing here imports
a service, so it can move to callmeter.common when another service needs it.
"""

from __future__ import annotations

import asyncio

import structlog
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError

from callmeter.common.stores.metrics_stream import (
    DEADLETTER_SUBJECT,
    RUN_STARTED_SUBJECT,
    RUNS_STREAM,
    STREAM,
    SUBJECT_PREFIX,
)

METRICS_STREAM = STREAM
METRICS_SUBJECTS = f"{SUBJECT_PREFIX}.>"
METRICS_CONSUMER = "metrics-ingest"
METRICS_DEADLETTER_SUBJECT = DEADLETTER_SUBJECT

DEADLETTER_STREAM = "CALLMETER_DEADLETTER"
DEADLETTER_SUBJECTS = "callmeter.deadletter.>"
RUNS_DEADLETTER_SUBJECT = "callmeter.deadletter.runs"
#: Header of a dead letter that says why it was refused, e.g. ``decode_error: ...``.
REASON_HEADER = "Callmeter-Deadletter-Reason"
#: Header of a dead letter that names the subject it was first published to.
SUBJECT_HEADER = "Callmeter-Original-Subject"

RUNS_CONSUMER = "metrics-ingest-runs"

log = structlog.get_logger(__name__)


async def ensure_streams(js: JetStreamContext, replicas: int, duplicate_window_s: float, max_age_s: float,
                         max_bytes: int, deadletter_max_age_s: float) -> None:
    """Creates or updates the three streams; safe to call from every replica at every start.
    metrics-ingest is their only owner: the gateway waits for the metrics stream, never sets it."""
    await _ensure(js, StreamConfig(name=METRICS_STREAM, subjects=[METRICS_SUBJECTS], storage=StorageType.FILE,
                                   num_replicas=replicas, duplicate_window=duplicate_window_s, max_age=max_age_s,
                                   max_bytes=max_bytes))
    await _ensure(js, StreamConfig(name=DEADLETTER_STREAM, subjects=[DEADLETTER_SUBJECTS], storage=StorageType.FILE,
                                   num_replicas=replicas, duplicate_window=duplicate_window_s,
                                   max_age=deadletter_max_age_s))
    await _ensure(js, StreamConfig(name=RUNS_STREAM, subjects=[RUN_STARTED_SUBJECT], storage=StorageType.FILE,
                                   num_replicas=replicas, duplicate_window=duplicate_window_s, max_age=max_age_s))


async def _ensure(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError:  # exists with other limits
        await js.update_stream(config)


def consumer_config(durable: str, ack_wait_s: float, max_ack_pending: int) -> ConsumerConfig:
    """A durable pull consumer shared by all replicas; every message is acked explicitly.

    max_deliver stays unlimited: a store outage must delay samples, never drop them.
    """
    return ConsumerConfig(durable_name=durable, name=durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait_s,
                          max_ack_pending=max_ack_pending, max_deliver=-1)


async def pull_subscription(js: JetStreamContext, stream: str, config: ConsumerConfig) -> JetStreamContext.PullSubscription:
    """Creates the consumer or updates its settings, then binds to it."""
    await js.add_consumer(stream, config)
    return await js.pull_subscribe_bind(durable=config.durable_name, stream=stream)


class PullConsumer:
    """A durable pull consumer's life: bound at ``start``, read by the subclass's ``_run`` loop
    until ``_stopping`` is set. ``stop`` lets the loop finish what it holds first, then ends the
    subscription (one can hold an unread status message that would stall a later drain)."""

    def __init__(self, js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
        self.js = js
        self.stream = stream
        self.config = config
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._subscription: JetStreamContext.PullSubscription | None = None

    async def start(self) -> None:
        self._subscription = await pull_subscription(self.js, self.stream, self.config)
        self._task = asyncio.create_task(self._run(), name=self.config.durable_name)

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task
        if self._subscription is None:
            return
        try:
            await self._subscription.unsubscribe()
        except Exception as exc:  # the connection is already gone: nothing left to stall
            log.warning("unsubscribe_failed", error=str(exc) or type(exc).__name__)

    async def _run(self) -> None:
        raise NotImplementedError
