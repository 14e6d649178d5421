"""From a NATS message to column lists: decoding, checks, and the buffer of the next insert.

A batch is taken or refused whole, so a refused batch sits in the dead-letter stream exactly as
it was sent. Fields a newer worker sends and this catalog lacks are ignored (protobuf's forward
compatibility): upgrade metrics-ingest before the workers to keep a new metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from callmeter.catalog import METRICS, Metric
from callmeter.common.stores.metrics_stream import SUBJECT_PREFIX
from callmeter.v1 import results_pb2
from services.metrics.schema import KEY_COLUMNS

#: A sample may be stamped this far ahead of our clock (worker clocks drift).
MAX_CLOCK_AHEAD_S = 3600


@dataclass(frozen=True)
class Refusal:
    #: A short label, also the ``reason`` of the dead-letter counter.
    reason: str
    detail: str


def decode_batch(subject: str, payload: bytes, max_bytes: int, oldest: int, newest: int) -> results_pb2.MetricBatch | Refusal:
    """The batch, or why it cannot be stored. ``oldest``/``newest`` bound the sample seconds."""
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
    for index, sample in enumerate(batch.samples):
        if not sample.group:
            return Refusal("invalid_sample", f"sample {index}: empty group")
        if sample.endpoint < 0:
            return Refusal("invalid_sample", f"sample {index}: endpoint {sample.endpoint} < 0")
        if not oldest <= sample.second <= newest:
            return Refusal("invalid_sample", f"sample {index}: second {sample.second} outside [{oldest}, {newest}]")
    return batch


class RowBuffer:
    """Columns of the rows waiting for the next insert, in the table's column order."""

    def __init__(self, metrics: Sequence[Metric] = METRICS) -> None:
        self.metric_names = [m.name for m in metrics]
        self.columns: dict[str, list[Any]] = {name: [] for name, _ in KEY_COLUMNS}
        self.columns.update({name: [] for name in self.metric_names})
        self.rows = 0

    def add(self, batch: results_pb2.MetricBatch) -> None:
        samples = batch.samples
        count = len(samples)
        self.columns["run_id"].extend([batch.run_id] * count)
        self.columns["worker_id"].extend([batch.worker_id] * count)
        self.columns["group"].extend([s.group for s in samples])
        self.columns["endpoint"].extend([s.endpoint for s in samples])
        self.columns["second"].extend([s.second for s in samples])
        values = [s.metrics for s in samples]
        for name in self.metric_names:
            self.columns[name].extend([getattr(v, name) for v in values])
        self.rows += count

    def clear(self) -> None:
        for column in self.columns.values():
            column.clear()
        self.rows = 0
