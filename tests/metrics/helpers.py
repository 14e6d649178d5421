"""Shared pieces of the metrics-ingest tests: batches as the gateway sends them, an in-process ingest."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from nats.js.client import JetStreamContext

from callmeter.v1 import results_pb2
from services.metrics.main import MetricsIngest
from services.metrics.settings import MetricsSettings
from services.metrics.store import MetricsStore
from services.metrics.stream import ensure_streams

T = TypeVar("T")

#: A recent second, so samples are inside the store's retention window.
BASE_SECOND = int(time.time()) - 3600


def run(coro: Coroutine[Any, Any, T], timeout_s: float = 90.0) -> T:
    """Runs an async test body with a hard time limit."""
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


def make_batch(run_id: str, worker_id: str, sequence: int, group: str, endpoints: range, second: int,
               **metrics: int | bool) -> results_pb2.MetricBatch:
    """One second of ``endpoints``, every sample with the same metric values."""
    batch = results_pb2.MetricBatch(run_id=run_id, worker_id=worker_id, sequence=sequence)
    for endpoint in endpoints:
        sample = batch.samples.add(group=group, endpoint=endpoint, second=second)
        for name, value in metrics.items():
            setattr(sample.metrics, name, value)
    return batch


async def publish(js: JetStreamContext, batch: results_pb2.MetricBatch, msg_id: str | None = None):  # type: ignore[no-untyped-def]
    """Publishes like the gateway: subject and Nats-Msg-Id from the batch (or ``msg_id``)."""
    return await js.publish(f"callmeter.metrics.{batch.run_id}.{batch.worker_id}", batch.SerializeToString(),
                            headers={"Nats-Msg-Id": msg_id or f"{batch.worker_id}:{batch.run_id}:{batch.sequence}"})


async def create_streams(js: JetStreamContext) -> None:
    """The streams with the default limits, as the service creates them at start."""
    defaults = MetricsSettings()
    await ensure_streams(js, replicas=1, duplicate_window_s=defaults.stream_duplicate_window_s,
                         max_age_s=defaults.stream_max_age_s, max_bytes=defaults.stream_max_bytes,
                         deadletter_max_age_s=defaults.deadletter_max_age_s)


def ingest_settings(tmp_path: Path, nats_url: str, **overrides: Any) -> MetricsSettings:
    values: dict[str, Any] = {"nats_url": nats_url, "clickhouse_url": f"chdb://{tmp_path / 'metrics'}",
                              "ingest_max_delay_s": 0.2, "store_retry_max_s": 0.5}
    values.update(overrides)
    return MetricsSettings(**values)


@contextlib.asynccontextmanager
async def running_ingest(settings: MetricsSettings, store: MetricsStore | None = None) -> AsyncIterator[MetricsIngest]:
    """The service's component, started and stopped in this process (no gRPC server)."""
    component = MetricsIngest(settings, store or MetricsStore(settings.clickhouse_url, settings.raw_ttl_days))
    await component.start()
    try:
        yield component
    finally:
        await component.stop()


async def eventually(check: Callable[[], Awaitable[T]], timeout_s: float = 20.0, message: str = "condition") -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not reached within {timeout_s} s (last: {value!r})")
        await asyncio.sleep(0.1)


def count_rows(client, run_id: str, final: bool = True) -> int:  # type: ignore[no-untyped-def]
    """Rows of a run as queries see them (FINAL), or as stored."""
    return int(client.query(f"SELECT count() FROM endpoint_seconds {'FINAL' if final else ''} WHERE run_id = {{r:String}}",
                            parameters={"r": run_id}).result_rows[0][0])
