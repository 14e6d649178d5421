"""Worker settings: CALLMETER_* variables plus the operators' own names for network settings."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from callmeter.common.settings import ProcessSettings
from callmeter.v1 import common_pb2


class WorkerSettings(ProcessSettings):
    #: What `callmeter worker --help` prints after the settings: what the worker reads besides them
    #: (the names services/worker/credentials.py reads; tests/test_self_hosted_worker.py checks them).
    HELP_LINES: ClassVar[tuple[str, ...]] = (
        "SIP credentials, by a test's credential_ref REF (upper-cased, other characters than letters and",
        "digits as _), read on this worker before CALLMETER_SECRETS_FILE and never sent to the platform:",
        "  CALLMETER_CREDENTIAL_<REF>_PASSWORD  its password; may hold {n}, the phone's number",
        "  CALLMETER_CREDENTIAL_<REF>_USERNAME  its user name (optional; may hold {n})",
        "  CALLMETER_CREDENTIAL_<REF>_REALM     its realm (optional; \"*\" answers any)",
        "The secrets file (a password, a {n} pattern, a table of numbers, a CSV file of them):",
        "docs/engine.md \"Credentials: on the worker only\". A worker on another machine (install,",
        "environment, systemd unit): docs/self-hosted-worker.md.",
    )

    #: The gateway's host:port (443 in production).
    gateway_address: str = "127.0.0.1:443"
    #: The worker token, created through the API and shown once.
    worker_token: SecretStr
    #: Pin this CA for the gateway's certificate; unset trusts the system's roots.
    ca_file: Path | None = None
    #: Overrides the name checked against the gateway's certificate (for IP addresses behind a LB).
    gateway_server_name: str | None = None
    #: Compression of what the worker sends the gateway: gzip (each message on its own, as gRPC
    #: does) or none. gzip cuts in-call metric batches about 3x (149 → 42-49 B per endpoint-second,
    #: 500 endpoints: 600 → 168 kbit/s), for metered or thin links; it costs the worker about
    #: 3 µs of CPU per endpoint-second (0.15 % of a core for 500 endpoints) and the gateway, which
    #: decompresses, 1.2-1.5x its CPU per endpoint-second (bench/gateway.py, part 5). "none"
    #: spares that CPU where bandwidth is free. What reaches JetStream is the same either way.
    link_compression: Literal["none", "gzip"] = "gzip"
    worker_name: str = Field(default_factory=socket.gethostname)
    #: Labels tests select workers by, as key=value pairs separated by commas.
    worker_labels: str = ""
    #: Local health endpoint: /healthz, /readyz and /metrics. Never exposed beyond this host by default.
    health_host: str = "127.0.0.1"
    health_port: int = Field(default=3030, ge=0, le=65535)
    #: Reconnect backoff: first wait, doubled up to the maximum, with jitter.
    reconnect_initial_s: float = Field(default=5.0, gt=0, le=600)
    reconnect_max_s: float = Field(default=60.0, gt=0, le=3600)
    #: Address SIP binds to (operators' name SIP_IP); empty binds all.
    sip_ip: str = Field(default="", validation_alias="SIP_IP")
    #: Address written into SDP for media (SDP_IP); empty uses the bound address.
    sdp_ip: str = Field(default="", validation_alias="SDP_IP")
    #: Public address for Via/Contact behind NAT (EXTERNAL_IP).
    external_ip: str = Field(default="", validation_alias="EXTERNAL_IP")
    #: RTP ports the engines share out, each engine a disjoint slice.
    rtp_port_min: int = Field(default=10000, ge=1024, le=65535)
    rtp_port_max: int = Field(default=65535, ge=1024, le=65535)
    #: YAML file with SIP credentials by reference name; never sent to the platform.
    secrets_file: Path | None = Field(default=None, description="none; its format: docs/engine.md "
                                      "\"Credentials: on the worker only\"")
    #: Engine processes (one pjsua2 stack each) this worker may run at once; unset: as many as this
    #: machine's CPUs and memory carry (services/worker/pool_size.py).
    max_engines: int | None = Field(default=None, ge=1, le=4096,
                                    description="sized at start from this machine's CPUs and memory")
    #: Samples are sent up in one batch per run this often.
    flush_interval_s: float = Field(default=1.0, gt=0, le=60)
    #: Bound of the buffer of batches the gateway has not acked; the oldest are dropped beyond it.
    send_buffer_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024)

    @field_validator("worker_labels")
    @classmethod
    def _labels(cls, value: str) -> str:
        for pair in filter(None, (part.strip() for part in value.split(","))):
            if "=" not in pair or not pair.split("=", 1)[0]:
                raise ValueError(f"label {pair!r} is not key=value")
        return value

    @model_validator(mode="after")
    def _rtp_range(self) -> WorkerSettings:
        if self.rtp_port_min > self.rtp_port_max:
            raise ValueError(f"CALLMETER_RTP_PORT_MIN ({self.rtp_port_min}) is above CALLMETER_RTP_PORT_MAX ({self.rtp_port_max})")
        return self

    def labels(self) -> list[common_pb2.Label]:
        pairs = (part.strip().split("=", 1) for part in self.worker_labels.split(",") if part.strip())
        return [common_pb2.Label(key=key.strip(), value=value.strip()) for key, value in pairs]
