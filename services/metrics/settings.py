"""metrics-ingest settings, from CALLMETER_* environment variables."""

from __future__ import annotations

from pydantic import Field, field_validator

from callmeter.common.settings import CommonSettings
from callmeter.common.stores.metrics_store import check_metrics_store_url
from callmeter.common.stores.nats import check_nats_url


class MetricsSettings(CommonSettings):
    grpc_port: int = Field(default=50054, ge=0, le=65535)
    prometheus_port: int = Field(default=9104, ge=0, le=65535)
    #: JetStream server(s) the gateway publishes metric batches to.
    nats_url: str = "nats://127.0.0.1:4222"
    #: chdb:///DIR (embedded, owned by this process) or http(s)://HOST:PORT (a ClickHouse server).
    clickhouse_url: str = "chdb:///var/lib/callmeter/metrics"

    @field_validator("nats_url")
    @classmethod
    def _nats(cls, value: str) -> str:
        return check_nats_url(value, "CALLMETER_NATS_URL")

    @field_validator("clickhouse_url")
    @classmethod
    def _clickhouse(cls, value: str) -> str:
        return check_metrics_store_url(value, "CALLMETER_CLICKHOUSE_URL")
