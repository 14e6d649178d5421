"""The ClickHouse tables, generated from the metrics catalog, and their migration.

endpoint_seconds holds one row per (run, group, endpoint, second), one column per catalog
metric, values as the scaled integers of the wire. ReplacingMergeTree on that key makes a
replayed batch harmless: queries read with FINAL, so a key counts once however often it landed.
run_tests maps runs to their test for trends (filled from the orchestrator's run-start notices).

Two rollups hold what run summaries need, so a summary does not read raw rows:
- rollup_group_seconds, one row per (run, group, second): sums, counts, the MOS minimum, the
  failures by code, and the exact quantile states of the summary's p95s;
- rollup_endpoints, one row per (run, group, endpoint): its newest second (the summary's
  "endpoints") and its outcome then (the summary's outcomes).
Ingest recomputes, after each insert into endpoint_seconds, the rollup rows of every (run, group,
second) the insert touched, from endpoint_seconds FINAL (``rollup_refresh_sql``). A recomputed row
replaces the earlier one (ReplacingMergeTree), so a replayed batch, however it arrives, cannot be
counted twice, unlike a materialized view's per-insert aggregate. The rollups are derived data:
when their definition changes they are dropped and rebuilt from the raw rows at start.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from callmeter.catalog import BY_NAME, METRICS, Metric

log = structlog.get_logger(__name__)

SAMPLES_TABLE = "endpoint_seconds"
RUNS_TABLE = "run_tests"
GROUP_SECONDS_TABLE = "rollup_group_seconds"
ENDPOINTS_TABLE = "rollup_endpoints"

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
    f"CREATE TABLE IF NOT EXISTS {RUNS_TABLE} (run_id String, test_id String, started_at DateTime, "
    "answering_groups Array(String))\nENGINE = ReplacingMergeTree ORDER BY (test_id, run_id)"
)
# Stores made before the runs' answering groups were kept.
RUNS_TABLE_MIGRATION = f"ALTER TABLE {RUNS_TABLE} ADD COLUMN IF NOT EXISTS answering_groups Array(String)"


# ---------------------------------------------------------------------------------------------
# The rollups. What the run summary counts is defined here, once: the rollup computes it from
# raw rows, queries.py only adds the seconds (and groups) up.

ACTIVE = "call_active = 1"
# MOS and R factor come from the same E-model step; 0 means it has not produced a value yet.
QUALITY_MEASURED = "call_active = 1 AND mos > 0"


def failure_code_sql() -> str:
    """The code a second's failed calls are filed under.

    call_last_code is the final code of the endpoint's newest INVITE in that second. Where at
    most one call ends per endpoint-second (the usual case) this is exact. When a failed and a
    connected call end in the same endpoint-second, the newest code may be a success: those
    failures are filed under 0, the proto's "no response", as their real code is unknown.
    """
    return "if(call_last_code >= 300, call_last_code, 0)"


def scaled(name: str) -> str:
    """The metric's column in its unit (a Float64, as every query reads it)."""
    return f"{quote(name)} / {BY_NAME[name].scale}"


#: The summary's percentile. A rollup column holds the quantileExactInclusive state of the
#: metric in its unit: the very Float64 values the query over raw rows sorted, so merging the
#: seconds' states gives its result bit for bit (quantileExactInclusive keeps every value).
#: These states are most of the rollup's bytes: ZSTD stores them in a third less than LZ4.
P95 = 0.95
QUANTILE_STATE = f"AggregateFunction(quantileExactInclusive({P95}), Float64) CODEC(ZSTD(3))"


def _p95_state(name: str, condition: str) -> str:
    return f"quantileExactInclusiveStateIf({P95})({scaled(name)}, {condition})"


