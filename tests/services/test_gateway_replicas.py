"""Two gateway replicas on one NATS: a worker is held by one, the orchestrator reaches it through NATS.

Real NATS, orchestrator and two gateway processes on loopback with TLS; the workers are
``SimWorker`` protocol clients (tests/services/test_gateway.py), some on each replica. Commands are
sent as the orchestrator sends them (``send_to_worker``), and the answers to a command are also
counted one by one, so that two replicas answering for one worker shows up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
import nats
import pytest
from nats.aio.client import Client

from callmeter.common.stores.metrics_stream import STREAM, batch_msg_id
from callmeter.common.stores.worker_commands import DELIVERED, command_subject, send_to_worker
from callmeter.v1 import endpoint_metrics_pb2, results_pb2, workers_pb2
from tests.procs import ServiceProcess, eventually
from tests.services.test_gateway import Plane, SimWorker
from tests.services.test_gateway import plane as plane  # noqa: F401  (the fixture, reused)

COMMAND_KINDS = ("assignment", "cancel", "drain")
NO_RESPONDERS = "503"  # the Status header of the server's answer to a request nobody subscribes to


@dataclass
class Replicas:
    plane: Plane
    gateways: list[ServiceProcess]

    async def connect(self, replica: int, name: str, heartbeats: bool = True) -> tuple[SimWorker, str]:
        """A worker on ``gateways[replica]``; returns it and its worker id. A SimWorker has one
        writer at a time: one that sends batches does not heartbeat."""
        sim = SimWorker(self.gateways[replica].address, self.plane.pki.ca_cert.read_bytes(), self.plane.token, name)
        welcome = await sim.hello()
        assert welcome.gateway_id == f"gw-{replica + 1}"
        if heartbeats:
            sim.start_heartbeats(welcome.heartbeat_interval_s)
        return sim, welcome.worker_id


@pytest.fixture
def replicas(plane: Plane) -> Iterator[Replicas]:  # noqa: F811  (plane: the imported fixture)
    yield Replicas(plane, [plane.start_gateway(CALLMETER_GATEWAY_ID=f"gw-{i}") for i in (1, 2)])


@asynccontextmanager
async def orchestrator_side(url: str) -> AsyncIterator[Client]:
    """A NATS connection of the kind the orchestrator holds."""
    nc = await nats.connect(url)
    try:
        yield nc
    finally:
        await nc.close()


def command(kind: str, tag: str) -> workers_pb2.GatewayMessage:
    if kind == "assignment":
        return workers_pb2.GatewayMessage(assignment=workers_pb2.Assignment(run_id=tag))
    if kind == "cancel":
        return workers_pb2.GatewayMessage(cancel=workers_pb2.CancelAssignment(run_id=tag, reason="test"))
    return workers_pb2.GatewayMessage(drain=workers_pb2.Drain(reason=tag))


def tag_of(message: workers_pb2.GatewayMessage) -> str:
    kind = message.WhichOneof("message")
    return message.drain.reason if kind == "drain" else getattr(message, kind).run_id


def commands_received(sim: SimWorker) -> list[tuple[str, str]]:
    return [(m.WhichOneof("message"), tag_of(m)) for _, m in sim.received if m.WhichOneof("message") in COMMAND_KINDS]


async def answers(nc: Client, worker_id: str, message: workers_pb2.GatewayMessage, wait_s: float = 0.3) -> list[bytes]:
    """Every replica's reply to one command within ``wait_s`` (send_to_worker takes only the first);
    the server's "no responders" status, when no replica holds the worker, is not a reply."""
    inbox = nc.new_inbox()
    replies: list[bytes] = []

    async def collect(msg) -> None:  # type: ignore[no-untyped-def]
        if (msg.headers or {}).get("Status") != NO_RESPONDERS:
            replies.append(msg.data)

    subscription = await nc.subscribe(inbox, cb=collect)
    await nc.publish(command_subject(worker_id), message.SerializeToString(), reply=inbox)
    await nc.flush()
    await asyncio.sleep(wait_s)
    await subscription.unsubscribe()
    return replies


async def until(check, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout_s} s"
        await asyncio.sleep(0.02)


