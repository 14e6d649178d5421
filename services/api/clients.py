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


def upstream_error(exc: grpc.aio.AioRpcError, service: str, unreachable: str,
                   field_errors: bool = False) -> CallmeterError:
    """UNAVAILABLE ("``unreachable``: …") when the service does not answer in time; with
    ``field_errors`` its INVALID_ARGUMENT as it is (it names the caller's field); anything else with
    its status, said to come from ``service``."""
    if exc.code() in _UNREACHABLE:
        return CallmeterError(ErrorCode.UNAVAILABLE, f"{unreachable}: {exc.details()}")
    if field_errors and exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
        return CallmeterError(ErrorCode.INVALID_ARGUMENT, exc.details() or "invalid request")
    code = next((c for c in ErrorCode if c.value == exc.code()), ErrorCode.INTERNAL)
    return CallmeterError(code, f"{service}: {exc.details()}")


def orchestrator_error(exc: grpc.aio.AioRpcError) -> CallmeterError:
    return upstream_error(exc, "orchestrator", "the orchestrator is unreachable")


def metrics_error(exc: grpc.aio.AioRpcError) -> CallmeterError:
    return upstream_error(exc, "metrics-ingest", "metrics-ingest is unavailable", field_errors=True)


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
