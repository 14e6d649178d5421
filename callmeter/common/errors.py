"""The error catalog.

Domain code raises ``CallmeterError(code, detail)``; ``ErrorCode`` maps each code to a gRPC
status; the servicer wrapper ``grpc_errors`` turns it into that status with the public detail,
and turns anything unexpected into INTERNAL after logging it.

    Exception
    └── CallmeterError          a domain error with a code from ErrorCode
        └── ConfigError         a bad setting; entry points print it and exit 2
"""

from __future__ import annotations

import enum
import functools
import inspect
from collections.abc import Callable
from typing import Any

import grpc
import structlog

log = structlog.get_logger(__name__)


class ErrorCode(enum.Enum):
    """Each domain error and the gRPC status it becomes."""

    INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
    NOT_FOUND = grpc.StatusCode.NOT_FOUND
    ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS
    UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
    PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
    FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
    RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
    UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
    CONFIG = grpc.StatusCode.FAILED_PRECONDITION
    INTERNAL = grpc.StatusCode.INTERNAL


class CallmeterError(Exception):
    """A domain error: ``detail`` is safe to show to the caller."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class ConfigError(CallmeterError):
    """A setting that cannot be used; ``setting`` is the environment variable that names it."""

    def __init__(self, setting: str, detail: str) -> None:
        super().__init__(ErrorCode.CONFIG, f"{setting}: {detail}" if setting else detail)
        self.setting = setting


async def abort_for(exc: Exception, context: grpc.aio.ServicerContext, method: str) -> None:
    """Ends the RPC with the status a raised exception maps to (re-raising an abort in progress)."""
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    if isinstance(exc, CallmeterError):
        await context.abort(exc.code.value, exc.detail)
    log.error("rpc_failed", method=method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


def grpc_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Wraps an async unary or server-streaming servicer method: CallmeterError → its status."""

    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for item in method(self, request, context):
                    yield item
            except Exception as exc:
                await abort_for(exc, context, method.__qualname__)

        return stream_wrapper

    @functools.wraps(method)
    async def unary_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except Exception as exc:
            await abort_for(exc, context, method.__qualname__)

    return unary_wrapper
