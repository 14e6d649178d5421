"""Stores metric batches in JetStream; the worker is acked only after JetStream has them."""

from __future__ import annotations

from nats.js.client import JetStreamContext
from prometheus_client import Counter

from callmeter.common.stores.metrics_stream import batch_msg_id, batch_subject
from callmeter.v1 import results_pb2

BATCHES = Counter("callmeter_gateway_metric_batches_total", "Metric batches stored in JetStream")
SAMPLES = Counter("callmeter_gateway_samples_total", "Endpoint-seconds stored in JetStream")
DUPLICATES = Counter("callmeter_gateway_duplicate_batches_total", "Resent batches JetStream already had")


class BatchPublisher:
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def publish(self, worker_id: str, batch: results_pb2.MetricBatch, payload: bytes) -> None:
        """Stores ``payload``, the serialized ``batch`` with ``worker_id`` in it."""
        ack = await self.js.publish(
            batch_subject(batch.run_id, worker_id),
            payload,
            headers={"Nats-Msg-Id": batch_msg_id(worker_id, batch.run_id, batch.sequence)},
        )
        if ack.duplicate:
            DUPLICATES.inc()
            return
        BATCHES.inc()
        SAMPLES.inc(len(batch.samples))
