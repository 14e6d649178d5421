"""`callmeter gateway`: the gateway service process.

Replicas find one another's workers through NATS alone. Orchestrator → worker messages are NATS
requests on ``callmeter.workers.<id>.commands`` (callmeter/common/stores/worker_commands.py); a
replica subscribes to the subject of each worker whose stream it holds (commands.py), so the one
holding it answers and a worker held nowhere gets "no responders" at once. Each replica announces
the workers it admits on ``ADMITTED_SUBJECT`` (a ``Worker``, as the orchestrator recorded it); a
replica still holding an older stream of one ends it, so that only one replica ever answers for a
worker.
"""

from __future__ import annotations

import grpc
import nats.errors
import structlog
from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from callmeter.common.channels import aio_channel
from callmeter.common.grpc_server import GrpcServer, TlsFiles
from callmeter.common.service import Component, ServiceSpec, run_service
from callmeter.common.stores.metrics_stream import wait_for_stream
from callmeter.common.stores.nats import connect_nats
from callmeter.v1 import orchestrator_pb2_grpc, workers_pb2
from services.gateway.commands import NatsCommandRoutes
from services.gateway.publisher import BatchPublisher
from services.gateway.reporter import EventReporter
from services.gateway.servicer import GatewayServicer, add_to_server
from services.gateway.settings import GatewaySettings

log = structlog.get_logger(__name__)

ADMITTED_SUBJECT = "callmeter.gateways.admitted"
SHUTDOWN_REASON = "gateway shutting down"


class Gateway:
    """Background work: the NATS connection, the orchestrator channel, the event reporter."""

    def __init__(self, settings: GatewaySettings, server: GrpcServer, nats: Client, channel: grpc.aio.Channel) -> None:
        self.settings = settings
        self.nats = nats
        self.subscriptions: list[Subscription] = []
        self.channel = channel
        self.reporter = EventReporter(
            orchestrator_pb2_grpc.OrchestratorServiceStub(self.channel), settings.gateway_id,
            settings.report_interval_s, on_revoked=lambda worker_id: self.servicer.revoke(worker_id),
        )
        self.servicer = GatewayServicer(settings, orchestrator_pb2_grpc.OrchestratorServiceStub(self.channel),
                                        self.reporter, BatchPublisher(nats.jetstream()), on_admitted=self._announce,
                                        routes=NatsCommandRoutes(nats))
        add_to_server(self.servicer, server.server)

    async def start(self) -> None:
        self.reporter.start()
        self.subscriptions = [await self.nats.subscribe(ADMITTED_SUBJECT, cb=self._on_admitted_elsewhere)]

    async def _announce(self, worker: workers_pb2.Worker) -> None:
        try:
            await self.nats.publish(ADMITTED_SUBJECT, worker.SerializeToString())
        except nats.errors.Error as exc:  # an older stream elsewhere then ends when its connection does
            log.warning("announce_failed", worker_id=worker.id, error=str(exc) or type(exc).__name__)

    async def _on_admitted_elsewhere(self, msg: Msg) -> None:
        try:
            worker = workers_pb2.Worker.FromString(msg.data)
        except DecodeError:
            log.warning("bad_admission_notice")
            return
        self.servicer.moved(worker)

    async def drain(self, grace_s: float) -> None:
        """Before the server cancels the streams still open when its grace ends: every worker is
        told why, so that it reconnects (to another replica) at once."""
        await self.servicer.say_goodbye(SHUTDOWN_REASON, grace_s)

    async def stop(self) -> None:
        for subscription in self.subscriptions:
            await subscription.unsubscribe()
        self.servicer.close_all(SHUTDOWN_REASON)
        await self.reporter.stop()
        await self.nats.drain()
        await self.channel.close()


async def build(settings: GatewaySettings, server: GrpcServer) -> Component:
    # The channel to the orchestrator first (mutual TLS with the gateway's internal certificate): a
    # certificate that cannot be used stops the start before any connection.
    channel = aio_channel(settings.orchestrator_address, identity=settings.internal_tls())
    nats = await connect_nats(settings.nats_url, name=f"callmeter-gateway-{settings.gateway_id}")
    await wait_for_stream(nats.jetstream())
    return Gateway(settings, server, nats, channel)


SPEC = ServiceSpec(
    name="gateway",
    grpc_services=[workers_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name],
    build=build,
    # Workers' TLS: the gateway's public certificate, not its internal one.
    tls=lambda s: TlsFiles(s.tls_cert_file, s.tls_key_file, s.tls_client_ca_file),
)


def main() -> int:
    return run_service(SPEC, GatewaySettings)

SETTINGS = GatewaySettings
