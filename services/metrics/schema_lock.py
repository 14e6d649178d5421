"""One metrics-ingest replica at a time brings the store's schema up to date.

Columns, TTLs and above all rollup rebuilds (services/metrics/schema.py) drop and refill shared
tables: two replicas on one ClickHouse server doing it at once would undo each other's work. The
replica that changes the schema holds a lease in a NATS key-value bucket (the broker every replica
already has): it creates the key (only one create succeeds), renews it every third of the lease
while it works, and deletes it when done. A replica that dies holding it leaves a key that expires
with the bucket's TTL, so the others wait at most a lease for a dead holder.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator

import nats.errors
import nats.js.errors
import structlog
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

log = structlog.get_logger(__name__)

BUCKET = "callmeter_locks"
KEY = "metrics-schema"
LEASE_S = 30.0
POLL_S = 0.5


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@contextlib.asynccontextmanager
async def schema_lock(js: JetStreamContext, replicas: int = 1, lease_s: float = LEASE_S,
                      bucket: str = BUCKET) -> AsyncIterator[None]:
    """Held for the body; waits while another replica holds it."""
    kv = await js.create_key_value(bucket=bucket, ttl=lease_s, history=1, replicas=replicas)
    holder = holder_name().encode()
    revision = await _acquire(kv, holder)
    renewing = asyncio.create_task(_renew(kv, holder, revision, lease_s / 3), name="schema-lock-renewal")
    try:
        yield
    finally:
        renewing.cancel()
        await asyncio.gather(renewing, return_exceptions=True)
        try:
            await kv.delete(KEY)
        except nats.errors.Error as exc:  # the lease then expires by itself
            log.warning("schema_lock_release_failed", error=str(exc) or type(exc).__name__)


async def _acquire(kv: KeyValue, holder: bytes) -> int:
    waiting = False
    while True:
        try:
            revision = await kv.create(KEY, holder)
            if waiting:
                log.info("schema_lock_taken")
            return revision
        except nats.js.errors.KeyWrongLastSequenceError:
            if not waiting:
                log.info("schema_lock_waiting", holder=await _holder(kv))
                waiting = True
            await asyncio.sleep(POLL_S)


async def _holder(kv: KeyValue) -> str:
    try:
        entry = await kv.get(KEY)
    except nats.js.errors.NotFoundError:  # expired or deleted meanwhile
        return "(gone)"
    return (entry.value or b"").decode(errors="replace")


async def _renew(kv: KeyValue, holder: bytes, revision: int, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            revision = await kv.update(KEY, holder, last=revision)
        except nats.errors.Error as exc:  # the lease may lapse: say so, the schema work goes on
            log.warning("schema_lock_renewal_failed", error=str(exc) or type(exc).__name__)
