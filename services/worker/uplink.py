"""Metric batches waiting for the gateway's ack: sequence numbers, a byte bound, resend on reconnect.

Samples are grouped per run into batches with increasing sequence numbers. A batch stays here
until the gateway acks its sequence (JetStream has stored it); after a reconnect everything not
acked is sent again, and JetStream's de-duplication drops what it already had. When the bound is
reached the oldest batches are dropped and counted: memory never grows without bound.
"""

from __future__ import annotations

from collections import OrderedDict

from prometheus_client import Counter, Gauge

from callmeter.v1 import results_pb2

DROPPED = Counter("callmeter_worker_dropped_samples_total", "Samples dropped because the send buffer was full")
BUFFERED = Gauge("callmeter_worker_unacked_bytes", "Bytes of metric batches not yet acked by the gateway")


class Uplink:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.pending: dict[str, list[results_pb2.EndpointSample]] = {}
        self.next_sequence: dict[str, int] = {}
        self.unacked: OrderedDict[tuple[str, int], results_pb2.MetricBatch] = OrderedDict()
        self.unacked_bytes = 0
        self.dropped_samples = 0

    def add(self, run_id: str, sample: results_pb2.EndpointSample) -> None:
        self.pending.setdefault(run_id, []).append(sample)

    def seal(self) -> list[results_pb2.MetricBatch]:
        """Turns pending samples into new batches (one per run) to send now."""
        batches = []
        for run_id, samples in self.pending.items():
            if not samples:
                continue
            sequence = self.next_sequence.get(run_id, 0) + 1
            self.next_sequence[run_id] = sequence
            # worker_id is left to the gateway, which knows who authenticated the stream.
            batch = results_pb2.MetricBatch(run_id=run_id, sequence=sequence, samples=samples)
            self.unacked[(run_id, sequence)] = batch
            self.unacked_bytes += batch.ByteSize()
            batches.append(batch)
        self.pending.clear()
        self._enforce_bound()
        BUFFERED.set(self.unacked_bytes)
        return batches

    def ack(self, run_id: str, sequence: int) -> None:
        for key in [k for k in self.unacked if k[0] == run_id and k[1] <= sequence]:
            self.unacked_bytes -= self.unacked.pop(key).ByteSize()
        BUFFERED.set(self.unacked_bytes)

    def resend(self) -> list[results_pb2.MetricBatch]:
        """Every batch not yet acked, oldest first (after a reconnect)."""
        return list(self.unacked.values())

    def is_drained(self, run_id: str) -> bool:
        return not self.pending.get(run_id) and not any(k[0] == run_id for k in self.unacked)

    def _enforce_bound(self) -> None:
        while self.unacked_bytes > self.max_bytes and self.unacked:
            _, batch = self.unacked.popitem(last=False)
            self.unacked_bytes -= batch.ByteSize()
            self.dropped_samples += len(batch.samples)
            DROPPED.inc(len(batch.samples))
