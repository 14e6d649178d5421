"""Orchestrator settings, from CALLMETER_* environment variables."""

from __future__ import annotations

from pydantic import Field, field_validator

from callmeter.common.settings import CommonSettings
from callmeter.common.stores.database import normalize_database_url


class OrchestratorSettings(CommonSettings):
    grpc_port: int = Field(default=50052, ge=0, le=65535)
    prometheus_port: int = Field(default=9102, ge=0, le=65535)
    #: sqlite:///PATH (embedded) or postgresql://USER@HOST/DB.
    database_url: str = "sqlite:///callmeter-state.db"
    #: A worker with no heartbeat for this long goes to ERROR.
    stale_after_s: float = Field(default=60.0, gt=0, le=3600)
    #: How often workers are checked for staleness.
    stale_check_interval_s: float = Field(default=5.0, gt=0, le=600)

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str) -> str:
        return normalize_database_url(value, "CALLMETER_DATABASE_URL")
