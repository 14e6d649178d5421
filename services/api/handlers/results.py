"""The results of runs (RunService's Get…/Export… RPCs), read from metrics-ingest.

Each RPC goes in two steps, as WatchRun does: a plain handler authorizes the caller (a viewer of
the run's project, or of the test's for a trend) and checks the request inside one transaction,
returning the question for metrics-ingest; the servicer then asks it (``ask``, ``summary``,
``export``), out of the transaction. The metrics are named as in metrics-ingest's requests, so
its INVALID_ARGUMENT (an unknown metric or aggregate, a bad step or limit) names the caller's field.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from sqlalchemy.orm import Session

from callmeter.catalog import LOW_IS_WORSE
from callmeter.common.errors import CallmeterError, ErrorCode
from callmeter.v1 import results_pb2, runs_pb2
from services.api.auth import VIEWER, Principal
from services.api.clients import Metrics, metrics_error
from services.api.handlers.runs import RunView, _run, run_view
from services.api.handlers.tests import _test

T = TypeVar("T")

READING = "reading a run's results"
#: Endpoint-seconds per page of an export (a page is about 100 bytes per endpoint-second).
EXPORT_PAGE = 2000


def results_target(session: Session, principal: Principal, request: Any) -> RunView:
    """GetRunSummary, GetRunCodes: the run (``request.run_id``) as WatchRun sees it."""
    _run(session, principal, request.run_id, VIEWER, READING)
    return run_view(session, request.run_id)


def series_request(session: Session, principal: Principal,
                   request: runs_pb2.GetRunSeriesRequest) -> results_pb2.SeriesRequest:
    view = results_target(session, principal, request)
    if request.group and request.group not in view.groups:
        raise _invalid("group", f"the run's test has no group {request.group!r} (it has {', '.join(view.groups)})")
    if request.HasField("endpoint") and request.endpoint < 0:
        raise _invalid("endpoint", f"an endpoint index is 0 or more (got {request.endpoint}); leave it out for "
                                   "every endpoint")
    return results_pb2.SeriesRequest(run_id=request.run_id, metric=request.metric, group=request.group,
                                     endpoint=request.endpoint if request.HasField("endpoint") else -1,
                                     step_s=request.step_s, aggregate=request.aggregate)


def worst_request(session: Session, principal: Principal,
                  request: runs_pb2.GetWorstEndpointsRequest) -> results_pb2.TopEndpointsRequest:
    _run(session, principal, request.run_id, VIEWER, READING)
    return results_pb2.TopEndpointsRequest(run_id=request.run_id, metric=request.metric,
                                           ascending=request.metric in LOW_IS_WORSE, limit=request.limit)


def trend_request(session: Session, principal: Principal, request: results_pb2.TrendRequest) -> results_pb2.TrendRequest:
    _test(session, principal, request.test_id, VIEWER, "reading a test's trend")
    return request


def export_request(session: Session, principal: Principal,
                   request: runs_pb2.ExportRunSamplesRequest) -> results_pb2.ExportSamplesRequest:
    _run(session, principal, request.run_id, VIEWER, READING)
    return results_pb2.ExportSamplesRequest(run_id=request.run_id, page_size=EXPORT_PAGE)


def _invalid(field: str, detail: str) -> CallmeterError:
    return CallmeterError(ErrorCode.INVALID_ARGUMENT, f"{field}: {detail}")


async def _answer(call: Awaitable[T]) -> T:
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        raise metrics_error(exc) from None


async def ask(metrics: Metrics, rpc: Callable[..., Awaitable[T]], request: Any) -> T:
    """A unary MetricsQueryService call (``metrics.stub.GetSeries``, …) within the API's call timeout."""
    return await _answer(rpc(request, timeout=metrics.timeout_s))


async def summary(view: RunView, metrics: Metrics) -> results_pb2.RunSummary:
    """The summary the orchestrator stored when it judged the run; until then a live one."""
    if view.summary is not None:
        return view.summary
    return await _answer(metrics.run_summary(view.run.id, view.groups))


async def worst(metrics: Metrics, request: results_pb2.TopEndpointsRequest) -> runs_pb2.WorstEndpoints:
    reply = await ask(metrics, metrics.stub.GetTopEndpoints, request)
    return runs_pb2.WorstEndpoints(lowest_first=request.ascending, endpoints=reply.endpoints)


def codes(run_id: str, of: results_pb2.RunSummary) -> runs_pb2.RunCodes:
    def group_codes(group: results_pb2.GroupSummary) -> runs_pb2.GroupCodes:
        return runs_pb2.GroupCodes(group=group.group, outcomes=group.outcomes, calls_attempted=group.calls_attempted,
                                   calls_failed=group.calls_failed, failures_by_code=group.failures_by_code)

    return runs_pb2.RunCodes(run_id=run_id, total=group_codes(of.total), groups=[group_codes(g) for g in of.groups])


async def export(metrics: Metrics, request: results_pb2.ExportSamplesRequest) -> AsyncIterator[results_pb2.SamplesPage]:
    """metrics-ingest's pages as they come (no deadline: a run's export takes as long as it takes;
    the caller going away cancels it)."""
    call = metrics.stub.ExportSamples(request)
    try:
        async for page in call:
            yield page
    except grpc.aio.AioRpcError as exc:
        raise metrics_error(exc) from None
    finally:
        call.cancel()
