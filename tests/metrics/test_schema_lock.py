"""metrics-ingest replicas bring the schema up to date one at a time (a lease in NATS KV).

Real NATS. Two contenders in one process stand for two replicas; a lease created and never renewed
stands for a replica that died holding it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats
import pytest

from callmeter.common.stores.nats import EmbeddedNats
from services.metrics import schema_lock as lock
from tests.metrics.helpers import count_rows, ingest_settings, run, running_ingest

pytestmark = pytest.mark.timeout(60)


async def taken_within(contender: asyncio.Task[None], seconds: float) -> bool:
    try:
        await asyncio.wait_for(asyncio.shield(contender), seconds)
        return True
    except asyncio.TimeoutError:
        return False


def test_a_second_replica_waits_for_the_first_and_the_lease_is_renewed_while_held(nats_server: EmbeddedNats) -> None:
    async def body() -> None:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        released = asyncio.Event()

        async def first() -> None:
            async with lock.schema_lock(js, lease_s=1.5, bucket="locks_renewed"):
                await released.wait()

        async def second() -> None:
            async with lock.schema_lock(js, lease_s=1.5, bucket="locks_renewed"):
                pass

        holding = asyncio.create_task(first())
        await asyncio.sleep(0.2)
        waiting = asyncio.create_task(second())
        # Held for more than two leases: renewed, so the second replica still waits.
        assert not await taken_within(waiting, 3.5)
        released.set()
        await holding
        assert await taken_within(waiting, 2.0), "taken soon after the release"
        await nc.close()

    run(body())


def test_a_lease_left_by_a_dead_replica_expires(nats_server: EmbeddedNats) -> None:
    async def body() -> None:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        kv = await js.create_key_value(bucket="locks_dead", ttl=1.5, history=1)
        await kv.create(lock.KEY, b"dead-host:1")  # never renewed, never deleted
        began = time.monotonic()
        async with lock.schema_lock(js, lease_s=1.5, bucket="locks_dead"):
            waited = time.monotonic() - began
        assert 0.5 < waited < 5.0, waited
        await nc.close()

    run(body())


def test_ingest_opens_its_store_only_once_the_lock_is_free(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    async def body() -> None:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        released = asyncio.Event()

        async def other_replica() -> None:
            async with lock.schema_lock(js):
                await released.wait()

        holding = asyncio.create_task(other_replica())
        await asyncio.sleep(0.2)
        settings = ingest_settings(tmp_path, nats_server.url)

        async def start_ingest() -> None:
            async with running_ingest(settings) as ingest:  # the schema is there once it has started
                assert await ingest.store.call(count_rows, "no-such-run") == 0

        starting = asyncio.create_task(start_ingest())
        assert not await taken_within(starting, 1.5), "ingest started while another replica held the lock"
        assert not (tmp_path / "metrics").exists(), "the store was opened while another replica held the lock"
        released.set()
        await holding
        assert await taken_within(starting, 30.0)
        await nc.close()

    run(body())
