"""`callmeter orchestrator`: the orchestrator service process."""

from __future__ import annotations

import asyncio

import grpc
import structlog
from nats.aio.client import Client
from prometheus_client import REGISTRY
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from callmeter.common.channels import aio_channel
from callmeter.common.grpc_server import GrpcServer
from callmeter.common.service import Component, ServiceSpec, run_service
from callmeter.common.stores.database import create_database_engine
from callmeter.common.stores.nats import connect_nats
from callmeter.state.migrate import ensure_schema
from callmeter.v1 import orchestrator_pb2, orchestrator_pb2_grpc, results_pb2_grpc
from services.orchestrator import workers
from services.orchestrator.conductor import Conductor
from services.orchestrator.leadership import Leadership
from services.orchestrator.metrics import RunsByState
from services.orchestrator.servicer import OrchestratorServicer
from services.orchestrator.settings import OrchestratorSettings

log = structlog.get_logger(__name__)

SETTINGS = OrchestratorSettings


class Orchestrator:
    """Background work: the run conductor and the staleness sweep over workers; runs by state on /metrics."""

    def __init__(self, settings: OrchestratorSettings, engine: Engine, nats: Client,
                 metrics_channel: grpc.aio.Channel) -> None:
        self.settings = settings
        self.engine = engine
        self.nats = nats
        self.metrics_channel = metrics_channel
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.conductor = Conductor(settings, self.sessions, nats,
                                   results_pb2_grpc.MetricsQueryServiceStub(self.metrics_channel))
        self.leadership = Leadership(engine)
        self.runs_by_state = RunsByState(engine, self.leadership)
        REGISTRY.register(self.runs_by_state)
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.tasks = [asyncio.create_task(self.conductor.run_forever(self.leadership), name="conductor"),
                      asyncio.create_task(self._sweep_stale(), name="stale-sweep")]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        REGISTRY.unregister(self.runs_by_state)
        await asyncio.to_thread(self.leadership.release)
        await self.nats.drain()
        await self.metrics_channel.close()
        self.engine.dispose()

    async def _sweep_stale(self) -> None:
        while True:
            await asyncio.sleep(self.settings.stale_check_interval_s)
            if not self.leadership.leading:  # the conductor's loop keeps leadership up to date
                continue
            try:
                stale = await asyncio.to_thread(workers.mark_stale, self.sessions, self.settings.stale_after_s)
            except Exception:  # a database hiccup must not end the sweep
                log.exception("stale_sweep_failed")
                continue
            for worker_id in stale:
                log.warning("worker_stale", worker_id=worker_id, after_s=self.settings.stale_after_s)


async def build(settings: OrchestratorSettings, server: GrpcServer) -> Component:
    # The channel first: a certificate that cannot be used stops the start before any connection.
    # The same files serve the orchestrator's port (SPEC.tls).
    metrics_channel = aio_channel(settings.metrics_address, identity=settings.internal_tls())
    engine = await asyncio.to_thread(create_database_engine, settings.database_url)
    await asyncio.to_thread(ensure_schema, engine)
    nats = await connect_nats(settings.nats_url, name="callmeter-orchestrator")
    orchestrator = Orchestrator(settings, engine, nats, metrics_channel)
    orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(
        OrchestratorServicer(orchestrator.conductor), server.server)
    return orchestrator


SPEC = ServiceSpec(
    name="orchestrator",
    grpc_services=[orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name],
    build=build,
    tls=OrchestratorSettings.internal_tls,
)


def main() -> int:
    return run_service(SPEC, OrchestratorSettings)
