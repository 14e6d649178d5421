"""OrchestratorService: thin — each RPC runs a plain handler in a thread (SQLAlchemy is blocking)."""

from __future__ import annotations

import asyncio

import grpc

from callmeter.common.errors import grpc_errors
from callmeter.v1 import orchestrator_pb2, orchestrator_pb2_grpc, runs_pb2, workers_pb2
from services.orchestrator import runs, workers
from services.orchestrator.conductor import Conductor


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    def __init__(self, conductor: Conductor) -> None:
        self.conductor = conductor
        self.sessions = conductor.sessions

    @grpc_errors
    async def SubmitRun(self, request: orchestrator_pb2.SubmitRunRequest,  # noqa: N802
                        context: grpc.aio.ServicerContext) -> runs_pb2.Run:
        run = await asyncio.to_thread(runs.submit, self.sessions, request.run_id)
        self.conductor.wake.set()  # dispatch now rather than at the next tick
        if run.state == runs_pb2.RUN_STATE_DISPATCHING:
            await self.conductor.announce(run)
        return run

    @grpc_errors
    async def CancelRun(self, request: runs_pb2.CancelRunRequest,  # noqa: N802
                        context: grpc.aio.ServicerContext) -> runs_pb2.Run:
        run, cancels = await asyncio.to_thread(runs.cancel, self.sessions, request.run_id)
        for cancel in cancels:
            await self.conductor.send_cancel(cancel, "cancelled by a user")
        return run

    @grpc_errors
    async def AdmitWorker(self, request: orchestrator_pb2.AdmitWorkerRequest,  # noqa: N802
                          context: grpc.aio.ServicerContext) -> orchestrator_pb2.AdmitWorkerResponse:
        worker = await asyncio.to_thread(workers.admit_worker, self.sessions, request)
        return orchestrator_pb2.AdmitWorkerResponse(worker=worker)

    @grpc_errors
    async def ReportWorkerEvents(self, request: orchestrator_pb2.ReportWorkerEventsRequest,  # noqa: N802
                                 context: grpc.aio.ServicerContext) -> orchestrator_pb2.ReportWorkerEventsResponse:
        recorded = await asyncio.to_thread(workers.record_events, self.sessions, request)
        if any(event.WhichOneof("event") == "status" for event in request.events):
            self.conductor.wake.set()
        for worker_id, run_id in recorded.stray:
            await self.conductor.send_cancel(runs.Dispatch(run_id, worker_id, workers_pb2.Assignment(run_id=run_id)),
                                             "this part of the run has ended on the platform")
        return orchestrator_pb2.ReportWorkerEventsResponse(revoked_worker_ids=recorded.revoked)
