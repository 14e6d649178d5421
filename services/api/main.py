"""`callmeter api`: the public API service process."""

from __future__ import annotations

import asyncio

from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from callmeter.common.grpc_server import GrpcServer
from callmeter.common.service import Component, ServiceSpec, run_service
from callmeter.common.stores.database import create_database_engine
from callmeter.state.migrate import ensure_schema
from callmeter.v1 import (
    runs_pb2,
    runs_pb2_grpc,
    tenancy_pb2,
    tenancy_pb2_grpc,
    tests_pb2,
    tests_pb2_grpc,
    workers_pb2,
    workers_pb2_grpc,
)
from services.api.clients import Metrics, Orchestrator
from services.api.servicers import Authenticated, RunServicer, TenancyServicer, TestServicer, WorkerServicer
from services.api.settings import ApiSettings

SETTINGS = ApiSettings


class Api:
    """The API's background resources: its database engine and its client channels."""

    def __init__(self, engine: Engine, orchestrator: Orchestrator, metrics: Metrics) -> None:
        self.engine = engine
        self.orchestrator = orchestrator
        self.metrics = metrics

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await self.orchestrator.close()
        await self.metrics.close()
        self.engine.dispose()


async def build(settings: ApiSettings, server: GrpcServer) -> Component:
    # The channels first: a certificate that cannot be used stops the start before any connection.
    internal_tls = settings.internal_tls()
    orchestrator = Orchestrator(settings.orchestrator_address, settings.call_timeout_s, internal_tls)
    metrics = Metrics(settings.metrics_address, settings.call_timeout_s, internal_tls)
    engine = await asyncio.to_thread(create_database_engine, settings.database_url)
    await asyncio.to_thread(ensure_schema, engine)
    auth = Authenticated(sessionmaker(engine, expire_on_commit=False))
    tenancy_pb2_grpc.add_TenancyServiceServicer_to_server(TenancyServicer(auth), server.server)
    workers_pb2_grpc.add_WorkerServiceServicer_to_server(WorkerServicer(auth), server.server)
    tests_pb2_grpc.add_TestServiceServicer_to_server(TestServicer(auth), server.server)
    runs_pb2_grpc.add_RunServiceServicer_to_server(RunServicer(auth, orchestrator, metrics, settings), server.server)
    return Api(engine, orchestrator, metrics)


SPEC = ServiceSpec(
    name="api",
    grpc_services=[
        tenancy_pb2.DESCRIPTOR.services_by_name["TenancyService"].full_name,
        workers_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,
        tests_pb2.DESCRIPTOR.services_by_name["TestService"].full_name,
        runs_pb2.DESCRIPTOR.services_by_name["RunService"].full_name,
    ],
    build=build,
    tls=ApiSettings.server_tls,
)


def main() -> int:
    return run_service(SPEC, ApiSettings)
