"""The one gRPC server factory: every service gets health, reflection and the same options."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from callmeter.common.errors import ConfigError
from callmeter.common.rpc_metrics import RpcMetrics

# Largest message a service accepts; metric batches are bounded well below this.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

SERVER_OPTIONS: list[tuple[str, int]] = [
    # A second process must not silently share our port (grpc enables SO_REUSEPORT by default).
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Keep long-lived streams (workers behind NAT and proxies) alive; accept client pings.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


@dataclass(frozen=True)
class TlsFiles:
    """Server certificate chain and key (PEM); ``client_ca`` turns on mutual TLS."""

    cert: Path
    key: Path
    client_ca: Path | None = None
    cert_setting: str = "CALLMETER_TLS_CERT_FILE"
    key_setting: str = "CALLMETER_TLS_KEY_FILE"


class GrpcServer:
    """A grpc.aio server with the health and reflection services registered, every RPC measured
    (callmeter/common/rpc_metrics.py)."""

    def __init__(self, service_names: Sequence[str]) -> None:
        self.server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[RpcMetrics()])
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names = list(service_names)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )

    def bind(self, host: str, port: int, port_setting: str, tls: TlsFiles | None = None) -> int:
        """Binds and returns the port; a port in use or a bad certificate is a ConfigError."""
        address = f"{host}:{port}"
        try:
            if tls is None:
                bound = self.server.add_insecure_port(address)
            else:
                bound = self.server.add_secure_port(address, server_credentials(tls))
        except RuntimeError as exc:
            raise ConfigError(port_setting, f"cannot listen on {address}: {exc}") from None
        if bound == 0:
            raise ConfigError(port_setting, f"cannot listen on {address}: address in use or not available")
        return bound

    async def start(self) -> None:
        await self.server.start()
        await self.set_serving(True)

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def stop(self, grace_s: float) -> None:
        await self.set_serving(False)
        await self.server.stop(grace_s)


def read_pem(path: Path, setting: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(setting, f"cannot read {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(setting, f"{path} is not a PEM file")
    return data


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    cert = read_pem(tls.cert, tls.cert_setting)
    key = read_pem(tls.key, tls.key_setting)
    client_ca = read_pem(tls.client_ca, "CALLMETER_TLS_CLIENT_CA_FILE") if tls.client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
