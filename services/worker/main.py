"""`callmeter worker`: the worker supervisor process.

It has no gRPC server and opens no port beyond its local health endpoint: it dials out to the
gateway and holds one stream. SIGTERM: stop the runs (final statuses and samples are sent),
wait briefly for the gateway's acks, say goodbye, close the stream, exit 0.

`callmeter worker --local FILE.yaml` runs one test file without the gateway instead: local.py.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from callmeter.common.errors import ConfigError
from callmeter.common.service import install_signal_handlers, run_process, write_ready_file
from callmeter.v1 import workers_pb2
from services.worker.engines import probe_engine
from services.worker.health import WorkerStatus, start_health_server
from services.worker.link import GatewayLink
from services.worker.settings import WorkerSettings
from services.worker.supervisor import Supervisor, capacity_from, capacity_text

log = structlog.get_logger(__name__)

SETTINGS = WorkerSettings
# How long the gateway gets to ack the last batches and to close the stream after our goodbye.
STOP_TIMEOUT_S = 5.0


async def _flush_periodically(supervisor: Supervisor, status: WorkerStatus, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        supervisor.flush()
        with status.lock:
            status.running_endpoints = supervisor.running_endpoints
            status.dropped_samples = supervisor.uplink.dropped_samples
            if status.connected:  # the heartbeat tells the platform whether we run anything
                status.state = workers_pb2.WORKER_STATE_BUSY if supervisor.executions else workers_pb2.WORKER_STATE_ONLINE


async def _run(settings: WorkerSettings) -> None:
    status = WorkerStatus(gateway=settings.gateway_address)
    health = start_health_server(status, settings.health_host, settings.health_port)
    try:
        if settings.ca_file is not None and not settings.ca_file.is_file():
            raise ConfigError("CALLMETER_CA_FILE", f"cannot read {settings.ca_file}")
        stop = install_signal_handlers()
        capacity = capacity_from(await probe_engine(), settings)
        log.info("capacity", offers=capacity_text(capacity, settings), max_endpoints=capacity.max_endpoints,
                 codecs=list(capacity.codecs), engine_max_calls=capacity.engine_max_calls,
                 engine_max_accounts=capacity.engine_max_accounts)
        link: GatewayLink
        supervisor = Supervisor(settings, capacity, send=lambda message: link.send(message))
        link = GatewayLink(settings, status, capacity, on_message=supervisor.handle,
                           on_connected=supervisor.on_connected)
        write_ready_file(settings.ready_file, health_port=health.server_address[1])
        runner = asyncio.create_task(link.run())
        flusher = asyncio.create_task(_flush_periodically(supervisor, status, settings.flush_interval_s))
        await stop.wait()
        await supervisor.stop("worker stopping")
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while supervisor.uplink.unacked and status.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        flusher.cancel()
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
