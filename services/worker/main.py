"""`callmeter worker`: the worker supervisor process.

It has no gRPC server and opens no port beyond its local health endpoint: it dials out to the
gateway and holds one stream. SIGTERM: goodbye to the gateway, close the stream, exit 0.
"""

from __future__ import annotations

import asyncio

import structlog

from callmeter.common.errors import ConfigError
from callmeter.common.service import install_signal_handlers, run_process, write_ready_file
from callmeter.v1 import workers_pb2
from services.worker.health import WorkerStatus, start_health_server
from services.worker.link import GatewayLink
from services.worker.settings import WorkerSettings

log = structlog.get_logger(__name__)

SETTINGS = WorkerSettings
# How long the gateway gets to close the stream after our goodbye.
STOP_TIMEOUT_S = 5.0


async def _run(settings: WorkerSettings) -> None:
    status = WorkerStatus(gateway=settings.gateway_address)
    health = start_health_server(status, settings.health_host, settings.health_port)
    try:
        if settings.ca_file is not None and not settings.ca_file.is_file():
            raise ConfigError("CALLMETER_CA_FILE", f"cannot read {settings.ca_file}")
        link = GatewayLink(settings, status, workers_pb2.WorkerCapacity())
        stop = install_signal_handlers()
        write_ready_file(settings.ready_file, health_port=health.server_address[1])
        runner = asyncio.create_task(link.run())
        await stop.wait()
        await link.stop("worker stopping")
        try:
            await asyncio.wait_for(runner, STOP_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.warning("gateway_did_not_close_stream", after_s=STOP_TIMEOUT_S)
    finally:
        health.shutdown()
        health.server_close()
    log.info("stopped")


def main() -> int:
    return run_process("worker", WorkerSettings, _run)
