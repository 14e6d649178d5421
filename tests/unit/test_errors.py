"""The error catalog on a real grpc.aio server: domain errors keep their status, bugs become INTERNAL."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from callmeter.common.errors import CallmeterError, ErrorCode, grpc_errors
from callmeter.common.grpc_server import GrpcServer
from callmeter.v1 import runs_pb2, runs_pb2_grpc


class Faulty(runs_pb2_grpc.RunServiceServicer):
    @grpc_errors
    async def GetRun(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        if request.run_id == "missing":
            raise CallmeterError(ErrorCode.NOT_FOUND, "no run 'missing'")
        raise ValueError("a bug, with a secret inside")

    @grpc_errors
    async def WatchRun(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        yield runs_pb2.RunProgress(run_id=request.run_id)
        raise CallmeterError(ErrorCode.PERMISSION_DENIED, "watching needs the viewer role")


async def call_all() -> list[tuple[grpc.StatusCode, str]]:
    server = GrpcServer(["callmeter.v1.RunService"])
    runs_pb2_grpc.add_RunServiceServicer_to_server(Faulty(), server.server)
    port = server.bind("127.0.0.1", 0, "CALLMETER_GRPC_PORT")
    await server.start()
    results = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = runs_pb2_grpc.RunServiceStub(channel)
            for run_id in ("missing", "boom"):
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await stub.GetRun(runs_pb2.GetRunRequest(run_id=run_id))
                results.append((error.value.code(), error.value.details()))
            stream = stub.WatchRun(runs_pb2.WatchRunRequest(run_id="r"))
            assert (await stream.read()).run_id == "r"
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stream.read()
            results.append((error.value.code(), error.value.details()))
    finally:
        await server.stop(0)
    return results


def test_statuses() -> None:
    assert asyncio.run(call_all()) == [
        (grpc.StatusCode.NOT_FOUND, "no run 'missing'"),
        (grpc.StatusCode.INTERNAL, "internal error"),  # nothing of the bug leaks to the caller
        (grpc.StatusCode.PERMISSION_DENIED, "watching needs the viewer role"),
    ]
