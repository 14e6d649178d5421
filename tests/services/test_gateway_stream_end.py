"""How the gateway logs the end of a worker's stream: a worker's own half-close as such, and a
stream gRPC cancels (the worker's cancel, a killed worker's reset connection, a keepalive timeout)
as a lost connection, never as "worker closed the stream"."""

from __future__ import annotations

import asyncio
import json
import os
import signal

from services.gateway.servicer import CONNECTION_LOST
from tests.procs import ServiceProcess, eventually
from tests.services.test_gateway import Plane, SimWorker, plane, start_worker, worker_ready  # noqa: F401


def disconnect_reasons(gateway: ServiceProcess) -> dict[str, str]:
    """worker_id → the reason the gateway logged when its stream ended."""
    lines = (json.loads(line) for line in gateway.log().splitlines() if line.startswith("{"))
    return {line["worker_id"]: line["reason"] for line in lines if line.get("event") == "worker_disconnected"}


def connected_ids(gateway: ServiceProcess) -> dict[str, str]:
    lines = (json.loads(line) for line in gateway.log().splitlines() if line.startswith("{"))
    return {line["name"]: line["worker_id"] for line in lines if line.get("event") == "worker_connected"}


def test_a_half_close_and_a_cancel_are_logged_apart(plane: Plane) -> None:
    gateway = plane.start_gateway()
    ca = plane.pki.ca_cert.read_bytes()

    async def scenario() -> tuple[str, str]:
        closing, cancelling = (SimWorker(gateway.address, ca, plane.token, name) for name in ("closing", "cancelling"))
        closed_id = (await closing.hello()).worker_id
        await closing.close()
        cancelled_id = (await cancelling.hello()).worker_id
        cancelling.call.cancel()
        await cancelling.close()
        return closed_id, cancelled_id

    closed_id, cancelled_id = asyncio.run(scenario())
    eventually(lambda: {closed_id, cancelled_id} <= set(disconnect_reasons(gateway)), message="both ends logged")
    reasons = disconnect_reasons(gateway)
    assert reasons[closed_id] == "worker closed the stream"
    assert reasons[cancelled_id] == CONNECTION_LOST


def test_a_killed_worker_is_a_lost_connection(plane: Plane) -> None:
    gateway = plane.start_gateway()
    worker = start_worker(plane, gateway, "killed")
    try:
        eventually(lambda: worker_ready(worker), message="worker connected")
        worker_id = connected_ids(gateway)["killed"]
        os.kill(worker.process.pid, signal.SIGKILL)
        eventually(lambda: worker_id in disconnect_reasons(gateway), message="the end logged")
        assert disconnect_reasons(gateway)[worker_id] == CONNECTION_LOST
    finally:
        worker.process.kill()
        worker.process.wait()
