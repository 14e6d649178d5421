"""The table follows the catalog, and a store made by an older catalog is brought up to date."""

from __future__ import annotations

from pathlib import Path

from callmeter.catalog import METRICS
from callmeter.common.stores.metrics_store import connect_metrics_store
from services.metrics.batches import RowBuffer
from services.metrics.schema import CLICKHOUSE_TYPES, SAMPLES_TABLE, ensure_schema, samples_table_ddl
from services.metrics.store import insert_samples
from tests.metrics.helpers import BASE_SECOND, count_rows, make_batch


def columns(client) -> dict[str, str]:  # type: ignore[no-untyped-def]
    rows = client.query("SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = {t:String}",
                        parameters={"t": SAMPLES_TABLE}).result_rows
    return dict(rows)


def test_ddl_has_a_typed_column_per_metric_and_the_replacing_key() -> None:
    ddl = samples_table_ddl(30)
    lines = {line.strip().rstrip(",") for line in ddl.splitlines()}
    for metric in METRICS:
        assert f"`{metric.name}` {CLICKHOUSE_TYPES[metric.proto_type]}" in lines
    assert "ENGINE = ReplacingMergeTree" in ddl
    assert "ORDER BY (run_id, `group`, endpoint, second)" in ddl
    assert "PARTITION BY toYYYYMM(second)" in ddl
    assert "TTL second + INTERVAL 30 DAY" in ddl


def test_migration_adds_new_metrics_keeps_rows_and_applies_the_ttl(tmp_path: Path) -> None:
    client = connect_metrics_store(f"chdb://{tmp_path / 'metrics'}")
    try:
        old_catalog = METRICS[:-3]
        assert ensure_schema(client, 30, old_catalog) == []
        buffer = RowBuffer(old_catalog)
        buffer.add(make_batch("run1", "w1", 1, "g", range(4), BASE_SECOND, rx_packets=50))
        insert_samples(client, buffer.columns, "t1")

        added = ensure_schema(client, 7)

        assert added == [m.name for m in METRICS[-3:]]
        table = columns(client)
        assert {m.name: table[m.name] for m in METRICS} == {m.name: CLICKHOUSE_TYPES[m.proto_type] for m in METRICS}
        assert count_rows(client, "run1") == 4
        assert client.query("SELECT sum(rx_packets), sum(mos) FROM endpoint_seconds").result_rows == [(200, 0)]
        engine = client.query("SELECT engine_full FROM system.tables WHERE name = {t:String}",
                              parameters={"t": SAMPLES_TABLE}).result_rows[0][0]
        assert "toIntervalDay(7)" in engine
        assert ensure_schema(client, 7) == []  # idempotent
    finally:
        client.close()
