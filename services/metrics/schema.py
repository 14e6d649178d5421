"""The ClickHouse tables, generated from the metrics catalog, and their additive migration.

endpoint_seconds holds one row per (run, group, endpoint, second), one column per catalog
metric, values as the scaled integers of the wire. ReplacingMergeTree on that key makes a
replayed batch harmless: queries read with FINAL, so a key counts once however often it landed.
run_tests maps runs to their test for trends (filled from the orchestrator's run-start notices).
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from callmeter.catalog import METRICS, Metric

log = structlog.get_logger(__name__)

SAMPLES_TABLE = "endpoint_seconds"
RUNS_TABLE = "run_tests"

CLICKHOUSE_TYPES = {"bool": "UInt8", "uint32": "UInt32", "sint32": "Int32", "uint64": "UInt64"}

KEY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("run_id", "String"),
    ("worker_id", "LowCardinality(String)"),
    ("group", "LowCardinality(String)"),
    ("endpoint", "UInt32"),
    ("second", "DateTime"),
)

#: Field numbers of the key columns in the protobuf rows of an insert (batches.RowBuffer); the
#: metrics keep their EndpointMetrics numbers (catalog position + 1), far below these.
KEY_FIELD_NUMBERS = {"run_id": 10001, "worker_id": 10002, "group": 10003, "endpoint": 10004, "second": 10005}
_KEY_PROTO_TYPES = {"run_id": "string", "worker_id": "string", "group": "string", "endpoint": "uint32", "second": "uint32"}

# An insert retried with the same token within this many recent inserts is dropped by the
# store (a retry after a timeout that had in fact succeeded); FINAL covers everything else.
DEDUP_WINDOW_INSERTS = 1000

# A part smaller than this (uncompressed) is "compact": all ~150 columns in one file instead of
# two files each. An insert of 50,000 rows (~30 MB) then costs less than half the CPU; parts
# merged past this size are wide again, as columns are best read from.
WIDE_PART_MIN_BYTES = 128 * 2**20


def quote(name: str) -> str:
    return f"`{name}`"


def metric_columns(metrics: Sequence[Metric] = METRICS) -> list[tuple[str, str]]:
    return [(m.name, CLICKHOUSE_TYPES[m.proto_type]) for m in metrics]


def samples_table_ddl(ttl_days: int, metrics: Sequence[Metric] = METRICS) -> str:
    columns = ",\n  ".join(f"{quote(name)} {ctype}" for name, ctype in [*KEY_COLUMNS, *metric_columns(metrics)])
    return (
        f"CREATE TABLE IF NOT EXISTS {SAMPLES_TABLE} (\n  {columns}\n)\n"
        "ENGINE = ReplacingMergeTree\n"
        "PARTITION BY toYYYYMM(second)\n"
        "ORDER BY (run_id, `group`, endpoint, second)\n"
        f"TTL second + INTERVAL {int(ttl_days)} DAY\n"
        f"SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW_INSERTS}, "
        f"min_bytes_for_wide_part = {WIDE_PART_MIN_BYTES}"
    )


def protobuf_row_schema(metrics: Sequence[Metric] = METRICS) -> str:
    """The proto3 schema of one inserted row: every metric at its wire number, then the keys.

    ClickHouse matches fields to columns by name and skips fields the schema lacks.
    """
    numbers = {m.name: index + 1 for index, m in enumerate(METRICS)}
    fields = [f"  {m.proto_type} {m.name} = {numbers[m.name]};" for m in metrics]
    fields += [f"  {_KEY_PROTO_TYPES[name]} {name} = {number};" for name, number in KEY_FIELD_NUMBERS.items()]
    return 'syntax = "proto3";\nmessage Row {\n' + "\n".join(fields) + "\n}\n"


RUNS_TABLE_DDL = (
    f"CREATE TABLE IF NOT EXISTS {RUNS_TABLE} (run_id String, test_id String, started_at DateTime)\n"
    "ENGINE = ReplacingMergeTree ORDER BY (test_id, run_id)"
)


def ensure_schema(client, ttl_days: int, metrics: Sequence[Metric] = METRICS) -> list[str]:  # type: ignore[no-untyped-def]
    """Creates missing tables, adds columns for metrics new to the catalog, applies the TTL.

    Never drops or retypes a column: old rows read 0 for a metric added after them. Returns the
    names of the columns it added.
    """
    client.command(samples_table_ddl(ttl_days, metrics))
    client.command(RUNS_TABLE_DDL)
    existing = {row[0] for row in client.query(
        "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = {table:String}",
        parameters={"table": SAMPLES_TABLE}).result_rows}
    added = [(name, ctype) for name, ctype in metric_columns(metrics) if name not in existing]
    for name, ctype in added:
        client.command(f"ALTER TABLE {SAMPLES_TABLE} ADD COLUMN IF NOT EXISTS {quote(name)} {ctype}")
        log.info("metrics_column_added", column=name, type=ctype)
    engine = client.query(
        "SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = {table:String}",
        parameters={"table": SAMPLES_TABLE}).result_rows[0][0]
    if f"toIntervalDay({int(ttl_days)})" not in engine:
        client.command(f"ALTER TABLE {SAMPLES_TABLE} MODIFY TTL second + INTERVAL {int(ttl_days)} DAY")
        log.info("metrics_ttl_changed", days=ttl_days)
    if f"min_bytes_for_wide_part = {WIDE_PART_MIN_BYTES}" not in engine:  # tables created before the setting
        client.command(f"ALTER TABLE {SAMPLES_TABLE} MODIFY SETTING min_bytes_for_wide_part = {WIDE_PART_MIN_BYTES}")
    return [name for name, _ in added]