def batch(run_id: str, sequence: int) -> workers_pb2.WorkerMessage:
    return workers_pb2.WorkerMessage(metrics=results_pb2.MetricBatch(run_id=run_id, sequence=sequence, samples=[
        results_pb2.EndpointSample(group="g", endpoint=0, second=sequence,
                                   metrics=endpoint_metrics_pb2.EndpointMetrics(rx_packets=50))]))


async def send_batches(sim: SimWorker, run_id: str, sequences: range) -> None:
    """Sends the batches and waits for the ack of each."""
    for sequence in sequences:
        await sim.write(batch(run_id, sequence))
    wanted = {(run_id, s) for s in sequences}
    await until(lambda: wanted <= {(m.batch_ack.run_id, m.batch_ack.sequence) for _, m in sim.received
                                   if m.WhichOneof("message") == "batch_ack"}, 10, f"acks of {run_id}")


async def stored_message_ids(url: str) -> list[str]:
    async with orchestrator_side(url) as nc:
        js = nc.jetstream()
        info = await js.stream_info(STREAM)
        return [(await js.get_msg(STREAM, seq)).headers["Nats-Msg-Id"]  # type: ignore[index]
                for seq in range(info.state.first_seq, info.state.last_seq + 1)]


# ---------------------------------------------------------------- (1) and (2): commands


def test_a_command_reaches_the_worker_on_whichever_replica_holds_it(replicas: Replicas) -> None:
    async def scenario() -> None:
        held = [await replicas.connect(replica, f"w{replica + 1}-{i}") for replica in (0, 1) for i in range(2)]
        try:
            async with orchestrator_side(replicas.plane.nats.url) as nc:
                for (sim, worker_id), kind in zip(held, [*COMMAND_KINDS, "cancel"], strict=True):
                    assert await send_to_worker(nc, worker_id, command(kind, f"{kind}-{sim.name}"), timeout_s=5)
                    assert await answers(nc, worker_id, command(kind, f"again-{sim.name}")) == [DELIVERED], \
                        "exactly one replica answers for a worker"
                for sim, _ in held:
                    await until(lambda s=sim: len(commands_received(s)) == 2, 5, f"commands at {sim.name}")
                for (sim, _), kind in zip(held, [*COMMAND_KINDS, "cancel"], strict=True):
                    assert commands_received(sim) == [(kind, f"{kind}-{sim.name}"), (kind, f"again-{sim.name}")]

                # Nobody holds an unknown worker, nor one that left: no replica subscribes to its
                # subject, NATS says so at once and the sender gets False long before its timeout.
                gone_sim, gone_id = held.pop()
                await gone_sim.close()
                for worker_id in ("no-such-worker", gone_id):
                    began = time.monotonic()
                    assert not await send_to_worker(nc, worker_id, command("cancel", "nobody"), timeout_s=5.0)
                    assert time.monotonic() - began < 0.5
                    assert await answers(nc, worker_id, command("cancel", "nobody")) == []
        finally:
            await asyncio.gather(*(sim.close() for sim, _ in held))

    asyncio.run(scenario())
    workers = replicas.plane.workers()
    assert {name: w.gateway_id for name, w in workers.items()} == {
        "w1-0": "gw-1", "w1-1": "gw-1", "w2-0": "gw-2", "w2-1": "gw-2"}


def test_commands_for_workers_held_nowhere_are_not_delivered_at_once(replicas: Replicas) -> None:
    """The orchestrator dispatches one message after another: ten offline workers in a row cost
    it well under a second, not ten timeouts, and the worker after them is reached."""
    async def scenario() -> None:
        sim, worker_id = await replicas.connect(1, "after-offline")
        try:
            async with orchestrator_side(replicas.plane.nats.url) as nc:
                began = time.monotonic()
                for i in range(10):
                    assert not await send_to_worker(nc, f"offline-{i}", command("assignment", f"o{i}"))
                took = time.monotonic() - began
                assert took < 0.5, f"10 not-delivered answers took {took:.2f} s"
                assert await send_to_worker(nc, worker_id, command("assignment", "reached"))
                await until(lambda: commands_received(sim) == [("assignment", "reached")], 5, "the assignment")
        finally:
            await sim.close()

    asyncio.run(scenario())


