"""MetricsQueryService over gRPC on a known random data set, checked against NumPy.

quantileExactInclusive interpolates like NumPy's default percentile, so percentiles are
compared to 1e-9, as are averages and sums. The data set is stored twice (a replay) and every
answer must be as if it were stored once.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from callmeter.v1 import results_pb2, results_pb2_grpc
from services.metrics.batches import RowBuffer
from services.metrics.query_servicer import MetricsQueryServicer
from services.metrics.store import MetricsStore, insert_samples
from tests.metrics.helpers import BASE_SECOND, run

pytestmark = pytest.mark.timeout(120)

GROUPS = {"callers": 4, "callees": 3}
SECONDS = 60
RUN = "run-q"
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


def store_dataset(client, data: dict[str, np.ndarray], token: str) -> None:  # type: ignore[no-untyped-def]
    """Through the ingest path: one MetricBatch per group and second, a RowBuffer, one insert."""
    buffer = RowBuffer()
    metric_names = [k for k in data if k not in ("group", "endpoint", "second")]
    for group in GROUPS:
        for second in range(BASE_SECOND, BASE_SECOND + SECONDS):
            batch = results_pb2.MetricBatch(run_id=RUN, worker_id="w1", sequence=second)
            for i in np.flatnonzero((data["group"] == group) & (data["second"] == second)):
                sample = batch.samples.add(group=group, endpoint=int(data["endpoint"][i]), second=second)
                for name in metric_names:
                    setattr(sample.metrics, name, data[name][i].item())
            buffer.add(batch)
    insert_samples(client, buffer.columns, token)


def p95(values: np.ndarray) -> float:
    return float(np.percentile(values, 95)) if len(values) else 0.0


def expected_summary(data: dict[str, np.ndarray], rows: np.ndarray) -> dict:  # type: ignore[type-arg]
    d = {k: v[rows] for k, v in data.items()}
    keys = list(zip(d["group"], d["endpoint"], strict=True))
    last = {}
    for i in np.argsort(d["second"], kind="stable"):
        last[keys[i]] = d["registered"][i]
    measured = d["call_active"] & (d["mos"] > 0)
    failed = d["calls_failed"] > 0
    codes = np.where(d["call_last_code"] >= 300, d["call_last_code"], 0)
    lost, received = d["rx_lost"].sum(), d["rx_packets"].sum()
    return {
        "endpoints": len(set(keys)),
        "registered": sum(bool(v) for v in last.values()),
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


NUMPY_AGGREGATES = {"avg": np.mean, "min": np.min, "max": np.max, "sum": np.sum,
                    "p50": lambda v: np.percentile(v, 50), "p95": lambda v: np.percentile(v, 95),
                    "p99": lambda v: np.percentile(v, 99)}


def expected_series(values: np.ndarray, seconds: np.ndarray, step: int, aggregate: str) -> list[tuple[int, float]]:
    buckets = seconds // step * step
    return [(int(b), pytest.approx(float(NUMPY_AGGREGATES[aggregate](values[buckets == b])), **APPROX))
            for b in np.unique(buckets)]


def test_queries_match_numpy_on_a_known_data_set_stored_twice(tmp_path: Path) -> None:
    data = dataset()
    everything = np.ones(len(data["group"]), dtype=bool)

    async def body() -> None:
        store = MetricsStore(f"chdb://{tmp_path / 'metrics'}", ttl_days=30)
        await store.open()
        await store.call(store_dataset, data, "first")
        await store.call(store_dataset, data, "replayed")  # a replay with another token: stored again
        server = grpc.aio.server()
        results_pb2_grpc.add_MetricsQueryServiceServicer_to_server(MetricsQueryServicer(store), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await check_queries(results_pb2_grpc.MetricsQueryServiceStub(channel), data, everything)
                await check_bad_requests(results_pb2_grpc.MetricsQueryServiceStub(channel))
        finally:
            await server.stop(0)
            await store.close()

    run(body())


async def check_queries(stub, data: dict[str, np.ndarray], everything: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    summary = await stub.GetRunSummary(results_pb2.RunSummaryRequest(run_id=RUN, groups=["callees", "silent"]))
    assert as_dict(summary.total) == expected_summary(data, everything)
    assert [g.group for g in summary.groups] == ["callees", "silent", "callers"]
    for g in summary.groups:
        if g.group == "silent":
            assert g == results_pb2.GroupSummary(group="silent")
        else:
            assert as_dict(g) == expected_summary(data, data["group"] == g.group), g.group

    callers = data["group"] == "callers"
    for aggregate in NUMPY_AGGREGATES:
        reply = await stub.GetSeries(results_pb2.SeriesRequest(run_id=RUN, metric="rx_jitter_us", group="callers",
                                                               endpoint=-1, step_s=10, aggregate=aggregate))
        assert [(p.second, p.value) for p in reply.points] == expected_series(
            data["rx_jitter_us"][callers] / 1000, data["second"][callers], 10, aggregate), aggregate
    one = callers & (data["endpoint"] == 2)
    reply = await stub.GetSeries(results_pb2.SeriesRequest(run_id=RUN, metric="mos", group="callers", endpoint=2))
    assert [(p.second, p.value) for p in reply.points] == expected_series(data["mos"][one] / 100, data["second"][one], 1, "avg")
    reply = await stub.GetSeries(results_pb2.SeriesRequest(run_id=RUN, metric="calls_failed", endpoint=-1,
                                                           step_s=3600, aggregate="sum"))
    assert sum(p.value for p in reply.points) == data["calls_failed"].sum()

    expected_mos = []
    for group, count in GROUPS.items():
        for endpoint in range(count):
            rows = (data["group"] == group) & (data["endpoint"] == endpoint)
            measured = rows & data["call_active"] & (data["mos"] > 0)
            expected_mos.append((float(np.mean(data["mos"][measured if measured.any() else rows] / 100)), group, endpoint))
    expected_mos.sort()
    reply = await stub.GetTopEndpoints(results_pb2.TopEndpointsRequest(run_id=RUN, metric="mos", ascending=True, limit=3))
    assert [(e.group, e.endpoint, e.value) for e in reply.endpoints] == [
        (g, e, pytest.approx(v, **APPROX)) for v, g, e in expected_mos[:3]]
    reply = await stub.GetTopEndpoints(results_pb2.TopEndpointsRequest(run_id=RUN, metric="rx_lost"))
    assert len(reply.endpoints) == 7
    sums = sorted(((-int(data["rx_lost"][(data["group"] == g) & (data["endpoint"] == e)].sum()), g, e)
                   for g, n in GROUPS.items() for e in range(n)))
    assert [(e.group, e.endpoint, e.value) for e in reply.endpoints] == [(g, e, -v) for v, g, e in sums]


async def check_bad_requests(stub) -> None:  # type: ignore[no-untyped-def]
    bad = [
        stub.GetRunSummary(results_pb2.RunSummaryRequest()),
        stub.GetSeries(results_pb2.SeriesRequest(run_id=RUN, metric="nope", endpoint=-1)),
        stub.GetSeries(results_pb2.SeriesRequest(run_id=RUN, metric="mos", endpoint=-1, aggregate="median")),
        stub.GetSeries(results_pb2.SeriesRequest(run_id=RUN, metric="mos", endpoint=3)),
        stub.GetSeries(results_pb2.SeriesRequest(run_id=RUN, metric="mos", endpoint=-1, step_s=-5)),
        stub.GetTopEndpoints(results_pb2.TopEndpointsRequest(run_id=RUN, metric="mos", limit=-1)),
        stub.GetTrend(results_pb2.TrendRequest(test_id="t", metric="mos")),
        stub.GetTrend(results_pb2.TrendRequest(metric="mos_avg")),
    ]
    for call, field in zip(bad, ["run_id", "metric", "aggregate", "endpoint", "step_s", "limit", "metric", "test_id"],
                           strict=True):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.details().startswith(f"{field}:"), error.value.details()
