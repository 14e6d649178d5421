"""Thin gRPC servicers: authenticate → run the plain handler in a thread → return."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from sqlalchemy.orm import Session, sessionmaker

from callmeter.common.errors import grpc_errors
from callmeter.v1 import tenancy_pb2_grpc, workers_pb2_grpc
from services.api import handlers
from services.api.auth import Principal, authenticate, bearer_token

R = TypeVar("R")


class Authenticated:
    """Runs a handler inside one transaction, as the principal the call's token names."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    async def call(self, context: grpc.aio.ServicerContext,
                   handler: Callable[[Session, Principal, Any], R], request: Any) -> R:
        token = bearer_token(context.invocation_metadata() or ())

        def in_transaction() -> R:
            with self.sessions.begin() as session:
                return handler(session, authenticate(session, token), request)

        return await asyncio.to_thread(in_transaction)


class TenancyServicer(tenancy_pb2_grpc.TenancyServiceServicer):
    def __init__(self, auth: Authenticated) -> None:
        self.auth = auth

    @grpc_errors
    async def WhoAmI(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        return await self.auth.call(context, handlers.who_am_i, request)


class WorkerServicer(workers_pb2_grpc.WorkerServiceServicer):
    def __init__(self, auth: Authenticated) -> None:
        self.auth = auth

    @grpc_errors
    async def ListWorkers(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        return await self.auth.call(context, handlers.list_workers, request)

    @grpc_errors
    async def GetWorker(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        return await self.auth.call(context, handlers.get_worker, request)
