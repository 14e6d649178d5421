"""The gateway's event reporter never loses events when it stops in the middle of a report.

The fault needs a slow orchestrator, which the real one is not on demand: a gRPC server on
loopback whose ReportWorkerEvents takes 0.3 s, then records what it got. The reporter stops while
a report carrying the last disconnects is on its way; the events must still arrive.
"""

from __future__ import annotations

import asyncio

import grpc

from callmeter.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from services.gateway.reporter import EventReporter

REPLY_AFTER_S = 0.3


class SlowOrchestrator(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    def __init__(self) -> None:
        self.recorded: list[str] = []
        self.calls = 0

    async def ReportWorkerEvents(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        self.calls += 1
        await asyncio.sleep(REPLY_AFTER_S)  # a cancelled call stops here and records nothing
        self.recorded.extend(event.worker_id for event in request.events)
        return orchestrator_pb2.ReportWorkerEventsResponse()


def test_a_stop_during_a_report_still_delivers_its_events() -> None:
    async def scenario() -> tuple[list[str], int]:
        orchestrator = SlowOrchestrator()
        server = grpc.aio.server()
        orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(orchestrator, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            reporter = EventReporter(orchestrator_pb2_grpc.OrchestratorServiceStub(channel), "gw-1",
                                     interval_s=0.05, on_revoked=lambda _worker_id: None)
            reporter.start()
            reporter.add(orchestrator_pb2.WorkerEvent(worker_id="w1", disconnected="gateway shutting down"))
            calls_before = orchestrator.calls
            while orchestrator.calls == calls_before:  # the report with w1's disconnect is in flight
                await asyncio.sleep(0.005)
            await asyncio.wait_for(reporter.stop(), 5)
            return orchestrator.recorded, orchestrator.calls
        finally:
            await channel.close()
            await server.stop(None)

    recorded, calls = asyncio.run(scenario())
    assert recorded.count("w1") == 1, (recorded, calls)
