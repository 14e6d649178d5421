"""Thin gRPC servicers: authenticate → run the plain handler in a thread → return."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from sqlalchemy.orm import Session, sessionmaker

from callmeter.common.errors import CallmeterError, grpc_errors
from callmeter.common.run_states import RUN_ENDED
from callmeter.v1 import runs_pb2_grpc, tenancy_pb2_grpc, tests_pb2_grpc, workers_pb2_grpc
from services.api import watch
from services.api.auth import Principal, bearer_token
from services.api.principals import PrincipalCache
from services.api.clients import Metrics, Orchestrator
from services.api.handlers import results, runs, tenancy, tests, workers
from services.api.settings import ApiSettings

R = TypeVar("R")


class Authenticated:
    """Runs a handler inside one transaction, as the principal the call's token names."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.principals = PrincipalCache(sessions)

    async def call(self, context: grpc.aio.ServicerContext,
                   handler: Callable[[Session, Principal, Any], R], request: Any) -> R:
        token = bearer_token(context.invocation_metadata() or ())

        def in_transaction() -> R:
            with self.sessions.begin() as session:
                return handler(session, self.principals.authenticate(session, token), request)

        return await asyncio.to_thread(in_transaction)

    async def transaction(self, fn: Callable[..., R], *args: Any) -> R:
        """``fn(session, *args)`` in one transaction with no caller: the follow-up of an authorized call."""

        def in_transaction() -> R:
            with self.sessions.begin() as session:
                return fn(session, *args)

        return await asyncio.to_thread(in_transaction)


def _rpc(handler: Callable[[Session, Principal, Any], Any]) -> Callable[..., Any]:
    """A unary servicer method that only authenticates and calls ``handler``."""

    async def method(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.auth.call(context, handler, request)

    method.__qualname__ = method.__name__ = handler.__name__  # logs of a failed RPC name the handler
    return grpc_errors(method)


class TenancyServicer(tenancy_pb2_grpc.TenancyServiceServicer):
    def __init__(self, auth: Authenticated) -> None:
        self.auth = auth

    CreateOrganization = _rpc(tenancy.create_organization)
    ListOrganizations = _rpc(tenancy.list_organizations)
    CreateProject = _rpc(tenancy.create_project)
    ListProjects = _rpc(tenancy.list_projects)
    CreateUser = _rpc(tenancy.create_user)
    ListUsers = _rpc(tenancy.list_users)
    GrantRole = _rpc(tenancy.grant_role)
    RevokeRole = _rpc(tenancy.revoke_role)
    CreateApiToken = _rpc(tenancy.create_api_token)
    ListApiTokens = _rpc(tenancy.list_api_tokens)
    RevokeApiToken = _rpc(tenancy.revoke_api_token)
    CreateWorkerToken = _rpc(tenancy.create_worker_token)
    ListWorkerTokens = _rpc(tenancy.list_worker_tokens)
    RevokeWorkerToken = _rpc(tenancy.revoke_worker_token)
    WhoAmI = _rpc(tenancy.who_am_i)


class WorkerServicer(workers_pb2_grpc.WorkerServiceServicer):
    def __init__(self, auth: Authenticated) -> None:
        self.auth = auth

    ListWorkers = _rpc(workers.list_workers)
    GetWorker = _rpc(workers.get_worker)


class TestServicer(tests_pb2_grpc.TestServiceServicer):
    def __init__(self, auth: Authenticated) -> None:
        self.auth = auth

    CreateTest = _rpc(tests.create_test)
    UpdateTest = _rpc(tests.update_test)
    GetTest = _rpc(tests.get_test)
    ListTests = _rpc(tests.list_tests)
    DeleteTest = _rpc(tests.delete_test)
    ValidateTest = _rpc(tests.validate_test)


class RunServicer(runs_pb2_grpc.RunServiceServicer):
    def __init__(self, auth: Authenticated, orchestrator: Orchestrator, metrics: Metrics,
                 settings: ApiSettings) -> None:
        self.auth = auth
        self.orchestrator = orchestrator
        self.metrics = metrics
        self.watch_interval_s = settings.watch_interval_s
        self.start_run = functools.partial(runs.start_run, default_timeout_s=settings.default_run_timeout_s)

    GetRun = _rpc(runs.get_run)
    ListRuns = _rpc(runs.list_runs)

    @grpc_errors
    async def StartRun(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        run = await self.auth.call(context, self.start_run, request)
        try:
            return await self.orchestrator.submit_run(run.id)
        except CallmeterError as error:
            await self.auth.transaction(runs.fail_unsubmitted_run, run.id, error.detail)
            raise

    @grpc_errors
    async def CancelRun(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        run = await self.auth.call(context, runs.cancel_target, request)
        if run.state in RUN_ENDED:
            return run
        return await self.orchestrator.cancel_run(run.id)

    @grpc_errors
    async def WatchRun(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        view = await self.auth.call(context, runs.watch_target, request)
        reload = functools.partial(self.auth.transaction, runs.run_view, view.run.id)
        async for message in watch.progress(view, reload, self.metrics, self.watch_interval_s):
            yield message

    # Results (services/api/handlers/results.py): authorize, then ask metrics-ingest.
    @grpc_errors
    async def GetRunSummary(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        view = await self.auth.call(context, results.results_target, request)
        return await results.summary(view, self.metrics)

    @grpc_errors
    async def GetRunCodes(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        view = await self.auth.call(context, results.results_target, request)
        return results.codes(view.run.id, await results.summary(view, self.metrics))

    @grpc_errors
    async def GetRunSeries(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        series = await self.auth.call(context, results.series_request, request)
        return await results.ask(self.metrics, self.metrics.stub.GetSeries, series)

    @grpc_errors
    async def GetWorstEndpoints(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        return await results.worst(self.metrics, await self.auth.call(context, results.worst_request, request))

    @grpc_errors
    async def GetTestTrend(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        trend = await self.auth.call(context, results.trend_request, request)
        return await results.ask(self.metrics, self.metrics.stub.GetTrend, trend)

    @grpc_errors
    async def ExportRunSamples(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        export = await self.auth.call(context, results.export_request, request)
        async for page in results.export(self.metrics, export):
            yield page
