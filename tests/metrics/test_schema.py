"""The table follows the catalog, and a store made by an older catalog is brought up to date.

The rollups are derived data: a store without them, or with another definition of them, gets
them built from its raw rows at start.
"""

from __future__ import annotations

from pathlib import Path

from callmeter.catalog import METRICS
from callmeter.common.stores.metrics_store import connect_metrics_store
from services.metrics import queries
from services.metrics.batches import RowBuffer
from services.metrics.schema import (
    CLICKHOUSE_TYPES,
    GROUP_SECONDS_TABLE,
    ROLLUP_TABLES,
    ROLLUP_VERSION,
    SAMPLES_TABLE,
    ensure_rollups,
    ensure_schema,
    rollup_ddls,
    samples_table_ddl,
)
from services.metrics.store import insert_samples
from tests.metrics.helpers import (
    BASE_SECOND,
    GROUPS,
    as_dict,
    count_rows,
    dataset,
    dataset_batches,
    expected_summary,
    make_batch,
)


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


def test_rollup_ddl_replaces_by_key_and_carries_the_ttl_and_the_definition() -> None:
    group_seconds, endpoints = rollup_ddls(30)
    assert "ENGINE = ReplacingMergeTree(endpoints)" in group_seconds
    assert "ORDER BY (`run_id`, `group`, `second`)" in group_seconds
    assert "ENGINE = ReplacingMergeTree(second)" in endpoints
    assert "ORDER BY (`run_id`, `group`, `endpoint`)" in endpoints
    for ddl in (group_seconds, endpoints):
        assert "TTL second + INTERVAL 30 DAY" in ddl
        assert f"COMMENT '{ROLLUP_VERSION}'" in ddl


def engine(client, table: str) -> str:  # type: ignore[no-untyped-def]
    return str(client.query("SELECT engine_full FROM system.tables WHERE name = {t:String}",
                            parameters={"t": table}).result_rows[0][0])


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
        for table in (SAMPLES_TABLE, *ROLLUP_TABLES):
            assert "toIntervalDay(7)" in engine(client, table), table
        assert ensure_schema(client, 7) == []  # idempotent
    finally:
        client.close()


def test_rollups_are_built_from_the_raw_rows_and_rebuilt_when_their_definition_changes(tmp_path: Path) -> None:
    data = dataset()
    every_row = data["group"] != ""
    client = connect_metrics_store(f"chdb://{tmp_path / 'metrics'}")
    try:
        ensure_schema(client, 30)
        for table in ROLLUP_TABLES:  # a store made before the rollups: raw rows only
            client.command(f"DROP TABLE {table}")
        buffer = RowBuffer()
        for batch in dataset_batches(data, "before"):
            buffer.add(batch)
        insert_samples(client, buffer.columns, "t1")

        assert ensure_rollups(client, 30)
        summary = queries.run_summary(client, "before", list(GROUPS))
        assert as_dict(summary.total) == expected_summary(data, every_row)
        assert [as_dict(g) for g in summary.groups] == [expected_summary(data, data["group"] == g) for g in GROUPS]
        assert not ensure_rollups(client, 30)  # up to date: left alone

        # Rollups of another definition (an older version): dropped and built again.
        client.command(f"ALTER TABLE {GROUP_SECONDS_TABLE} MODIFY COMMENT 'callmeter rollup older'")
        client.command(f"TRUNCATE TABLE {GROUP_SECONDS_TABLE}")
        assert ensure_rollups(client, 30)
        assert as_dict(queries.run_summary(client, "before", []).total) == expected_summary(data, every_row)
    finally:
        client.close()
