"""The API's clients of other services: the orchestrator (run lifecycle) and metrics-ingest (live
summaries), over the internal links (mutual TLS with the API's certificate, callmeter/common/tls.py)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from callmeter.common.channels import aio_channel
from callmeter.common.errors import CallmeterError, ErrorCode
from callmeter.common.grpc_server import TlsFiles
from callmeter.v1 import orchestrator_pb2, orchestrator_pb2_grpc, results_pb2, results_pb2_grpc, runs_pb2

_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def orchestrator_error(exc: grpc.aio.AioRpcError) -> CallmeterError:
    """UNAVAILABLE when the orchestrator cannot be reached in time; otherwise its own status and detail."""
    if exc.code() in _UNREACHABLE:
        return CallmeterError(ErrorCode.UNAVAILABLE, f"the orchestrator is unreachable: {exc.details()}")
    code = next((c for c in ErrorCode if c.value == exc.code()), ErrorCode.INTERNAL)
    return CallmeterError(code, f"orchestrator: {exc.details()}")


class Orchestrator:
    def __init__(self, address: str, timeout_s: float, tls: TlsFiles | None) -> None:
        self.channel = aio_channel(address, identity=tls)
        self.stub = orchestrator_pb2_grpc.OrchestratorServiceStub(self.channel)
        self.timeout_s = timeout_s

    async def submit_run(self, run_id: str) -> runs_pb2.Run:
        try:
            return await self.stub.SubmitRun(orchestrator_pb2.SubmitRunRequest(run_id=run_id), timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise orchestrator_error(exc) from None

    async def cancel_run(self, run_id: str) -> runs_pb2.Run:
        try:
            return await self.stub.CancelRun(runs_pb2.CancelRunRequest(run_id=run_id), timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise orchestrator_error(exc) from None

    async def close(self) -> None:
        await self.channel.close()


class Metrics:
    def __init__(self, address: str, timeout_s: float, tls: TlsFiles | None) -> None:
        self.channel = aio_channel(address, identity=tls)
        self.stub = results_pb2_grpc.MetricsQueryServiceStub(self.channel)
        self.timeout_s = timeout_s

    async def run_summary(self, run_id: str, groups: Sequence[str]) -> results_pb2.RunSummary:
        """Raises grpc.aio.AioRpcError when metrics-ingest cannot answer."""
        return await self.stub.GetRunSummary(results_pb2.RunSummaryRequest(run_id=run_id, groups=groups),
                                             timeout=self.timeout_s)

    async def close(self) -> None:
        await self.channel.close()
