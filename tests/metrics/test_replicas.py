"""Two metrics-ingest replicas on one durable consumer: the work is shared, each sample counted once.

In production replicas share a ClickHouse server; here (no server can run) they share one chDB
store in this process, each through its own handle that counts what it inserted. Everything else
is real: the JetStream consumer, the inserts, the rollup refreshes. One replica is stopped halfway
and the other takes the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nats
import pytest

from callmeter.common.stores.nats import EmbeddedNats
from services.metrics import queries
from services.metrics.store import MetricsStore, insert_samples
from services.metrics.stream import METRICS_CONSUMER, METRICS_STREAM
from tests.metrics.helpers import (
    BASE_SECOND,
    count_rows,
    eventually,
    ingest_settings,
    make_batch,
    publish,
    run,
    running_ingest,
)

pytestmark = pytest.mark.timeout(120)

RUN = "run-replicas"
ENDPOINTS = 20


class ReplicaHandle(MetricsStore):
    """One replica's way to the shared store: opening and closing are the test's, inserts are counted."""

    def __init__(self, shared: MetricsStore) -> None:  # no thread or client of its own: the shared store's
        self.shared = shared
        self.url, self.ttl_days = shared.url, shared.ttl_days
        self.inserted_batches = 0

    @property  # type: ignore[override]
    def protobuf_rows(self) -> bool:
        return self.shared.protobuf_rows

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def call(self, fn, *args: Any):  # type: ignore[no-untyped-def,override]
        result = await self.shared.call(fn, *args)
        if fn is insert_samples:
            self.inserted_batches += 1
        return result


async def _idle(js) -> bool:  # type: ignore[no-untyped-def]
    info = await js.consumer_info(METRICS_STREAM, METRICS_CONSUMER)
    return info.num_pending == 0 and info.num_ack_pending == 0


def test_two_replicas_share_the_consumer_and_one_takes_over_when_the_other_stops(
        tmp_path: Path, nats_server: EmbeddedNats) -> None:
    # Small fetches and inserts, so that both replicas get messages to insert.
    settings = ingest_settings(tmp_path, nats_server.url, ingest_fetch_batch=4, ingest_max_rows=ENDPOINTS * 4)

    async def publish_seconds(js, seconds: range) -> None:  # type: ignore[no-untyped-def]
        for second in seconds:
            await publish(js, make_batch(RUN, "w1", second, "g", range(ENDPOINTS), BASE_SECOND + second,
                                         rx_packets=1, calls_attempted=1))

    async def body() -> None:
        shared = MetricsStore(settings.clickhouse_url, settings.raw_ttl_days)
        await shared.open()
        first, second = ReplicaHandle(shared), ReplicaHandle(shared)
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        try:
            async with running_ingest(settings, second):
                async with running_ingest(settings, first):
                    await publish_seconds(js, range(0, 60))
                    await eventually(lambda: _idle(js), message="the first 60 batches stored")
                assert first.inserted_batches > 0 and second.inserted_batches > 0, (first.inserted_batches,
                                                                                    second.inserted_batches)
                # The first replica has stopped (its buffer inserted and acked); the second goes on alone.
                taken_by_first = first.inserted_batches
                await publish_seconds(js, range(60, 120))
                await eventually(lambda: _idle(js), message="the other 60 batches stored")
                assert first.inserted_batches == taken_by_first
            assert await shared.call(count_rows, RUN) == 120 * ENDPOINTS
            assert await shared.call(count_rows, RUN, False) == 120 * ENDPOINTS, "a batch stored twice"
            total = (await shared.call(queries.run_summary, RUN, ["g"])).total
            assert (total.endpoints, total.calls_attempted) == (ENDPOINTS, 120 * ENDPOINTS)
        finally:
            await nc.close()
            await shared.close()

    run(body())
