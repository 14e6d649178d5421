"""MetricsQueryService over gRPC on a known random data set, checked against NumPy.

quantileExactInclusive interpolates like NumPy's default percentile, so percentiles are
compared to 1e-9, as are averages and sums. The data set is stored twice (a replay) and every
answer must be as if it were stored once. The summary comes from the rollups, series and top
endpoints from the raw rows.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from callmeter.v1 import results_pb2, results_pb2_grpc
from services.metrics.query_servicer import MetricsQueryServicer
from services.metrics.store import MetricsStore
from tests.metrics.helpers import APPROX, GROUPS, as_dict, dataset, expected_summary, run, store_dataset

pytestmark = pytest.mark.timeout(120)

RUN = "run-q"


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
        await store.call(store_dataset, RUN, data, "first")
        await store.call(store_dataset, RUN, data, "replayed")  # a replay with another token: stored again
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
