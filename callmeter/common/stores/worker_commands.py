"""How the orchestrator reaches a worker through whichever gateway replica holds its stream.

Every gateway replica subscribes to ``callmeter.workers.*.commands``. The orchestrator sends a
serialized ``GatewayMessage`` as a NATS request to ``callmeter.workers.<worker_id>.commands``;
only the replica holding that worker's stream replies (with ``DELIVERED``), the others stay
silent, so no reply within the timeout means the worker is not connected anywhere.
"""

from __future__ import annotations

import nats.errors
from nats.aio.client import Client

from callmeter.v1 import workers_pb2

SUBJECT_WILDCARD = "callmeter.workers.*.commands"
DELIVERED = b"delivered"


def command_subject(worker_id: str) -> str:
    return f"callmeter.workers.{worker_id}.commands"


def worker_id_of(subject: str) -> str:
    return subject.split(".")[2]


async def send_to_worker(nc: Client, worker_id: str, message: workers_pb2.GatewayMessage,
                         timeout_s: float = 5.0) -> bool:
    """True when a gateway replica took the message for the worker's stream."""
    try:
        reply = await nc.request(command_subject(worker_id), message.SerializeToString(), timeout=timeout_s)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        return False
    return reply.data == DELIVERED
