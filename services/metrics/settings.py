"""metrics-ingest settings, from CALLMETER_* environment variables."""

from __future__ import annotations

from pydantic import Field, field_validator

from callmeter.common.settings import CommonSettings
from callmeter.common.tls import InternalTlsSettings
from callmeter.common.stores.metrics_store import check_metrics_store_url
from callmeter.common.stores.nats import NatsUrl


class MetricsSettings(CommonSettings, InternalTlsSettings):
    grpc_port: int = Field(default=50054, ge=0, le=65535)
    prometheus_port: int = Field(default=9104, ge=0, le=65535)
    #: JetStream server(s) the gateway publishes metric batches to.
    nats_url: NatsUrl = "nats://127.0.0.1:4222"
    #: chdb:///DIR (embedded, owned by this process) or http(s)://HOST:PORT (a ClickHouse server).
    clickhouse_url: str = "chdb:///var/lib/callmeter/metrics"

    # The streams. The gateway ensures CALLMETER_METRICS too: keep these equal to its settings,
    # or the two services keep rewriting each other's limits.
    stream_replicas: int = Field(default=1, ge=1, le=5)
    #: JetStream drops a batch whose Nats-Msg-Id it saw within this window.
    stream_duplicate_window_s: float = Field(default=120.0, gt=0)
    stream_max_age_s: float = Field(default=7 * 86400.0, gt=0)
    #: -1 for no limit.
    stream_max_bytes: int = Field(default=-1, ge=-1)
    #: How long dead letters stay in CALLMETER_DEADLETTER for inspection or replay.
    deadletter_max_age_s: float = Field(default=14 * 86400.0, gt=0)

    # The consumer and the insert batching.
    #: Rows collected before an insert (ClickHouse wants 10k–100k rows per insert).
    ingest_max_rows: int = Field(default=50_000, ge=1)
    #: Longest a sample waits in memory before it is inserted.
    ingest_max_delay_s: float = Field(default=1.0, gt=0)
    #: Messages asked for in one pull.
    ingest_fetch_batch: int = Field(default=500, ge=1)
    ingest_max_ack_pending: int = Field(default=20_000, ge=1)
    #: JetStream redelivers a message not acked within this time.
    ingest_ack_wait_s: float = Field(default=60.0, ge=1)
    #: A message larger than this is dead-lettered undecoded.
    ingest_max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    #: Upper bound of the exponential back-off while the store is down.
    store_retry_max_s: float = Field(default=30.0, gt=0)

    #: Raw endpoint-seconds older than this are deleted (ClickHouse TTL); older samples are refused.
    raw_ttl_days: int = Field(default=30, ge=1, le=3650)

    @field_validator("clickhouse_url")
    @classmethod
    def _clickhouse(cls, value: str) -> str:
        return check_metrics_store_url(value, "CALLMETER_CLICKHOUSE_URL")