def test_a_stream_replaced_on_the_same_replica_leaves_the_new_one_reachable(replicas: Replicas) -> None:
    """A worker reconnects to the replica that still holds its older stream: the older stream ends
    (after its linger) and takes its own command subscription with it, never the newer one's."""
    async def scenario() -> None:
        old, worker_id = await replicas.connect(0, "twin")
        new: SimWorker | None = None
        try:
            new, new_id = await replicas.connect(0, "twin")
            assert new_id == worker_id
            await until(lambda: old.disconnect_reason is not None, 5, "old stream told")
            assert old.disconnect_reason == "replaced by a new connection of the same worker"
            async with orchestrator_side(replicas.plane.nats.url) as nc:
                assert await answers(nc, worker_id, command("cancel", "while-old-lingers")) == [DELIVERED]
                await until(lambda: old.ended.is_set(), 5, "old stream ended")  # after its linger
                assert await answers(nc, worker_id, command("cancel", "after-old-ended")) == [DELIVERED]
                assert await send_to_worker(nc, worker_id, command("drain", "still-here"))
                await until(lambda: len(commands_received(new)) == 3, 5, "commands at the new stream")
                assert commands_received(new) == [("cancel", "while-old-lingers"), ("cancel", "after-old-ended"),
                                                  ("drain", "still-here")]
                assert commands_received(old) == []
                await new.close()
                began = time.monotonic()
                assert not await send_to_worker(nc, worker_id, command("cancel", "gone"))
                assert time.monotonic() - began < 0.5
        finally:
            await asyncio.gather(*(sim.close() for sim in (old, new) if sim is not None))

    asyncio.run(scenario())


# ---------------------------------------------------------------- (3): metric batches


def test_batches_from_workers_on_both_replicas_are_stored_once(replicas: Replicas) -> None:
    """Each worker sends 20 batches through its replica; then every worker moves to the other
    replica and resends all of them (as after a reconnect with nothing acked): JetStream keeps
    each Nats-Msg-Id once."""
    async def scenario() -> list[str]:
        held = [await replicas.connect(replica, f"m{replica + 1}-{i}", heartbeats=False)
                for replica in (0, 1) for i in range(2)]
        ids = {sim.name: worker_id for sim, worker_id in held}
        try:
            await asyncio.gather(*(send_batches(sim, "run-both", range(1, 21)) for sim, _ in held))
        finally:
            await asyncio.gather(*(sim.close() for sim, _ in held))
        moved = [await replicas.connect(1 if sim.name.startswith("m1") else 0, sim.name, heartbeats=False)
                 for sim, _ in held]
        try:
            assert {sim.name: worker_id for sim, worker_id in moved} == ids
            await asyncio.gather(*(send_batches(sim, "run-both", range(1, 21)) for sim, _ in moved))
        finally:
            await asyncio.gather(*(sim.close() for sim, _ in moved))
        return list(ids.values())

    worker_ids = asyncio.run(scenario())
    stored = asyncio.run(stored_message_ids(replicas.plane.nats.url))
    assert sorted(stored) == sorted(batch_msg_id(w, "run-both", s) for w in worker_ids for s in range(1, 21))


# ---------------------------------------------------------------- (4): a replica dies


def test_killing_a_replica_leaves_the_other_alone_and_a_moved_worker_is_reached_there(replicas: Replicas) -> None:
    first, second = replicas.gateways

    async def scenario() -> None:
        on_first = [await replicas.connect(0, f"k1-{i}") for i in range(2)]
        on_second = [await replicas.connect(1, f"k2-{i}") for i in range(2)]
        held = on_first + on_second
        try:
            async with orchestrator_side(replicas.plane.nats.url) as nc:
                first.process.kill()
                await asyncio.to_thread(first.process.wait, 10)
                killed_at = time.monotonic()
                await until(lambda: all(sim.ended.is_set() for sim, _ in on_first), 10, "streams on gw-1 broken")
                # Replica 2's workers keep their streams, heartbeat acks and commands.
                await asyncio.sleep(1.5)
                for sim, worker_id in on_second:
                    assert not sim.ended.is_set() and sim.disconnect_reason is None
                    assert sim.acks_since(killed_at) >= 1
                    assert await send_to_worker(nc, worker_id, command("drain", f"after-kill-{sim.name}"))
                    await until(lambda s=sim: ("drain", f"after-kill-{s.name}") in commands_received(s), 5, "drain")
                # The workers of the dead replica are unreachable until they reconnect...
                for _, worker_id in on_first:
                    assert await answers(nc, worker_id, command("cancel", "dead")) == []
                # ...and once reconnected to replica 2 they are reached there, by one answer.
                for sim, worker_id in on_first:
                    moved, moved_id = await replicas.connect(1, sim.name)
                    held.append((moved, moved_id))
                    assert moved_id == worker_id
                    assert await answers(nc, worker_id, command("cancel", f"moved-{sim.name}")) == [DELIVERED]
                    await until(lambda m=moved: commands_received(m) == [("cancel", f"moved-{m.name}")], 5, "cancel")
        finally:
            await asyncio.gather(*(sim.close() for sim, _ in held))

    asyncio.run(scenario())
    assert {w.gateway_id for w in replicas.plane.workers().values()} == {"gw-2"}
    assert second.process.poll() is None
    assert "Traceback" not in second.log()


