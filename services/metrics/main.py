"""`callmeter metrics`: the metrics-ingest service process.

It owns the metrics store (a chDB directory can be opened by one process only), so it also
serves every read of it: MetricsQueryService.
"""

from __future__ import annotations

from nats.aio.client import Client

from callmeter.common.grpc_server import GrpcServer
from callmeter.common.service import Component, ServiceSpec, run_service
from callmeter.common.stores.nats import connect_nats
from callmeter.v1 import results_pb2, results_pb2_grpc
from services.metrics.ingest import SampleIngest
from services.metrics.query_servicer import MetricsQueryServicer
from services.metrics.runs import RunNotices
from services.metrics.schema_lock import schema_lock
from services.metrics.settings import MetricsSettings
from services.metrics.store import MetricsStore
from services.metrics.stream import ensure_streams


class MetricsIngest:
    """Store, NATS, streams and the two consumers, started in order and stopped in reverse."""

    def __init__(self, settings: MetricsSettings, store: MetricsStore) -> None:
        self.settings = settings
        self.store = store
        self.nats: Client | None = None
        self.consumers: list[SampleIngest | RunNotices] = []

    async def start(self) -> None:
        s = self.settings
        self.nats = await connect_nats(s.nats_url, name="callmeter-metrics")
        js = self.nats.jetstream()
        await ensure_streams(js, replicas=s.stream_replicas, duplicate_window_s=s.stream_duplicate_window_s,
                             max_age_s=s.stream_max_age_s, max_bytes=s.stream_max_bytes,
                             deadletter_max_age_s=s.deadletter_max_age_s)
        async with schema_lock(js, replicas=s.stream_replicas):  # replicas on one server migrate in turn
            await self.store.open()
        for consumer in (SampleIngest(js, self.store, s), RunNotices(js, self.store, s)):
            await consumer.start()
            self.consumers.append(consumer)

    async def stop(self) -> None:
        """Stops fetching, inserts and acks what is buffered, sends the acks, closes the store."""
        try:
            for consumer in reversed(self.consumers):
                await consumer.stop()
            if self.nats is not None:
                await self.nats.drain()
        finally:
            await self.store.close()


async def build(settings: MetricsSettings, server: GrpcServer) -> Component:
    store = MetricsStore(settings.clickhouse_url, settings.raw_ttl_days)
    results_pb2_grpc.add_MetricsQueryServiceServicer_to_server(MetricsQueryServicer(store), server.server)
    return MetricsIngest(settings, store)


SPEC = ServiceSpec(
    name="metrics",
    grpc_services=[results_pb2.DESCRIPTOR.services_by_name["MetricsQueryService"].full_name],
    build=build,
    # Callers (the api, the orchestrator) present a certificate of the platform's CA.
    tls=MetricsSettings.internal_tls,
)

SETTINGS = MetricsSettings


def main() -> int:
    return run_service(SPEC, MetricsSettings)
