"""Every RPC of the common server measured: counted by status code, timed, in flight while open.

A real grpc.aio server built by ``GrpcServer`` (which installs the interceptor) and a real client
on loopback; the figures are read from the exposition text of the registry every service serves
on /metrics, as differences between two scrapes (other tests in this process count RPCs too).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from callmeter.common.errors import CallmeterError, ErrorCode, grpc_errors
from callmeter.common.grpc_server import GrpcServer
from callmeter.v1 import runs_pb2, runs_pb2_grpc, workers_pb2, workers_pb2_grpc

RUNS = "callmeter.v1.RunService"
GATEWAY = "callmeter.v1.GatewayService"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape() -> Samples:
    text = generate_latest(REGISTRY).decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def rpc(kind: str, service: str, method: str) -> dict[str, str]:
    return {"grpc_type": kind, "grpc_service": service, "grpc_method": method}


class Runs(runs_pb2_grpc.RunServiceServicer):
    @grpc_errors
    async def GetRun(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        if not request.run_id:
            raise CallmeterError(ErrorCode.INVALID_ARGUMENT, "run_id is required")
        return runs_pb2.Run(id=request.run_id)

    @grpc_errors
    async def WatchRun(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        yield runs_pb2.RunProgress(run_id=request.run_id)
        if request.run_id == "forever":
            await asyncio.Event().wait()  # until the caller goes away


class Echo(workers_pb2_grpc.GatewayServiceServicer):
    """A stream written with context.write, as the gateway's Connect is: an ack per message."""

    async def Connect(self, request_iterator, context):  # type: ignore[no-untyped-def]  # noqa: N802
        while await context.read() is not grpc.aio.EOF:
            await context.write(workers_pb2.GatewayMessage(heartbeat_ack=workers_pb2.HeartbeatAck()))


@asynccontextmanager
async def serving() -> AsyncIterator[grpc.aio.Channel]:
    server = GrpcServer([RUNS, GATEWAY])
    runs_pb2_grpc.add_RunServiceServicer_to_server(Runs(), server.server)
    workers_pb2_grpc.add_GatewayServiceServicer_to_server(Echo(), server.server)
    port = server.bind("127.0.0.1", 0, "CALLMETER_GRPC_PORT")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(0)


async def eventually(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.01)


def test_unary_rpcs_are_counted_by_code_and_timed_in_ms_buckets() -> None:
    async def scenario() -> tuple[Samples, Samples]:
        async with serving() as channel:
            stub = runs_pb2_grpc.RunServiceStub(channel)
            before = scrape()
            for run_id in ("r1", "r2"):
                assert (await stub.GetRun(runs_pb2.GetRunRequest(run_id=run_id))).id == run_id
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.GetRun(runs_pb2.GetRunRequest())
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            return before, scrape()

    before, after = asyncio.run(scenario())
    get_run = rpc("unary", RUNS, "GetRun")

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("grpc_server_handled_total", **get_run, grpc_code="OK") == 2
    assert delta("grpc_server_handled_total", **get_run, grpc_code="INVALID_ARGUMENT") == 1
    assert delta("grpc_server_handling_seconds_count", **get_run) == 3
    assert delta("grpc_server_handling_seconds_bucket", **get_run, le="10.0") == 3  # not in the streams' buckets
    assert value(after, "grpc_server_rpcs_in_flight", **get_run) == 0


def test_streams_are_in_flight_while_open_then_counted_with_how_they_ended() -> None:
    watch, connect = rpc("server_stream", RUNS, "WatchRun"), rpc("bidi_stream", GATEWAY, "Connect")

    async def scenario() -> None:
        async with serving() as channel:
            runs = runs_pb2_grpc.RunServiceStub(channel)
            before = scrape()

            def delta(name: str, **labels: str) -> float:
                return value(scrape(), name, **labels) - value(before, name, **labels)

            # A stream that yields, to its end.
            assert [p.run_id async for p in runs.WatchRun(runs_pb2.WatchRunRequest(run_id="r"))] == ["r"]
            assert delta("grpc_server_handled_total", **watch, grpc_code="OK") == 1

            # A stream written with context.write, like the gateway's: open, then closed by the client.
            call = workers_pb2_grpc.GatewayServiceStub(channel).Connect()
            await call.write(workers_pb2.WorkerMessage(heartbeat=workers_pb2.Heartbeat()))
            assert (await call.read()).WhichOneof("message") == "heartbeat_ack"
            assert delta("grpc_server_rpcs_in_flight", **connect) == 1
            assert delta("grpc_server_handled_total", **connect, grpc_code="OK") == 0
            await call.done_writing()
            assert await call.code() == grpc.StatusCode.OK
            assert delta("grpc_server_rpcs_in_flight", **connect) == 0
            assert delta("grpc_server_handled_total", **connect, grpc_code="OK") == 1
            assert delta("grpc_server_handling_seconds_count", **connect) == 1

            # A stream the caller walks away from.
            stream = runs.WatchRun(runs_pb2.WatchRunRequest(run_id="forever"))
            await stream.read()
            assert delta("grpc_server_rpcs_in_flight", **watch) == 1
            stream.cancel()
            await eventually(lambda: delta("grpc_server_handled_total", **watch, grpc_code="CANCELLED") == 1)
            assert delta("grpc_server_rpcs_in_flight", **watch) == 0
            assert delta("grpc_server_handling_seconds_count", **watch) == 2

    asyncio.run(scenario())


def test_a_method_nobody_registered_makes_no_series() -> None:
    async def scenario() -> grpc.StatusCode:
        async with serving() as channel:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await channel.unary_unary(f"/{RUNS}/NoSuchMethod")(b"")
            return error.value.code()

    assert asyncio.run(scenario()) == grpc.StatusCode.UNIMPLEMENTED
    assert not [key for key in scrape() if ("grpc_method", "NoSuchMethod") in key[1]]