# ---------------------------------------------------------------- a worker moves while its old stream lingers


def test_a_worker_that_moves_is_answered_for_by_its_new_replica_only(replicas: Replicas) -> None:
    """The worker's old connection to replica 1 has not ended yet (a half-open TCP connection lingers
    until keepalive gives up) when it connects to replica 2. Replica 1 learns of the move through
    NATS and ends the old stream; it no longer answers for the worker, and it does not report the
    worker disconnected (which would put the worker, online on replica 2, offline)."""
    async def scenario() -> None:
        old, worker_id = await replicas.connect(0, "mover")
        new: SimWorker | None = None
        try:
            # No heartbeats on the new stream: one would hide a wrong OFFLINE until the next.
            new, new_id = await replicas.connect(1, "mover", heartbeats=False)
            assert new_id == worker_id
            await until(lambda: old.disconnect_reason is not None, 5, "old stream told")
            assert old.disconnect_reason == "replaced by a new connection of the same worker on gateway gw-2"
            async with orchestrator_side(replicas.plane.nats.url) as nc:
                for i in range(5):
                    assert await answers(nc, worker_id, command("cancel", f"c{i}"), wait_s=0.2) == [DELIVERED]
            await until(lambda: len(commands_received(new)) == 5, 5, "commands at the new stream")
            assert commands_received(old) == []
            await until(lambda: old.ended.is_set(), 5, "old stream ended")  # after its linger
            await asyncio.sleep(0.6)  # both replicas report to the orchestrator every 0.2 s
            worker = await asyncio.to_thread(lambda: replicas.plane.workers()["mover"])
            assert (worker.gateway_id, worker.state) == ("gw-2", "WORKER_STATE_ONLINE")
        finally:
            await asyncio.gather(*(sim.close() for sim in (old, new) if sim is not None))

    asyncio.run(scenario())
    eventually(lambda: replicas.plane.workers()["mover"].state == "WORKER_STATE_OFFLINE",
               message="offline once it left gw-2")


# ---------------------------------------------------------------- SIGTERM says goodbye


def test_sigterm_tells_connected_workers_why_and_exits_0(replicas: Replicas) -> None:
    gateway = replicas.gateways[0]

    async def scenario() -> tuple[list[str | None], list[grpc.StatusCode], float]:
        held = [await replicas.connect(0, f"t-{i}") for i in range(3)]
        try:
            began = time.monotonic()
            code = await asyncio.to_thread(gateway.terminate, 10.0)
            took = time.monotonic() - began
            assert code == 0, gateway.log()[-2000:]
            await asyncio.wait_for(asyncio.gather(*(sim.ended.wait() for sim, _ in held)), 5)
            return [sim.disconnect_reason for sim, _ in held], [await sim.call.code() for sim, _ in held], took
        finally:
            await asyncio.gather(*(sim.close() for sim, _ in held))

    reasons, codes, took = asyncio.run(scenario())
    assert reasons == ["gateway shutting down"] * 3
    # Ended by the gateway after its goodbye, not cancelled by the server at the end of its grace.
    # (grpc-aio has once, under load, reported INTERNAL instead of OK for a stream whose pending
    # read the handler cancelled as it returned; the Disconnect had been read all the same.)
    assert grpc.StatusCode.CANCELLED not in codes, codes
    assert took < 5.0
    eventually(lambda: {w.state for w in replicas.plane.workers().values()} == {"WORKER_STATE_OFFLINE"},
               message="workers recorded offline")