#: rollup_group_seconds after its key (run_id, group, second): (column, type, what it holds as
#: an aggregate over the raw rows of that group-second, read FINAL).
GROUP_SECOND_COLUMNS: tuple[tuple[str, str, str], ...] = (
    # Endpoints reporting in the second; also the row's version: of two recomputations of the
    # same second, the one that saw more rows wins, whatever order they were inserted in.
    ("endpoints", "UInt32", "toUInt32(count())"),
    ("calls_attempted", "UInt64", "sum(calls_attempted)"),
    ("calls_connected", "UInt64", "sum(calls_connected)"),
    ("calls_failed", "UInt64", "sum(calls_failed)"),
    ("failures_by_code", "Map(UInt32, UInt64)",
     f"sumMapIf(map({failure_code_sql()}, toUInt64(calls_failed)), calls_failed > 0)"),
    ("mos_sum", "UInt64", f"sumIf(mos, {QUALITY_MEASURED})"),
    ("mos_count", "UInt64", f"countIf({QUALITY_MEASURED})"),
    ("mos_min", "UInt32", f"minIf(mos, {QUALITY_MEASURED})"),  # 0 when mos_count is 0
    ("rx_lost", "UInt64", "sum(rx_lost)"),
    ("rx_packets", "UInt64", "sum(rx_packets)"),
    ("jitter_ms", QUANTILE_STATE, _p95_state("rx_jitter_us", ACTIVE)),
    # RTCP has given an RTT.
    ("rtt_ms", QUANTILE_STATE, _p95_state("rtt_us", f"{ACTIVE} AND rtt_us > 0")),
    # Seconds in which a call connected and reported its setup time: each call weighs once.
    ("setup_ms", QUANTILE_STATE, _p95_state("setup_time_ms", "calls_connected > 0 AND setup_time_ms > 0")),
)

#: rollup_endpoints after its key (run_id, group, endpoint): the newest second seen (the row's
#: version, so the newest wins) and the endpoint's outcome in it (callmeter/common/outcomes.py).
ENDPOINT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("second", "DateTime", "max(second)"),
    ("outcome", "UInt32", "argMax(outcome, second)"),
    ("outcome_code", "UInt32", "argMax(outcome_code, second)"),
)


@dataclass(frozen=True)
class Rollup:
    """One rollup table: its key, its columns and the aggregates the refresh fills them with."""

    table: str
    #: The raw columns the refresh groups by; also the table's ReplacingMergeTree key.
    key: tuple[str, ...]
    #: (column, type, aggregate over the raw rows of one key).
    columns: tuple[tuple[str, str, str], ...]
    engine: str


ROLLUPS = (
    Rollup(GROUP_SECONDS_TABLE, ("run_id", "group", "second"), GROUP_SECOND_COLUMNS,
           "ENGINE = ReplacingMergeTree(endpoints)\nPARTITION BY toYYYYMM(second)"),
    # Not partitioned: an endpoint's row moves on to newer seconds, and merges replace rows
    # only within a partition.
    Rollup(ENDPOINTS_TABLE, ("run_id", "group", "endpoint"), ENDPOINT_COLUMNS, "ENGINE = ReplacingMergeTree(second)"),
)
ROLLUP_TABLES = tuple(rollup.table for rollup in ROLLUPS)
_KEY_TYPES = dict(KEY_COLUMNS)

#: The raw rows a refresh reads: those of the (run_id, group, second) keys an insert touched.
#: The first conditions only narrow what is read (the sorting key, the parts' range of seconds).
TOUCHED_KEYS = ("run_id IN {runs:Array(String)} AND `group` IN {groups:Array(String)} "
                "AND second BETWEEN {first:DateTime} AND {last:DateTime} "
                "AND (run_id, `group`, second) IN {keys:Array(Tuple(String, String, DateTime))}")
ONE_RUN = "run_id = {run_id:String}"


def _rollup_body(rollup: Rollup) -> str:
    columns = [(name, _KEY_TYPES[name]) for name in rollup.key] + [(name, ctype) for name, ctype, _ in rollup.columns]
    listed = ",\n  ".join(f"{quote(name)} {ctype}" for name, ctype in columns)
    return (f"CREATE TABLE IF NOT EXISTS {rollup.table} (\n  {listed}\n)\n{rollup.engine}\n"
            f"ORDER BY ({', '.join(quote(name) for name in rollup.key)})")


def rollup_refresh_sql(where: str) -> list[str]:
    """One ``INSERT … SELECT`` per rollup, recomputing its rows from the raw rows ``where`` selects.

    ``where`` must select whole (run, group, second)s: every raw row of each one it touches
    (TOUCHED_KEYS or ONE_RUN), so that each recomputed row is complete.
    """
    statements = []
    for rollup in ROLLUPS:
        key = [quote(name) for name in rollup.key]
        names = key + [quote(name) for name, _, _ in rollup.columns]
        values = key + [aggregate for _, _, aggregate in rollup.columns]
        statements.append(f"INSERT INTO {rollup.table} ({', '.join(names)})\nSELECT {', '.join(values)}\n"
                          f"FROM {SAMPLES_TABLE} FINAL\nWHERE {where}\nGROUP BY {', '.join(key)}")
    return statements


