"""`callmeter api`: the public API service process."""

from __future__ import annotations

import asyncio

from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from callmeter.common.grpc_server import GrpcServer
from callmeter.common.service import Component, ServiceSpec, run_service
from callmeter.common.stores.database import create_database_engine
from callmeter.state.migrate import ensure_schema
from callmeter.v1 import tenancy_pb2, tenancy_pb2_grpc, workers_pb2, workers_pb2_grpc
from services.api.servicers import Authenticated, TenancyServicer, WorkerServicer
from services.api.settings import ApiSettings

SETTINGS = ApiSettings


class Api:
    """The API's only background resource is its database engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self.engine.dispose()


async def build(settings: ApiSettings, server: GrpcServer) -> Component:
    engine = await asyncio.to_thread(create_database_engine, settings.database_url)
    await asyncio.to_thread(ensure_schema, engine)
    auth = Authenticated(sessionmaker(engine, expire_on_commit=False))
    tenancy_pb2_grpc.add_TenancyServiceServicer_to_server(TenancyServicer(auth), server.server)
    workers_pb2_grpc.add_WorkerServiceServicer_to_server(WorkerServicer(auth), server.server)
    return Api(engine)


SPEC = ServiceSpec(
    name="api",
    grpc_services=[
        tenancy_pb2.DESCRIPTOR.services_by_name["TenancyService"].full_name,
        workers_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name,
    ],
    build=build,
)


def main() -> int:
    return run_service(SPEC, ApiSettings)
