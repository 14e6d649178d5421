"""How the orchestrator reaches a worker through whichever gateway replica holds its stream.

The orchestrator sends a serialized ``GatewayMessage`` as a NATS request to
``callmeter.workers.<worker_id>.commands``. A gateway replica subscribes to that subject for each
worker whose stream it holds (services/gateway/commands.py) and replies ``DELIVERED`` once the
message is queued on the stream. Not delivered:

* no replica subscribed (the worker is connected nowhere): the server answers "no responders" at
  once (a client that speaks headers, as nats-py does with nats-server 2.2+, asks for that
  answer), so one offline worker does not hold up the messages to the others;
* the stream is ending, or the subscriber's connection is gone without the server knowing yet:
  no reply within the timeout.
"""

from __future__ import annotations

import nats.errors
from nats.aio.client import Client

from callmeter.v1 import workers_pb2

DELIVERED = b"delivered"


def command_subject(worker_id: str) -> str:
    return f"callmeter.workers.{worker_id}.commands"


async def send_to_worker(nc: Client, worker_id: str, message: workers_pb2.GatewayMessage,
                         timeout_s: float = 5.0) -> bool:
    """True when a gateway replica took the message for the worker's stream; False at once when no
    replica holds it (no responders), or after ``timeout_s`` without a reply."""
    try:
        reply = await nc.request(command_subject(worker_id), message.SerializeToString(), timeout=timeout_s)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return False
    return reply.data == DELIVERED
