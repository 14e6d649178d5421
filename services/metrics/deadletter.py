"""Moving a message that can never be stored out of the way, where people can look at it."""

from __future__ import annotations

import structlog
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from prometheus_client import Counter

from services.metrics.stream import REASON_HEADER, SUBJECT_HEADER

log = structlog.get_logger(__name__)

DEADLETTERS = Counter("callmeter_metrics_deadletter_total", "Messages moved to a dead-letter subject", ["reason"])

_MAX_HEADER_CHARS = 300


async def dead_letter(js: JetStreamContext, msg: Msg, subject: str, reason: str, detail: str) -> None:
    """Publishes ``msg`` unchanged to ``subject`` with the reason in a header, then terminates it.

    The dead letter's Nats-Msg-Id is the original's stream position, so a message refused
    twice (its first term lost) is stored once. If the publish fails, the message is not
    terminated and comes back later.
    """
    position = f"{msg.metadata.stream}:{msg.metadata.sequence.stream}"
    headers = {
        REASON_HEADER: f"{reason}: {' '.join(detail.split())}"[:_MAX_HEADER_CHARS],
        SUBJECT_HEADER: msg.subject,
        "Nats-Msg-Id": position,
    }
    await js.publish(subject, msg.data, headers=headers)
    await msg.term()
    DEADLETTERS.labels(reason=reason).inc()
    log.warning("message_dead_lettered", reason=reason, detail=detail, subject=msg.subject, position=position,
                msg_id=(msg.headers or {}).get("Nats-Msg-Id", ""))
