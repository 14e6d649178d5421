"""Orchestrator → worker messages: one NATS subscription per stream this replica holds.

The orchestrator sends a serialized ``GatewayMessage`` as a NATS request on the worker's command
subject (callmeter/common/stores/worker_commands.py). A replica subscribes to that subject for
each stream it holds, from admission until the stream ends (or begins to end), so a worker held
nowhere has no subscriber and NATS answers the request at once with "no responders": the sender
learns "not delivered" without waiting out its timeout.

Each subscription belongs to one stream and delivers to that stream only. When a newer stream of
the same worker replaces an older one on this replica, both are subscribed for a moment; the
older one is ending, so it takes nothing and answers nothing, and its end removes its own
subscription, never the newer one's.
"""

from __future__ import annotations

from functools import partial

import nats.errors
import structlog
from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from callmeter.common.stores.worker_commands import DELIVERED, command_subject
from callmeter.v1 import workers_pb2
from services.gateway.servicer import WorkerSession

log = structlog.get_logger(__name__)

# How long an admission waits for the NATS server to confirm the subscription (a PING round
# trip) before the worker is welcomed; past it (NATS reconnecting) the client resends it later.
CONFIRM_TIMEOUT_S = 2  # whole seconds: nats-py's flush takes an int


class NatsCommandRoutes:
    """The servicer's ``routes`` (a ``CommandRoutes``): opened for a stream at admission, closed when it ends."""

    def __init__(self, nats: Client) -> None:
        self.nats = nats
        self.subscriptions: dict[WorkerSession, Subscription] = {}

    async def open(self, session: WorkerSession) -> None:
        """Messages for ``session.worker_id`` go to this session from now on; a replica that
        cannot subscribe ends the stream, so that the worker reconnects (maybe elsewhere)."""
        try:
            self.subscriptions[session] = await self.nats.subscribe(
                command_subject(session.worker_id), cb=partial(self._deliver, session))
        except nats.errors.Error as exc:
            log.warning("command_subscribe_failed", worker_id=session.worker_id, error=str(exc) or type(exc).__name__)
            session.close("the gateway cannot receive commands for this worker")
            return
        try:  # the server has it before the worker is welcomed: a command sent after the welcome finds it
            await self.nats.flush(CONFIRM_TIMEOUT_S)
        except nats.errors.Error as exc:
            log.warning("command_subscribe_unconfirmed", worker_id=session.worker_id, error=str(exc) or type(exc).__name__)

    async def close(self, session: WorkerSession) -> None:
        """Removes this session's subscription (only its own); does nothing the second time."""
        subscription = self.subscriptions.pop(session, None)
        if subscription is None:
            return
        try:
            await subscription.unsubscribe()
        except nats.errors.Error:
            pass  # the connection is closing or closed: the server drops its subscriptions with it

    async def _deliver(self, session: WorkerSession, msg: Msg) -> None:
        """Queues the message on the session's stream and answers DELIVERED; silence when the stream
        is ending (the sender retries after a reconnect, or another replica answers)."""
        try:
            message = workers_pb2.GatewayMessage.FromString(msg.data)
        except DecodeError:
            log.warning("bad_worker_command", subject=msg.subject)
            return
        if session.send(message):
            await msg.respond(DELIVERED)
