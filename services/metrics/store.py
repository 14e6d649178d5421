"""The metrics store as ingest and the queries see it: one client, one thread.

clickhouse-connect's chDB client runs the engine in this process and blocks while it works, so
every call goes to one dedicated thread: the gRPC event loop never waits on ClickHouse, and calls
reach the client one at a time (the chDB backend also serializes calls on its handle; one thread
makes that explicit and keeps the engine on one thread for its whole life).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from callmeter.common.stores.metrics_store import connect_metrics_store
from services.metrics.batches import ProtobufRows
from services.metrics.schema import RUNS_TABLE, SAMPLES_TABLE, TOUCHED_KEYS, ensure_schema, rollup_refresh_sql

T = TypeVar("T")


class MetricsStore:
    def __init__(self, url: str, ttl_days: int) -> None:
        self.url = url
        self.ttl_days = ttl_days
        self._client: Any = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-store")

    #: Whether inserts can send protobuf rows with the schema inline (the setting
    #: format_schema_source of recent ClickHouse; chDB 4 has it); set by open(). If not,
    #: inserts send columns, which costs far more Python per row.
    protobuf_rows = False

    async def open(self) -> None:
        """Connects and brings the schema up to the catalog; an unusable store is a ConfigError."""
        self._client = await self._submit(connect_metrics_store, self.url)
        await self.call(ensure_schema, self.ttl_days)
        self.protobuf_rows = await self.call(takes_protobuf_rows)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Runs ``fn(client, *args)`` on the store thread."""
        return await self._submit(fn, self._client, *args)

    async def close(self) -> None:
        if self._client is not None:
            await self._submit(self._client.close)
            self._client = None
        self._thread.shutdown(wait=True)

    async def _submit(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, functools.partial(fn, *args))


#: Within one insert, ReplacingMergeTree would collapse repeated keys at once: that took two to
#: three times the insert's CPU here (150 metric columns), and FINAL and merges collapse them anyway.
_INSERT_SETTINGS = {"optimize_on_insert": 0}


def takes_protobuf_rows(client) -> bool:  # type: ignore[no-untyped-def]
    return bool(client.command("SELECT count() FROM system.settings WHERE name = 'format_schema_source'"))


def insert_samples(client, rows: ProtobufRows | dict[str, list[Any]], token: str) -> None:  # type: ignore[no-untyped-def]
    """One insert, of protobuf rows or of columns; ``token`` lets the store drop an identical retry."""
    settings = {**_INSERT_SETTINGS, "insert_deduplication_token": token}
    if isinstance(rows, ProtobufRows):
        client.raw_insert(SAMPLES_TABLE, rows.column_names, insert_block=rows.data, fmt="Protobuf", settings={
            **settings, "format_schema_source": "string", "format_schema": rows.schema, "format_schema_message_name": "Row"})
    else:
        client.insert(SAMPLES_TABLE, list(rows.values()), column_names=list(rows), column_oriented=True, settings=settings)


_REFRESH_SQL = rollup_refresh_sql(TOUCHED_KEYS)


def refresh_rollups(client, keys: Sequence[tuple[str, str, int]]) -> None:  # type: ignore[no-untyped-def]
    """Recomputes the rollup rows of these (run_id, group, second) keys from endpoint_seconds FINAL.

    Ingest calls it after each insert and acks the insert's messages only once it succeeded: a
    recomputed row replaces the one before, so running it again (a redelivery) is harmless.
    """
    if not keys:
        return
    parameters = {"runs": sorted({run_id for run_id, _, _ in keys}), "groups": sorted({group for _, group, _ in keys}),
                  "first": min(second for _, _, second in keys), "last": max(second for _, _, second in keys),
                  "keys": list(keys)}
    for statement in _REFRESH_SQL:
        client.command(statement, parameters=parameters)


def insert_runs(client, rows: Sequence[tuple[str, str, int, list[str]]]) -> None:  # type: ignore[no-untyped-def]
    """Rows of (run_id, test_id, started_at unix seconds, answering_groups)."""
    client.insert(RUNS_TABLE, [list(column) for column in zip(*rows, strict=True)],
                  column_names=["run_id", "test_id", "started_at", "answering_groups"], column_oriented=True)
