"""`callmeter metrics`: the metrics-ingest service process."""

from __future__ import annotations

from callmeter.common.grpc_server import GrpcServer
from callmeter.common.service import Component, ServiceSpec, run_service
from callmeter.common.stores.metrics_store import connect_metrics_store
from callmeter.common.stores.nats import connect_nats
from callmeter.v1 import results_pb2
from services.metrics.settings import MetricsSettings


class MetricsIngest:
    """Owns the NATS connection and the store client for the life of the process."""

    def __init__(self, settings: MetricsSettings) -> None:
        self.settings = settings
        self.store = None
        self.nats = None

    async def start(self) -> None:
        self.store = connect_metrics_store(self.settings.clickhouse_url)
        self.nats = await connect_nats(self.settings.nats_url, name="callmeter-metrics")

    async def stop(self) -> None:
        if self.nats is not None:
            await self.nats.drain()
        if self.store is not None:
            self.store.close()


async def build(settings: MetricsSettings, server: GrpcServer) -> Component:
    return MetricsIngest(settings)


SPEC = ServiceSpec(
    name="metrics",
    grpc_services=[results_pb2.DESCRIPTOR.services_by_name["MetricsQueryService"].full_name],
    build=build,
)


def main() -> int:
    return run_service(SPEC, MetricsSettings)

SETTINGS = MetricsSettings
