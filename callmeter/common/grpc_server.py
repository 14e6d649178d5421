"""The one gRPC server factory: every service gets health, reflection and the same options."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
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
    """A certificate chain and its private key, and a CA (PEM files), with the settings that name them.

    A server with ``ca`` requires every caller to present a certificate that CA signed (mutual TLS).
    A client (callmeter/common/channels.py) presents the certificate and trusts the servers that
    ``ca`` signed (without one, the system's roots).
    """

    cert: Path
    key: Path
    ca: Path | None = None
    cert_setting: str = "CALLMETER_TLS_CERT_FILE"
    key_setting: str = "CALLMETER_TLS_KEY_FILE"
    ca_setting: str = "CALLMETER_TLS_CLIENT_CA_FILE"

    def env(self) -> dict[str, str]:
        """The environment that gives a child process these files."""
        return {self.cert_setting: str(self.cert), self.key_setting: str(self.key),
                **({self.ca_setting: str(self.ca)} if self.ca else {})}


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


def read_ca(path: Path, setting: str) -> bytes:
    """A file of one or more CA certificates (PEM), checked to hold at least one."""
    data = read_pem(path, setting)
    _certificates(data, path, setting)
    return data


def read_key_pair(tls: TlsFiles) -> tuple[bytes, bytes]:
    """(key, certificate chain) as PEM, checked to belong together: gRPC would otherwise refuse
    them only with log lines of its own (a server cannot bind, a client's every call fails)."""
    chain = read_pem(tls.cert, tls.cert_setting)
    leaf = _certificates(chain, tls.cert, tls.cert_setting)[0]
    data = read_pem(tls.key, tls.key_setting)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):  # not a key, encrypted, or of an unknown kind
        raise ConfigError(tls.key_setting, f"{tls.key} holds no unencrypted private key that can be read") from None
    if _public_der(key.public_key()) != _public_der(leaf.public_key()):
        raise ConfigError(tls.key_setting, f"{tls.key} is not the key of the certificate in {tls.cert} "
                                           f"({tls.cert_setting})")
    return data, chain


def _certificates(data: bytes, path: Path, setting: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(setting, f"{path} holds no certificate that can be read") from None


def _public_der(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    key, cert = read_key_pair(tls)
    ca = read_ca(tls.ca, tls.ca_setting) if tls.ca else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)
