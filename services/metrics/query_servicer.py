"""MetricsQueryService: checks the request, runs the query on the store thread."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from clickhouse_connect.driver.exceptions import OperationalError

from callmeter.catalog import BY_NAME, Metric
from callmeter.common.errors import CallmeterError, ErrorCode, grpc_errors
from callmeter.v1 import results_pb2, results_pb2_grpc
from services.metrics import queries
from services.metrics.store import MetricsStore

T = TypeVar("T")

DEFAULT_TOP = 10
MAX_TOP = 1000
DEFAULT_TREND_RUNS = 20
MAX_TREND_RUNS = 500
MAX_STEP_S = 86400
DEFAULT_PAGE = 1000
MAX_PAGE = 10000


def invalid(field: str, detail: str) -> CallmeterError:
    return CallmeterError(ErrorCode.INVALID_ARGUMENT, f"{field}: {detail}")


def require_run_id(run_id: str) -> str:
    if not run_id:
        raise invalid("run_id", "required")
    return run_id


def catalog_metric(name: str) -> Metric:
    metric = BY_NAME.get(name)
    if metric is None:
        raise invalid("metric", f"unknown metric {name!r}; see docs/metrics.md for the catalog")
    return metric


def bounded_limit(limit: int, default: int, maximum: int, field: str = "limit") -> int:
    if limit < 0:
        raise invalid(field, f"must not be negative (got {limit})")
    return min(limit or default, maximum)


class MetricsQueryServicer(results_pb2_grpc.MetricsQueryServiceServicer):
    def __init__(self, store: MetricsStore) -> None:
        self.store = store

    async def _query(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await self.store.call(fn, *args)
        except OperationalError as exc:  # the ClickHouse server cannot be reached
            raise CallmeterError(ErrorCode.UNAVAILABLE, "metrics store unavailable") from exc

    @grpc_errors
    async def GetRunSummary(self, request: results_pb2.RunSummaryRequest,
                            context: grpc.aio.ServicerContext) -> results_pb2.RunSummary:
        return await self._query(queries.run_summary, require_run_id(request.run_id), list(request.groups),
                                 dict(request.planned) or None, list(request.calls))

    @grpc_errors
    async def GetSeries(self, request: results_pb2.SeriesRequest,
                        context: grpc.aio.ServicerContext) -> results_pb2.SeriesResponse:
        run_id = require_run_id(request.run_id)
        metric = catalog_metric(request.metric)
        aggregate = request.aggregate or "avg"
        if aggregate not in queries.AGGREGATES:
            raise invalid("aggregate", f"unknown aggregate {aggregate!r}; use one of {', '.join(queries.AGGREGATES)}")
        if not 0 <= request.step_s <= MAX_STEP_S:
            raise invalid("step_s", f"must be 0 to {MAX_STEP_S} (got {request.step_s})")
        if request.endpoint < -1:
            raise invalid("endpoint", f"must be -1 (all) or an endpoint index (got {request.endpoint})")
        if request.endpoint >= 0 and not request.group:
            raise invalid("endpoint", "an endpoint index needs its group")
        points = await self._query(queries.series, run_id, metric, aggregate, request.step_s or 1, request.group,
                                   request.endpoint)
        return results_pb2.SeriesResponse(points=points)

    @grpc_errors
    async def GetTopEndpoints(self, request: results_pb2.TopEndpointsRequest,
                              context: grpc.aio.ServicerContext) -> results_pb2.TopEndpointsResponse:
        run_id = require_run_id(request.run_id)
        metric = catalog_metric(request.metric)
        limit = bounded_limit(request.limit, DEFAULT_TOP, MAX_TOP)
        endpoints = await self._query(queries.top_endpoints, run_id, metric, request.ascending, limit)
        return results_pb2.TopEndpointsResponse(endpoints=endpoints)

    @grpc_errors
    async def GetTrend(self, request: results_pb2.TrendRequest,
                       context: grpc.aio.ServicerContext) -> results_pb2.TrendResponse:
        if not request.test_id:
            raise invalid("test_id", "required")
        if request.metric not in queries.TREND_FIELDS:
            raise invalid("metric", f"unknown summary field {request.metric!r}; use one of {', '.join(queries.TREND_FIELDS)}")
        limit = bounded_limit(request.limit, DEFAULT_TREND_RUNS, MAX_TREND_RUNS)
        points = await self._query(queries.trend, request.test_id, request.metric, limit)
        return results_pb2.TrendResponse(points=points)

    @grpc_errors
    async def ExportSamples(self, request: results_pb2.ExportSamplesRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[results_pb2.SamplesPage]:
        run_id = require_run_id(request.run_id)
        page_size = bounded_limit(request.page_size, DEFAULT_PAGE, MAX_PAGE, "page_size")
        after = None
        while True:  # a query per page: other queries take their turn on the store thread between pages
            samples = await self._query(queries.samples_page, run_id, after, page_size)
            if samples:
                yield results_pb2.SamplesPage(samples=samples)
            if len(samples) < page_size:
                return
            after = samples[-1]
