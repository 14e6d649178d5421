"""Gateway settings, from CALLMETER_* environment variables."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import Field, model_validator

from callmeter.common.settings import CommonSettings
from callmeter.common.tls import InternalTlsSettings
from callmeter.common.stores.nats import NatsUrl


class GatewaySettings(CommonSettings, InternalTlsSettings):
    #: Workers dial this port with TLS; 443 in production so that it passes firewalls.
    grpc_port: int = Field(default=443, ge=0, le=65535)
    prometheus_port: int = Field(default=9103, ge=0, le=65535)
    #: Server certificate chain and key (PEM). Required: workers only speak TLS.
    tls_cert_file: Path
    tls_key_file: Path
    #: When set, workers must present a client certificate signed by this CA (mutual TLS).
    tls_client_ca_file: Path | None = None
    #: The orchestrator's gRPC address (host:port).
    orchestrator_address: str = "127.0.0.1:50052"
    nats_url: NatsUrl = "nats://127.0.0.1:4222"
    #: Names this replica in worker records; several replicas may run behind one address.
    gateway_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    #: Interval a worker must heartbeat at, told to it in the welcome.
    heartbeat_interval_s: int = Field(default=30, ge=1, le=3600)
    #: A hello must arrive this soon after the stream opens.
    hello_timeout_s: float = Field(default=10.0, gt=0, le=300)
    #: Largest metric batch accepted (serialized bytes); larger ones disconnect the worker.
    max_batch_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=16 * 1024 * 1024)
    #: Per-stream rate limits (token buckets); a worker beyond one is disconnected with the reason.
    #: Steady traffic is a few messages a second; the bursts let a reconnected worker resend its
    #: unacked batches (the worker's default send buffer is 64 MiB).
    rate_limit_messages_per_s: float = Field(default=100.0, gt=0)
    rate_limit_message_burst: int = Field(default=10_000, ge=1)
    rate_limit_bytes_per_s: float = Field(default=8 * 1024 * 1024, gt=0)
    rate_limit_byte_burst: int = Field(default=128 * 1024 * 1024, ge=1024)
    #: Worker events are forwarded to the orchestrator at most this often.
    report_interval_s: float = Field(default=1.0, gt=0, le=60)

    @model_validator(mode="after")
    def _burst_holds_a_batch(self) -> GatewaySettings:
        if self.rate_limit_byte_burst < self.max_batch_bytes:
            raise ValueError(f"CALLMETER_RATE_LIMIT_BYTE_BURST ({self.rate_limit_byte_burst}) is below "
                             f"CALLMETER_MAX_BATCH_BYTES ({self.max_batch_bytes}): no full batch could pass")
        return self
