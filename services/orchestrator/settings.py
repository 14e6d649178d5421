"""Orchestrator settings, from CALLMETER_* environment variables."""

from __future__ import annotations

from pydantic import Field, field_validator

from callmeter.common.settings import CommonSettings
from callmeter.common.tls import InternalTlsSettings
from callmeter.common.start_waves import REGISTRATION_WAIT_S
from callmeter.common.verdict import COMPLETENESS_MIN_PCT
from callmeter.common.stores.database import normalize_database_url
from callmeter.common.stores.nats import NatsUrl


class OrchestratorSettings(CommonSettings, InternalTlsSettings):
    grpc_port: int = Field(default=50052, ge=0, le=65535)
    prometheus_port: int = Field(default=9102, ge=0, le=65535)
    #: sqlite:///PATH (embedded) or postgresql://USER@HOST/DB.
    database_url: str = "sqlite:///callmeter-state.db"
    #: A worker with no heartbeat for this long goes to ERROR.
    stale_after_s: float = Field(default=60.0, gt=0, le=3600)
    #: How often workers are checked for staleness.
    stale_check_interval_s: float = Field(default=5.0, gt=0, le=600)
    #: NATS, through which assignments reach whichever gateway replica holds a worker.
    nats_url: NatsUrl = "nats://127.0.0.1:4222"
    #: metrics-ingest's gRPC address, which serves run summaries.
    metrics_address: str = "127.0.0.1:50054"
    #: How often runs are driven forward (dispatch, timeouts, lost workers, collection).
    tick_interval_s: float = Field(default=0.5, gt=0, le=60)
    #: A run's endpoints begin this long after every worker has prepared its part (the start
    #: message's way to every worker).
    start_lead_s: float = Field(default=1.0, ge=0, le=60)
    #: Begin without the workers that have not prepared their part this long after it was sent.
    prepare_wait_s: float = Field(default=60.0, gt=0, le=3600)
    #: Callers of a registering group begin at most this long after the common start, registered or not.
    registration_wait_s: float = Field(default=REGISTRATION_WAIT_S, ge=0, le=3600)
    #: Wait this long after a run's execution ends before reading its summary (ingest lag).
    collect_delay_s: float = Field(default=1.0, ge=0, le=600)
    #: Then read it again on every tick until every sample the workers sent is stored, for at most
    #: this long after the run ended; what is missing then lowers the run's completeness.
    collect_wait_s: float = Field(default=30.0, ge=0, le=3600)
    #: A run whose completeness (endpoint-seconds stored ÷ expected) is below this is not judged (ERROR).
    completeness_min_pct: float = Field(default=COMPLETENESS_MIN_PCT, ge=0, le=100)
    #: Give up reading a summary this long after execution ended; the run is FAILED then.
    collect_timeout_s: float = Field(default=120.0, gt=0, le=3600)

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str) -> str:
        return normalize_database_url(value, "CALLMETER_DATABASE_URL")
