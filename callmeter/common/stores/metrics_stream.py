"""The JetStream stream that carries metric batches from the gateway to metrics-ingest.

Subjects: ``callmeter.metrics.<run_id>.<worker_id>``, payload a serialized ``MetricBatch``,
header ``Nats-Msg-Id`` = ``<worker_id>:<run_id>:<sequence>`` so that JetStream drops a batch
resent after a reconnect within the de-duplication window.
"""

from __future__ import annotations

import asyncio
import re

import structlog
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from callmeter.v1 import runs_pb2

log = structlog.get_logger(__name__)

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


#: How often a waiting publisher says it is still waiting for the stream.
WAIT_LOG_EVERY_S = 10.0


async def wait_for_stream(js: JetStreamContext, poll_s: float = 0.5) -> None:
    """Returns once the stream exists. metrics-ingest alone creates it and sets its limits
    (services/metrics/stream.py): a publisher that configured it too would reset them."""
    waited = 0.0
    while True:
        try:
            await js.stream_info(STREAM)
            return
        except NotFoundError:
            if waited % WAIT_LOG_EVERY_S < poll_s:
                log.warning("waiting_for_metrics_stream", stream=STREAM, waited_s=round(waited),
                            hint="metrics-ingest creates it at its start")
            await asyncio.sleep(poll_s)
            waited += poll_s


# The orchestrator tells metrics-ingest which test a run belongs to (for trends across runs):
# a serialized callmeter.v1.Run on this subject, in a stream metrics-ingest creates.
RUNS_STREAM = "CALLMETER_RUNS"
RUN_STARTED_SUBJECT = "callmeter.runs.started"


async def publish_run_started(js: JetStreamContext, run: runs_pb2.Run) -> None:
    """Idempotent: JetStream drops a repeat within its de-duplication window."""
    await js.publish(RUN_STARTED_SUBJECT, run.SerializeToString(), headers={"Nats-Msg-Id": f"run-started:{run.id}"})
