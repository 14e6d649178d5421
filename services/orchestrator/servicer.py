"""OrchestratorService: thin — each RPC runs a plain handler in a thread (SQLAlchemy is blocking)."""

from __future__ import annotations

import asyncio

import grpc
from sqlalchemy.orm import Session, sessionmaker

from callmeter.common.errors import grpc_errors
from callmeter.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from services.orchestrator import workers


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    @grpc_errors
    async def AdmitWorker(self, request: orchestrator_pb2.AdmitWorkerRequest,  # noqa: N802
                          context: grpc.aio.ServicerContext) -> orchestrator_pb2.AdmitWorkerResponse:
        worker = await asyncio.to_thread(workers.admit_worker, self.sessions, request)
        return orchestrator_pb2.AdmitWorkerResponse(worker=worker)

    @grpc_errors
    async def ReportWorkerEvents(self, request: orchestrator_pb2.ReportWorkerEventsRequest,  # noqa: N802
                                 context: grpc.aio.ServicerContext) -> orchestrator_pb2.ReportWorkerEventsResponse:
        revoked = await asyncio.to_thread(workers.record_events, self.sessions, request)
        return orchestrator_pb2.ReportWorkerEventsResponse(revoked_worker_ids=revoked)
