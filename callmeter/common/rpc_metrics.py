"""Per-RPC metrics of every gRPC server: one grpc.aio interceptor, installed by ``GrpcServer``.

Named and labelled as go-grpc-prometheus names them, so that the dashboards operators have work:

    grpc_server_handled_total{grpc_type, grpc_service, grpc_method, grpc_code}  RPCs ended, by status
    grpc_server_handling_seconds{grpc_type, grpc_service, grpc_method}          start to end of each
    grpc_server_rpcs_in_flight{grpc_type, grpc_service, grpc_method}            RPCs open now

``grpc_type`` is unary, client_stream, server_stream or bidi_stream. A stream (a worker's link to
the gateway lasts hours, a watch as long as its run) is counted and timed when it ends, with its
code; while open it is in ``grpc_server_rpcs_in_flight``. Only registered methods get series: grpc
answers an unknown method UNIMPLEMENTED without a handler, so no caller can make up label values.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram

LABELS = ["grpc_type", "grpc_service", "grpc_method"]

# Milliseconds to seconds for unary RPCs, then the lives of streams: a minute to a day.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
           60, 600, 3600, 6 * 3600, 24 * 3600)

HANDLED = Counter("grpc_server_handled_total", "RPCs completed on the server, by status code", [*LABELS, "grpc_code"])
HANDLING_SECONDS = Histogram("grpc_server_handling_seconds",
                             "Time from the start of an RPC to its end (of a stream: its whole life)", LABELS,
                             buckets=BUCKETS)
IN_FLIGHT = Gauge("grpc_server_rpcs_in_flight", "RPCs started on the server and not ended yet", LABELS)

_FACTORIES = {
    "unary": grpc.unary_unary_rpc_method_handler,
    "client_stream": grpc.stream_unary_rpc_method_handler,
    "server_stream": grpc.unary_stream_rpc_method_handler,
    "bidi_stream": grpc.stream_stream_rpc_method_handler,
}


class RpcMetrics(grpc.aio.ServerInterceptor):
    """Wraps each registered method's handler in a measurement; the handler itself is unchanged."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        service, _, method = handler_call_details.method.lstrip("/").partition("/")
        kind = _rpc_type(handler)
        behavior = handler.unary_unary or handler.stream_unary or handler.unary_stream or handler.stream_stream
        return _FACTORIES[kind](_measured(behavior, (kind, service, method)),
                                request_deserializer=handler.request_deserializer,
                                response_serializer=handler.response_serializer)


def _rpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


def _measured(behavior: Callable[..., Any], labels: tuple[str, str, str]) -> Callable[..., Any]:
    """``behavior`` measured, of the same kind: grpc.aio tells an async generator (a stream that
    yields) from a coroutine (a unary RPC, or a stream written with ``context.write``) by it. (A
    plain function cannot be served here: our servers have no thread pool for one.)"""
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with _Measurement(labels, context):
                # Closed with this one when grpc closes it (the caller went away): its cleanup runs now.
                async with contextlib.aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        yield response

        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        with _Measurement(labels, context):
            return await behavior(request, context)

    return call


class _Measurement:
    """One RPC: in flight from enter to exit; then timed and counted with the code it ends with."""

    def __init__(self, labels: tuple[str, str, str], context: grpc.aio.ServicerContext) -> None:
        self.labels = labels
        self.context = context
        self.in_flight = IN_FLIGHT.labels(*labels)
        self.began = 0.0

    def __enter__(self) -> None:
        self.in_flight.inc()
        self.began = time.perf_counter()

    def __exit__(self, _type: object, error: BaseException | None, _traceback: object) -> None:
        HANDLING_SECONDS.labels(*self.labels).observe(time.perf_counter() - self.began)
        HANDLED.labels(*self.labels, status_code(self.context, error).name).inc()
        self.in_flight.dec()


def status_code(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    """The status an RPC ends with: what ``abort`` or ``set_code`` set, else OK when the handler
    returned and UNKNOWN when it raised (as grpc answers). A handler cancelled, or a stream closed
    under it, is CANCELLED: the caller went away, the server stopped, or a deadline passed (the
    caller's own timer fires before the server's and cancels, so the two cannot be told apart)."""
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if code is not None:
        return code
    return grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN
