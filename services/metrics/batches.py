"""From a NATS message to rows: decoding, checks, and the buffer of the next insert.

A batch is taken or refused whole, so a refused batch sits in the dead-letter stream exactly as
it was sent. Fields a newer worker sends and this catalog lacks are ignored (protobuf's forward
compatibility): upgrade metrics-ingest before the workers to keep a new metric.

Reading ~150 metrics attribute by attribute costs Python far more than the store's insert, so
the rows reach the store as protobuf: upb parses and checks each batch and serializes each
sample's ``EndpointMetrics`` again (every field once, zeros left out), the buffer adds the key
fields to each and frames them, and ClickHouse parses the rows (format ``Protobuf``, with the row
schema of ``schema.protobuf_row_schema`` passed inline). ``RowBuffer.columns`` builds plain
columns instead, for a ClickHouse server too old to take an inline schema.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from google.protobuf.message import DecodeError

from callmeter.catalog import METRICS, Metric
from callmeter.common.stores.metrics_stream import SUBJECT_PREFIX
from callmeter.common.varint import encode_varint
from callmeter.v1 import endpoint_metrics_pb2, results_pb2
from services.metrics.schema import KEY_COLUMNS, KEY_FIELD_NUMBERS, protobuf_row_schema

#: A sample may be stamped this far ahead of our clock (worker clocks drift).
MAX_CLOCK_AHEAD_S = 3600


@dataclass(frozen=True)
class Refusal:
    #: A short label, also the ``reason`` of the dead-letter counter.
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Rows:
    """The checked samples of one batch, as the buffer needs them."""

    run_id: str
    worker_id: str
    groups: list[str]
    endpoints: list[int]
    seconds: list[int]
    #: Each sample's EndpointMetrics, serialized again by upb.
    metrics: list[bytes]


@dataclass(frozen=True)
class ProtobufRows:
    """Length-delimited ``Row`` messages of ``schema`` (ClickHouse format ``Protobuf``)."""

    data: bytes
    schema: str
    column_names: list[str]
    rows: int


def decode_batch(subject: str, payload: bytes, max_bytes: int, oldest: int, newest: int) -> results_pb2.MetricBatch | Refusal:
    """The batch, or why it cannot be stored. ``oldest``/``newest`` bound the sample seconds."""
    batch = _parse(subject, payload, max_bytes)
    if isinstance(batch, Refusal):
        return batch
    samples = batch.samples
    return _check([s.group for s in samples], [s.endpoint for s in samples], [s.second for s in samples],
                  oldest, newest) or batch


def decode_rows(subject: str, payload: bytes, max_bytes: int, oldest: int, newest: int) -> Rows | Refusal:
    """Like ``decode_batch``, but what the buffer takes: the ingest's path."""
    batch = _parse(subject, payload, max_bytes)
    if isinstance(batch, Refusal):
        return batch
    groups: list[str] = []
    endpoints: list[int] = []
    seconds: list[int] = []
    metrics: list[bytes] = []
    for sample in batch.samples:  # one pass: each sample's Python wrapper is made once
        groups.append(sample.group)
        endpoints.append(sample.endpoint)
        seconds.append(sample.second)
        metrics.append(sample.metrics.SerializeToString())
    return _check(groups, endpoints, seconds, oldest, newest) or Rows(batch.run_id, batch.worker_id, groups, endpoints,
                                                                      seconds, metrics)


def _parse(subject: str, payload: bytes, max_bytes: int) -> results_pb2.MetricBatch | Refusal:
    if len(payload) > max_bytes:
        return Refusal("oversized", f"{len(payload)} bytes, limit {max_bytes}")
    batch = results_pb2.MetricBatch()
    try:
        batch.ParseFromString(payload)
    except DecodeError as exc:
        return Refusal("decode_error", f"not a MetricBatch: {exc}")
    expected = f"{SUBJECT_PREFIX}.{batch.run_id}.{batch.worker_id}"
    if not batch.run_id or not batch.worker_id or subject != expected:
        return Refusal("invalid_batch", f"run_id {batch.run_id!r} and worker_id {batch.worker_id!r} do not match subject {subject}")
    return batch


def _check(groups: list[str], endpoints: list[int], seconds: list[int], oldest: int, newest: int) -> Refusal | None:
    """None if every sample is valid (checked in bulk), else why the first bad one is not."""
    if not groups or ("" not in groups and min(endpoints) >= 0 and oldest <= min(seconds) and max(seconds) <= newest):
        return None
    for index, (group, endpoint, second) in enumerate(zip(groups, endpoints, seconds, strict=True)):
        if not group:
            return Refusal("invalid_sample", f"sample {index}: empty group")
        if endpoint < 0:
            return Refusal("invalid_sample", f"sample {index}: endpoint {endpoint} < 0")
        if not oldest <= second <= newest:
            return Refusal("invalid_sample", f"sample {index}: second {second} outside [{oldest}, {newest}]")
    return None


_varint = functools.lru_cache(maxsize=1 << 12)(encode_varint)


#: Varints of 0 … 16,383 (up to two bytes), looked up rather than encoded.
_SMALL = 1 << 14
_SMALL_VARINTS = [encode_varint(value) for value in range(_SMALL)]


def _string_field(number: int, value: str) -> bytes:
    raw = value.encode()
    return _varint(number << 3 | 2) + _varint(len(raw)) + raw


_ENDPOINT_TAG = _varint(KEY_FIELD_NUMBERS["endpoint"] << 3)
_SECOND_TAG = _varint(KEY_FIELD_NUMBERS["second"] << 3)


class RowBuffer:
    """The rows waiting for the next insert."""

    def __init__(self, metrics: Sequence[Metric] = METRICS) -> None:
        self.metrics = tuple(metrics)
        self.schema = protobuf_row_schema(self.metrics)
        self.column_names = [name for name, _ in KEY_COLUMNS] + [m.name for m in self.metrics]
        self.clear()

    def clear(self) -> None:
        self.rows = 0
        self.batches: list[Rows] = []

    def add(self, batch: Rows | results_pb2.MetricBatch) -> None:
        if isinstance(batch, results_pb2.MetricBatch):
            samples = batch.samples
            batch = Rows(batch.run_id, batch.worker_id, [s.group for s in samples], [s.endpoint for s in samples],
                         [s.second for s in samples], [s.metrics.SerializeToString() for s in samples])
        self.batches.append(batch)
        self.rows += len(batch.groups)

    def keys(self) -> list[tuple[str, str, int]]:
        """The (run_id, group, second) keys the rows touch: what the rollup refresh recomputes.

        Per batch, each of its groups with each of its seconds (one of each, usually): a key
        with no rows in fact costs the refresh nothing.
        """
        return sorted({(batch.run_id, group, second) for batch in self.batches
                       for group in set(batch.groups) for second in set(batch.seconds)})

    def protobuf_rows(self) -> ProtobufRows:
        """Every row as a ``Row`` message: the sample's metrics, then its key fields."""
        pieces: list[bytes] = []
        extend, small = pieces.extend, _SMALL_VARINTS
        for batch in self.batches:
            ids = _string_field(KEY_FIELD_NUMBERS["run_id"], batch.run_id) + _string_field(
                KEY_FIELD_NUMBERS["worker_id"], batch.worker_id)
            # Before the endpoint: ids, group; after it: the second. Few distinct values per batch.
            heads = {group: ids + _string_field(KEY_FIELD_NUMBERS["group"], group) + _ENDPOINT_TAG
                     for group in set(batch.groups)}
            tails = {second: _SECOND_TAG + _varint(second) for second in set(batch.seconds)}
            if len(heads) == 1 and len(tails) == 1:  # the usual batch: one group, one second
                (head,), (tail,) = heads.values(), tails.values()
                keys = [head + (small[e] if e < _SMALL else _varint(e)) + tail for e in batch.endpoints]
            else:
                keys = [heads[g] + _varint(e) + tails[s] for g, e, s in zip(batch.groups, batch.endpoints, batch.seconds, strict=True)]
            for metrics, key in zip(batch.metrics, keys, strict=True):
                size = len(metrics) + len(key)
                extend((small[size] if size < _SMALL else _varint(size), metrics, key))
        return ProtobufRows(b"".join(pieces), self.schema, self.column_names, self.rows)

    @property
    def columns(self) -> dict[str, list[Any]]:
        """The same rows as one list per table column, in the table's order."""
        names = [m.name for m in self.metrics]
        values = attrgetter(*names) if len(names) > 1 else lambda m: (getattr(m, names[0]),)
        parse = endpoint_metrics_pb2.EndpointMetrics.FromString
        columns: dict[str, list[Any]] = {name: [] for name in self.column_names}
        rows = []
        for batch in self.batches:
            count = len(batch.groups)
            columns["run_id"] += [batch.run_id] * count
            columns["worker_id"] += [batch.worker_id] * count
            columns["group"] += batch.groups
            columns["endpoint"] += batch.endpoints
            columns["second"] += batch.seconds
            rows += [values(parse(blob)) for blob in batch.metrics]
        for name, column in zip(names, zip(*rows, strict=True) if rows else [() for _ in names], strict=True):
            columns[name] = list(column)
        return columns
