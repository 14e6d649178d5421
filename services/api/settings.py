"""API settings, from CALLMETER_* environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from callmeter.common.grpc_server import TlsFiles
from callmeter.common.settings import CommonSettings
from callmeter.common.tls import InternalTlsSettings, set_together
from callmeter.common.stores.database import normalize_database_url


class ApiSettings(CommonSettings, InternalTlsSettings):
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    prometheus_port: int = Field(default=9101, ge=0, le=65535)
    #: Certificate chain and key (PEM) of the API's own TLS, for a deployment without a load
    #: balancer that terminates TLS; plaintext when unset. Callers authenticate with API tokens.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    #: sqlite:///PATH (embedded) or postgresql://USER@HOST/DB — the orchestrator's database.
    database_url: str = "sqlite:///callmeter-state.db"
    #: The orchestrator's gRPC address (host:port).
    orchestrator_address: str = "127.0.0.1:50052"
    #: metrics-ingest's gRPC address, which serves the metric queries.
    metrics_address: str = "127.0.0.1:50054"
    #: Seconds the API waits for the orchestrator (SubmitRun, CancelRun) or metrics-ingest to answer.
    call_timeout_s: float = Field(default=10.0, gt=0, le=300)
    #: Deadline of a run whose test sets no timeout, counted from StartRun.
    default_run_timeout_s: float = Field(default=3600.0, gt=0, le=24 * 3600)
    #: Seconds between two RunProgress messages of WatchRun.
    watch_interval_s: float = Field(default=1.0, gt=0, le=60)

    def server_tls(self) -> TlsFiles | None:
        """The API's TLS files, None for plaintext; one without the other is a ConfigError."""
        if not set_together(self, "tls_cert_file", "tls_key_file"):
            return None
        return TlsFiles(self.tls_cert_file, self.tls_key_file)  # type: ignore[arg-type]

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str) -> str:
        return normalize_database_url(value, "CALLMETER_DATABASE_URL")
