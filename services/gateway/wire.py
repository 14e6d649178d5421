"""A worker's messages as they came off the stream: parsed, with their bytes kept.

Encoding is what a metric batch costs the gateway most: on a 100-endpoint batch with the full
catalog, ``ByteSize()`` and ``SerializeToString()`` each took more than twice as long as parsing it
(upb). So sizes come from the received bytes, and a batch is published as the bytes the worker
sent with the gateway's ``worker_id`` appended: for a singular protobuf field the last value on
the wire wins, so it replaces any ``worker_id`` the worker wrote.
"""

from __future__ import annotations

from dataclasses import dataclass

from callmeter.common.varint import encode_varint, read_varint
from callmeter.v1 import workers_pb2

# WorkerMessage.metrics: field 4, length-delimited. MetricBatch.worker_id: field 2, length-delimited.
METRICS_TAG = 4 << 3 | 2
WORKER_ID_TAG = 2 << 3 | 2


@dataclass(frozen=True, slots=True)
class Received:
    message: workers_pb2.WorkerMessage
    data: bytes

    @classmethod
    def parse(cls, data: bytes) -> Received:
        """The gRPC request deserializer of GatewayService.Connect."""
        return cls(workers_pb2.WorkerMessage.FromString(data), data)

    def batch_bytes(self) -> bytes:
        """The MetricBatch as the worker encoded it (re-encoded only if other fields came with it)."""
        if self.data[:1] == bytes([METRICS_TAG]):
            length, start = read_varint(self.data, 1)
            if start + length == len(self.data):
                return self.data[start:]
        return self.message.metrics.SerializeToString()


def with_worker_id(batch: bytes, worker_id: str) -> bytes:
    """The batch's bytes with ``worker_id`` set, overriding the one in them, if any."""
    encoded = worker_id.encode()
    return batch + bytes([WORKER_ID_TAG]) + encode_varint(len(encoded)) + encoded
