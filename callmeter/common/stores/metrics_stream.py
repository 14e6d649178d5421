"""The JetStream stream that carries metric batches from the gateway to metrics-ingest.

Subjects: ``callmeter.metrics.<run_id>.<worker_id>``, payload a serialized ``MetricBatch``,
header ``Nats-Msg-Id`` = ``<worker_id>:<run_id>:<sequence>`` so that JetStream drops a batch
resent after a reconnect within the de-duplication window.
"""

from __future__ import annotations

import re

from nats.js.api import StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError

from callmeter.v1 import runs_pb2

STREAM = "CALLMETER_METRICS"
SUBJECT_PREFIX = "callmeter.metrics"
DEADLETTER_SUBJECT = "callmeter.deadletter.metrics"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def is_subject_token(value: str) -> bool:
    """Ids put into subjects must not contain dots, wildcards or spaces."""
    return bool(_TOKEN.match(value))


def batch_subject(run_id: str, worker_id: str) -> str:
    return f"{SUBJECT_PREFIX}.{run_id}.{worker_id}"


def batch_msg_id(worker_id: str, run_id: str, sequence: int) -> str:
    return f"{worker_id}:{run_id}:{sequence}"


async def ensure_stream(js: JetStreamContext, replicas: int = 1, duplicate_window_s: float = 120.0,
                        max_age_s: float = 7 * 86400.0, max_bytes: int = -1) -> None:
    """Creates the stream or updates its limits; safe to call from every replica."""
    config = StreamConfig(
        name=STREAM,
        subjects=[f"{SUBJECT_PREFIX}.>"],
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=duplicate_window_s,
        max_age=max_age_s,
        max_bytes=max_bytes,
    )
    try:
        await js.add_stream(config)
    except BadRequestError:
        await js.update_stream(config)


# The orchestrator tells metrics-ingest which test a run belongs to (for trends across runs):
# a serialized callmeter.v1.Run on this subject, in a stream metrics-ingest creates.
RUNS_STREAM = "CALLMETER_RUNS"
RUN_STARTED_SUBJECT = "callmeter.runs.started"


async def publish_run_started(js: JetStreamContext, run: runs_pb2.Run) -> None:
    """Idempotent: JetStream drops a repeat within its de-duplication window."""
    await js.publish(RUN_STARTED_SUBJECT, run.SerializeToString(), headers={"Nats-Msg-Id": f"run-started:{run.id}"})
