"""`callmeter gateway`: the gateway service process."""

from __future__ import annotations

import structlog
from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from callmeter.common.channels import aio_channel
from callmeter.common.grpc_server import GrpcServer, TlsFiles
from callmeter.common.service import Component, ServiceSpec, run_service
from callmeter.common.stores.metrics_stream import ensure_stream
from callmeter.common.stores.nats import connect_nats
from callmeter.common.stores.worker_commands import DELIVERED, SUBJECT_WILDCARD, worker_id_of
from callmeter.v1 import orchestrator_pb2_grpc, workers_pb2
from services.gateway.publisher import BatchPublisher
from services.gateway.reporter import EventReporter
from services.gateway.servicer import GatewayServicer, add_to_server
from services.gateway.settings import GatewaySettings

log = structlog.get_logger(__name__)


class Gateway:
    """Background work: the NATS connection, the orchestrator channel, the event reporter."""

    def __init__(self, settings: GatewaySettings, server: GrpcServer, nats: Client) -> None:
        self.settings = settings
        self.nats = nats
        self.commands: Subscription | None = None
        self.channel = aio_channel(settings.orchestrator_address)
        self.reporter = EventReporter(
            orchestrator_pb2_grpc.OrchestratorServiceStub(self.channel), settings.gateway_id,
            settings.report_interval_s, on_revoked=lambda worker_id: self.servicer.close_worker(worker_id, "token revoked"),
        )
        self.servicer = GatewayServicer(settings, orchestrator_pb2_grpc.OrchestratorServiceStub(self.channel),
                                        self.reporter, BatchPublisher(nats.jetstream()))
        add_to_server(self.servicer, server.server)

    async def start(self) -> None:
        self.reporter.start()
        self.commands = await self.nats.subscribe(SUBJECT_WILDCARD, cb=self._on_command)

    async def _on_command(self, msg: Msg) -> None:
        """Queues an orchestrator's message on the stream of a worker this replica holds."""
        session = self.servicer.sessions.get(worker_id_of(msg.subject))
        if session is None:
            return  # another replica holds it, or nobody does: silence means not delivered here
        try:
            message = workers_pb2.GatewayMessage.FromString(msg.data)
        except DecodeError:
            log.warning("bad_worker_command", subject=msg.subject)
            return
        session.send(message)
        await msg.respond(DELIVERED)

    async def stop(self) -> None:
        if self.commands is not None:
            await self.commands.unsubscribe()
        self.servicer.close_all("gateway shutting down")
        await self.reporter.stop()
        await self.nats.drain()
        await self.channel.close()


async def build(settings: GatewaySettings, server: GrpcServer) -> Component:
    nats = await connect_nats(settings.nats_url, name=f"callmeter-gateway-{settings.gateway_id}")
    await ensure_stream(nats.jetstream())
    return Gateway(settings, server, nats)


SPEC = ServiceSpec(
    name="gateway",
    grpc_services=[workers_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name],
    build=build,
    tls=lambda s: TlsFiles(s.tls_cert_file, s.tls_key_file, s.tls_client_ca_file),
)


def main() -> int:
    return run_service(SPEC, GatewaySettings)

SETTINGS = GatewaySettings
