"""The same life for every service process: settings → build → serve → SIGTERM → drain → exit 0.

An entry point calls ``run_service(spec, SettingsClass)``. The spec's ``build`` registers the
servicers on the shared gRPC server and returns a ``Component`` whose ``start``/``stop`` own the
service's background work (NATS consumers, heartbeats, stores). On SIGTERM or SIGINT: health
NOT_SERVING → ``component.drain(grace)`` if it has one (the gateway says goodbye to its streams)
→ ``server.stop(rest of grace)`` → ``component.stop()`` → exit 0. A second signal exits 130
at once. A ``ConfigError`` anywhere before serving prints one line naming the setting, exit 2.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Protocol, TypeVar, runtime_checkable

import prometheus_client
import structlog

from callmeter import __version__
from callmeter.common.errors import ConfigError
from callmeter.common.exit_codes import ExitCode
from callmeter.common.grpc_server import GrpcServer, TlsFiles
from callmeter.common.logging import configure_logging
from callmeter.common.settings import CommonSettings, ProcessSettings, describe, env_name, load_settings

log = structlog.get_logger(__name__)

S = TypeVar("S", bound=CommonSettings)
P = TypeVar("P", bound=ProcessSettings)


class Component(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@runtime_checkable
class Draining(Protocol):
    """A Component with work to end while its RPCs are still open (streams to say goodbye to)."""

    async def drain(self, grace_s: float) -> None: ...


class NoBackgroundWork:
    """The Component of a service whose work is all in its RPCs."""

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


@dataclass(frozen=True)
class ServiceSpec(Generic[S]):
    #: Short name: api, orchestrator, gateway, metrics.
    name: str
    #: Full names of the gRPC services it serves, for health and reflection.
    grpc_services: list[str]
    #: Registers servicers on the server; returns the background work.
    build: Callable[[S, GrpcServer], Awaitable[Component]]
    #: The server's TLS files, if it serves TLS.
    tls: Callable[[S], TlsFiles | None] = field(default=lambda _settings: None)


def print_config_error(error: ConfigError) -> None:
    print(f"callmeter: error: {error.detail}", file=sys.stderr)


def run_service(spec: ServiceSpec[S], settings_cls: type[S]) -> int:
    """Entry point body of a service subcommand; returns the exit code."""
    return run_process(spec.name, settings_cls, lambda settings: _serve(spec, settings))


def run_process(name: str, settings_cls: type[P], body: Callable[[P], Awaitable[None]]) -> int:
    """Loads settings, sets up logs, runs ``body`` under asyncio; a ConfigError exits 2."""
    try:
        settings = load_settings(settings_cls)
    except ConfigError as error:
        print_config_error(error)
        return ExitCode.ERROR
    configure_logging(name, settings.log_level, settings.log_format)
    # Off, in every process (all go through here): a `_created` series beside each counter and
    # histogram child doubles what Prometheus stores, for a creation time no dashboard reads.
    prometheus_client.disable_created_metrics()
    log.info("starting", version=__version__, settings=describe(settings))
    try:
        asyncio.run(body(settings))
    except ConfigError as error:
        print_config_error(error)
        return ExitCode.ERROR
    return ExitCode.OK


async def _serve(spec: ServiceSpec[S], settings: S) -> None:
    stop = install_signal_handlers()
    server = GrpcServer(spec.grpc_services)
    component = await spec.build(settings, server)
    metrics_server = None
    try:
        port = server.bind(settings.grpc_host, settings.grpc_port, env_name(type(settings), "grpc_port"), spec.tls(settings))
        metrics_server, prometheus_port = start_prometheus(settings.prometheus_host, settings.prometheus_port,
                                                           env_name(type(settings), "prometheus_port"))
        await component.start()
        await server.start()
        write_ready_file(settings.ready_file, grpc_port=port, prometheus_port=prometheus_port)
        log.info("serving", grpc_port=port, prometheus_port=prometheus_port)
        await stop.wait()
        log.info("draining", grace_s=settings.shutdown_grace_s)
        began = time.monotonic()
        await server.set_serving(False)
        if isinstance(component, Draining):
            await component.drain(settings.shutdown_grace_s)
        await server.stop(max(0.0, settings.shutdown_grace_s - (time.monotonic() - began)))
    finally:
        await component.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
    log.info("stopped")


def install_signal_handlers() -> asyncio.Event:
    """The first SIGTERM/SIGINT sets the returned event; a second one exits at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second_signal_exit_now", signal=signal.Signals(signum).name)
            os._exit(ExitCode.INTERRUPTED)
        log.info("signal", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    return stop


def start_prometheus(host: str, port: int, setting: str):  # type: ignore[no-untyped-def]
    """Serves /metrics from the default registry; returns (server, bound port)."""
    try:
        httpd, _thread = prometheus_client.start_http_server(port, addr=host)
    except OSError as exc:
        raise ConfigError(setting, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return httpd, int(httpd.server_port)


def write_ready_file(path: Path | None, **ports: int) -> None:
    """Atomically writes the bound ports so that a parent (``up``, tests) can find them."""
    if path is None:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), **ports}))
    tmp.replace(path)