#: Names the rollups' definition: a store whose rollup tables carry another one rebuilds them.
ROLLUP_VERSION = "callmeter rollup " + hashlib.sha256("\n".join(
    [_rollup_body(rollup) for rollup in ROLLUPS] + rollup_refresh_sql(TOUCHED_KEYS)).encode()).hexdigest()[:16]


#: The comment of rollup tables being filled: a start that finds it (a crash while building) builds again.
ROLLUP_BUILDING = "callmeter rollup building"


def rollup_ddls(ttl_days: int, comment: str = ROLLUP_VERSION) -> list[str]:
    return [f"{_rollup_body(rollup)}\nTTL second + INTERVAL {int(ttl_days)} DAY\nCOMMENT '{comment}'"
            for rollup in ROLLUPS]


def ensure_schema(client, ttl_days: int, metrics: Sequence[Metric] = METRICS) -> list[str]:  # type: ignore[no-untyped-def]
    """Creates missing tables, adds columns for metrics new to the catalog, applies the TTL.

    Never drops or retypes a raw column: old rows read 0 for a metric added after them. Rollup
    tables of another definition are rebuilt from the raw rows. Returns the names of the raw
    columns it added.
    """
    client.command(samples_table_ddl(ttl_days, metrics))
    client.command(RUNS_TABLE_DDL)
    client.command(RUNS_TABLE_MIGRATION)
    existing = {row[0] for row in client.query(
        "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = {table:String}",
        parameters={"table": SAMPLES_TABLE}).result_rows}
    added = [(name, ctype) for name, ctype in metric_columns(metrics) if name not in existing]
    for name, ctype in added:
        client.command(f"ALTER TABLE {SAMPLES_TABLE} ADD COLUMN IF NOT EXISTS {quote(name)} {ctype}")
        log.info("metrics_column_added", column=name, type=ctype)
    _apply_ttl(client, SAMPLES_TABLE, ttl_days)
    if f"min_bytes_for_wide_part = {WIDE_PART_MIN_BYTES}" not in _engine(client, SAMPLES_TABLE):  # older tables
        client.command(f"ALTER TABLE {SAMPLES_TABLE} MODIFY SETTING min_bytes_for_wide_part = {WIDE_PART_MIN_BYTES}")
    ensure_rollups(client, ttl_days)
    return [name for name, _ in added]


def ensure_rollups(client, ttl_days: int) -> bool:  # type: ignore[no-untyped-def]
    """Creates the rollup tables, or rebuilds them when they hold another definition; True if built.

    Building fills them from endpoint_seconds FINAL, run by run (a store made before the rollups,
    or by a version that computed them otherwise), and names their version only once they are
    full. It runs before the consumers start.
    """
    versions = dict(client.query(
        "SELECT name, comment FROM system.tables WHERE database = currentDatabase() AND name IN {tables:Array(String)}",
        parameters={"tables": list(ROLLUP_TABLES)}).result_rows)
    if all(versions.get(table) == ROLLUP_VERSION for table in ROLLUP_TABLES):
        for table in ROLLUP_TABLES:
            _apply_ttl(client, table, ttl_days)
        return False
    for table in ROLLUP_TABLES:
        client.command(f"DROP TABLE IF EXISTS {table}")
    for ddl in rollup_ddls(ttl_days, ROLLUP_BUILDING):
        client.command(ddl)
    runs = [row[0] for row in client.query(f"SELECT DISTINCT run_id FROM {SAMPLES_TABLE}").result_rows]
    log.info("metrics_rollups_building", version=ROLLUP_VERSION, runs=len(runs))
    for run_id in runs:
        for statement in rollup_refresh_sql(ONE_RUN):
            client.command(statement, parameters={"run_id": run_id})
    for table in ROLLUP_TABLES:
        client.command(f"ALTER TABLE {table} MODIFY COMMENT '{ROLLUP_VERSION}'")
    log.info("metrics_rollups_built", version=ROLLUP_VERSION, replaced=sorted(versions))
    return True


def _engine(client, table: str) -> str:  # type: ignore[no-untyped-def]
    return str(client.query(
        "SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = {table:String}",
        parameters={"table": table}).result_rows[0][0])


def _apply_ttl(client, table: str, ttl_days: int) -> None:  # type: ignore[no-untyped-def]
    if f"toIntervalDay({int(ttl_days)})" not in _engine(client, table):
        client.command(f"ALTER TABLE {table} MODIFY TTL second + INTERVAL {int(ttl_days)} DAY")
        log.info("metrics_ttl_changed", table=table, days=ttl_days)
