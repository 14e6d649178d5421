"""Shared pieces of the metrics-ingest tests: batches as the gateway sends them, an in-process ingest, a known data set."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from nats.js.client import JetStreamContext

from callmeter.v1 import results_pb2
from services.metrics.batches import RowBuffer
from services.metrics.main import MetricsIngest
from services.metrics.settings import MetricsSettings
from services.metrics.store import MetricsStore, insert_samples, refresh_rollups
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


# ---------------------------------------------------------------------------------------------
# A known random data set, and the run summary NumPy computes from it.

GROUPS = {"callers": 4, "callees": 3}
SECONDS = 60
#: Percentiles, averages and sums are compared to this (quantileExactInclusive interpolates
#: like NumPy's default percentile).
APPROX = {"rel": 1e-9, "abs": 1e-9}


def dataset() -> dict[str, np.ndarray]:
    """One row per (group, endpoint, second), as columns."""
    rng = np.random.default_rng(7)
    keys = [(g, e, s) for g, n in GROUPS.items() for e in range(n) for s in range(SECONDS)]
    n = len(keys)

    def sometimes_zero(values: np.ndarray, p: float) -> np.ndarray:
        return np.where(rng.random(n) < p, 0, values)

    return {
        "group": np.array([k[0] for k in keys]),
        "endpoint": np.array([k[1] for k in keys]),
        "second": np.array([BASE_SECOND + k[2] for k in keys]),
        "registered": rng.random(n) < 0.8,
        "calls_attempted": rng.integers(0, 3, n),
        "calls_connected": rng.integers(0, 2, n),
        "calls_failed": rng.integers(0, 2, n),
        "call_last_code": rng.choice([0, 180, 200, 408, 486, 503], n),
        "call_active": rng.random(n) < 0.6,
        "mos": sometimes_zero(rng.integers(100, 441, n), 0.1),
        "rx_jitter_us": rng.integers(0, 40_000, n),
        "rtt_us": sometimes_zero(rng.integers(1_000, 200_000, n), 0.1),
        "setup_time_ms": sometimes_zero(rng.integers(50, 3_000, n), 0.3),
        "rx_packets": rng.integers(0, 51, n),
        "rx_lost": rng.integers(0, 3, n),
    }


def dataset_batches(data: dict[str, np.ndarray], run_id: str, rows: np.ndarray | None = None,
                    worker_id: str = "w1") -> list[results_pb2.MetricBatch]:
    """The selected rows (all by default) as the gateway would send them: a batch per group and second."""
    metric_names = [k for k in data if k not in ("group", "endpoint", "second")]
    selected = np.ones(len(data["group"]), dtype=bool) if rows is None else rows
    batches = []
    for group in GROUPS:
        for second in range(BASE_SECOND, BASE_SECOND + SECONDS):
            batch = results_pb2.MetricBatch(run_id=run_id, worker_id=worker_id, sequence=len(batches))
            for i in np.flatnonzero(selected & (data["group"] == group) & (data["second"] == second)):
                sample = batch.samples.add(group=group, endpoint=int(data["endpoint"][i]), second=second)
                for name in metric_names:
                    setattr(sample.metrics, name, data[name][i].item())
            if batch.samples:
                batches.append(batch)
    return batches


def store_dataset(client, run_id: str, data: dict[str, np.ndarray], token: str) -> None:  # type: ignore[no-untyped-def]
    """As ingest stores it, in one insert: a RowBuffer of the batches, the insert, the rollup refresh."""
    buffer = RowBuffer()
    for batch in dataset_batches(data, run_id):
        buffer.add(batch)
    insert_samples(client, buffer.columns, token)
    refresh_rollups(client, buffer.keys())


def p95(values: np.ndarray) -> float:
    return float(np.percentile(values, 95)) if len(values) else 0.0


def expected_summary(data: dict[str, np.ndarray], rows: np.ndarray) -> dict:  # type: ignore[type-arg]
    """The GroupSummary fields of the selected rows, by NumPy (as_dict's form)."""
    d = {k: v[rows] for k, v in data.items()}
    keys = list(zip(d["group"], d["endpoint"], strict=True))
    measured = d["call_active"] & (d["mos"] > 0)
    failed = d["calls_failed"] > 0
    codes = np.where(d["call_last_code"] >= 300, d["call_last_code"], 0)
    lost, received = d["rx_lost"].sum(), d["rx_packets"].sum()
    return {
        "endpoints": len(set(keys)),
        "registered": len({key for key, registered in zip(keys, d["registered"], strict=True) if registered}),
        "calls_attempted": int(d["calls_attempted"].sum()),
        "calls_connected": int(d["calls_connected"].sum()),
        "calls_failed": int(d["calls_failed"].sum()),
        "failures_by_code": {int(c): int(d["calls_failed"][failed & (codes == c)].sum()) for c in set(codes[failed])},
        "mos_avg": pytest.approx(float(np.mean(d["mos"][measured] / 100)), **APPROX),
        "mos_min": pytest.approx(float(np.min(d["mos"][measured] / 100)), **APPROX),
        "jitter_ms_p95": pytest.approx(p95(d["rx_jitter_us"][d["call_active"]] / 1000), **APPROX),
        "loss_pct": pytest.approx(100.0 * lost / (received + lost), **APPROX),
        "rtt_ms_p95": pytest.approx(p95(d["rtt_us"][d["call_active"] & (d["rtt_us"] > 0)] / 1000), **APPROX),
        "setup_ms_p95": pytest.approx(p95(d["setup_time_ms"][(d["calls_connected"] > 0) & (d["setup_time_ms"] > 0)]), **APPROX),
    }


def as_dict(summary: results_pb2.GroupSummary) -> dict:  # type: ignore[type-arg]
    fields = ("endpoints", "registered", "calls_attempted", "calls_connected", "calls_failed", "mos_avg", "mos_min",
              "jitter_ms_p95", "loss_pct", "rtt_ms_p95", "setup_ms_p95")
    return {**{f: getattr(summary, f) for f in fields}, "failures_by_code": dict(summary.failures_by_code)}
