"""The gateway under load, each figure beside a peer measured in the same run.

1. Connected workers per gateway process: simulated workers (lightweight clients speaking the
   real protocol, each on its own TLS connection, in two client processes) say hello, are
   admitted and heartbeat every 5 s (a sixth of the default interval); the gateway's CPU and
   memory while it holds them. Peer: a bare grpc.aio TLS server that welcomes and acks
   heartbeats and does nothing else, holding the same clients.
2. Assignment round trip, with those workers connected: the orchestrator's NATS request
   (send_to_worker) → gateway → worker stream → the worker's AssignmentStatus → gateway → the
   orchestrator (which includes the gateway's report interval, default 1 s). Peer: a bare NATS
   request/reply.
3. Metric batches per second through one gateway into JetStream, 100 in-call endpoint samples a
   batch, several workers streaming with a window of unacked batches. Peers: nats-py publishing
   the same batches to the same stream with the same concurrency, and the bare grpc.aio server
   acking them (the stream alone).
4. Bytes per endpoint-second, from real in-call samples of a PCMU self-call between two engines:
   the protobuf, and what crosses the wire worker → gateway (TLS, HTTP/2, gRPC framing; counted
   by a relay), plain and with gRPC gzip. Reference: the 250 B budget (1 Mbit/s for 500
   endpoints). Peer: the same samples as JSON.
5. What gzip on the link costs in CPU (CALLMETER_LINK_COMPRESSION): workers stream batches of 250
   in-call endpoint samples at the same paced rate, plain then gzip; the gateway's CPU per
   endpoint-second (it decompresses) and the sending process's. Beside it, in this process: one
   such batch serialized (what the worker pays anyway), gzipped as gRPC core does it (zlib level
   6, gzip wrapper) and gunzipped.

The orchestrator is a stub in this process (admits the bench's token, counts and timestamps
events), so figures are the gateway's, not SQLite's; tests cover the real orchestrator. The
gateway's rate limits are raised for part 3, which streams far faster than a worker does.
CALLMETER_BENCH_QUICK=1: fewer workers, shorter windows. Loopback only, every loop bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import nats
from google.protobuf.json_format import MessageToJson
from google.protobuf.timestamp_pb2 import Timestamp

from callmeter.catalog import METRICS
from callmeter.cli.platform import rss_bytes
from callmeter.common.stores.metrics_stream import STREAM, batch_msg_id
from callmeter.common.stores.nats import EmbeddedNats
from callmeter.common.stores.worker_commands import send_to_worker
from callmeter.common.tls import ensure_dev_pki
from callmeter.v1 import (common_pb2, endpoint_metrics_pb2, engine_pb2, orchestrator_pb2, orchestrator_pb2_grpc,
                          results_pb2, tests_pb2, workers_pb2, workers_pb2_grpc)
from services.worker.engine.client import EngineClient
from tests.procs import create_metrics_streams, start_service

QUICK = os.environ.get("CALLMETER_BENCH_QUICK") == "1"
WORKERS = 200 if QUICK else 1000
CLIENT_PROCESSES = 2
HEARTBEAT_S = 5
HOLD_S = 8 if QUICK else 30
ASSIGNMENTS = 100 if QUICK else 500
STREAMERS = 8
STREAM_S = 5 if QUICK else 20
WINDOW = 16
ENDPOINTS_PER_BATCH = 100
WIRE_SIZES = (4, 100, 500)
WIRE_ENDPOINT_SECONDS = 10_000 if QUICK else 50_000
BUDGET_BYTES = 250
LINK_ENDPOINTS = 250
LINK_STREAMERS = 4
LINK_BATCHES_PER_S = 200  # all streamers together: 50 000 endpoint-seconds a second
LINK_S = 5 if QUICK else 20
TOKEN = "cmw_bench"
CONNECT = "/callmeter.v1.GatewayService/Connect"
ROOT = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------ the simulated worker (client side)


def heartbeat_bytes() -> bytes:
    sent = Timestamp()
    sent.GetCurrentTime()
    return workers_pb2.WorkerMessage(heartbeat=workers_pb2.Heartbeat(
        sent_at=sent, state=workers_pb2.WORKER_STATE_ONLINE)).SerializeToString()


class Sim:
    """One worker on its own TLS connection (a local subchannel pool: no shared connections)."""

    def __init__(self, address: str, ca: bytes, name: str, compression: grpc.Compression | None = None) -> None:
        self.name = name
        self.channel = grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(ca),
                                               options=[("grpc.use_local_subchannel_pool", 1)])
        self.call = self.channel.stream_stream(CONNECT)(compression=compression)
        self.lock = asyncio.Lock()  # one write at a time on a call

    async def write(self, data: bytes) -> None:
        async with self.lock:
            await self.call.write(data)

    async def hello(self) -> workers_pb2.Welcome:
        await self.write(workers_pb2.WorkerMessage(hello=workers_pb2.Hello(token=TOKEN, name=self.name)).SerializeToString())
        first = workers_pb2.GatewayMessage.FromString(await self.call.read())
        assert first.WhichOneof("message") == "welcome", first
        return first.welcome

    async def messages(self) -> AsyncIterator[workers_pb2.GatewayMessage]:
        with contextlib.suppress(grpc.aio.AioRpcError):
            while (data := await self.call.read()) is not grpc.aio.EOF:
                yield workers_pb2.GatewayMessage.FromString(data)


@dataclass
class HoldStats:
    connected: int = 0
    failed: int = 0
    ended: int = 0
    assignments: dict[str, float] = field(default_factory=dict)


async def hold_worker(sim: Sim, stats: HoldStats, gate: asyncio.Semaphore) -> None:
    """Hello, heartbeats at the welcome's interval, an ACCEPTED status for every assignment."""
    try:
        async with gate:
            welcome = await sim.hello()
    except (grpc.aio.AioRpcError, AssertionError):
        stats.failed += 1
        return
    stats.connected += 1

    async def beat() -> None:
        await asyncio.sleep(random.uniform(0, welcome.heartbeat_interval_s))  # spread, as real workers are
        while True:
            await sim.write(heartbeat_bytes())
            await asyncio.sleep(welcome.heartbeat_interval_s * random.uniform(0.9, 1.0))

    beater = asyncio.create_task(beat())
    try:
        async for message in sim.messages():
            if message.WhichOneof("message") == "assignment":
                run_id = message.assignment.run_id
                stats.assignments[run_id] = time.monotonic()
                await sim.write(workers_pb2.WorkerMessage(status=workers_pb2.AssignmentStatus(
                    run_id=run_id, state=workers_pb2.ASSIGNMENT_STATE_ACCEPTED)).SerializeToString())
    finally:
        beater.cancel()
        stats.ended += 1


async def stream_batches(sim: Sim, template: workers_pb2.WorkerMessage, seconds: float,
                         max_batches: int, interval_s: float = 0.0) -> list[float]:
    """After the hello: numbered copies of a batch with WINDOW unacked, one every ``interval_s`` at
    most (0: as fast as acks come); the times of the acks."""
    window = asyncio.Semaphore(WINDOW)
    acked: list[float] = []

    async def read_acks() -> None:
        async for message in sim.messages():
            if message.WhichOneof("message") == "batch_ack":
                acked.append(time.monotonic())
                window.release()

    reader = asyncio.create_task(read_acks())
    deadline = time.monotonic() + seconds
    batch = workers_pb2.WorkerMessage()
    batch.CopyFrom(template)
    sent = 0
    next_at = time.monotonic()
    while sent < max_batches and time.monotonic() < deadline:
        if interval_s:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval_s
        await window.acquire()
        sent += 1
        batch.metrics.sequence = sent
        await sim.write(batch.SerializeToString())
    with contextlib.suppress(asyncio.TimeoutError):  # the last acks
        await asyncio.wait_for(_until(lambda: len(acked) >= sent), 10)
    await sim.call.done_writing()
    reader.cancel()
    await sim.channel.close()
    return acked


async def _until(check) -> None:  # type: ignore[no-untyped-def]
    while not check():
        await asyncio.sleep(0.01)


async def client_hold(spec: dict) -> None:
    """A client process: holds workers until stdin closes; prints a ready line, then its stats."""
    ca = Path(spec["ca_file"]).read_bytes()
    stats = HoldStats()
    gate = asyncio.Semaphore(50)  # TLS handshakes at once
    began = time.monotonic()
    sims = [Sim(spec["address"], ca, name) for name in spec["names"]]
    tasks = [asyncio.create_task(hold_worker(sim, stats, gate)) for sim in sims]
    await asyncio.wait_for(_until(lambda: stats.connected + stats.failed >= len(sims)), 300)
    print(json.dumps({"connected": stats.connected, "connect_s": time.monotonic() - began}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    print(json.dumps({"ended": stats.ended, "assignments": stats.assignments}), flush=True)
    for task in tasks:
        task.cancel()


async def client_stream(spec: dict) -> None:
    """A client process: workers streaming batches; a line once all are welcomed, then the acks."""
    ca = Path(spec["ca_file"]).read_bytes()
    template = workers_pb2.WorkerMessage.FromString(bytes.fromhex(spec["template"]))
    compression = grpc.Compression.Gzip if spec["gzip"] else None
    sims = [Sim(spec["address"], ca, name, compression) for name in spec["names"]]
    await asyncio.gather(*(sim.hello() for sim in sims))
    print(json.dumps({"streaming": len(sims)}), flush=True)
    cpu0 = time.process_time()  # every thread of this process: gRPC core compresses on its own
    results = await asyncio.gather(*(stream_batches(sim, template, spec["seconds"], 10**7, spec.get("interval_s", 0.0))
                                     for sim in sims))
    print(json.dumps({"acks": sorted(t for acked in results for t in acked), "cpu_s": time.process_time() - cpu0}),
          flush=True)


# ------------------------------------------------------------------ peers and stubs (server side)


class BareGateway(workers_pb2_grpc.GatewayServiceServicer):
    """Welcome, heartbeat acks and batch acks: the stream and nothing else."""

    async def Connect(self, request_iterator, context):  # type: ignore[no-untyped-def]  # noqa: N802
        async for message in request_iterator:
            kind = message.WhichOneof("message")
            if kind == "hello":
                yield workers_pb2.GatewayMessage(welcome=workers_pb2.Welcome(
                    worker_id=message.hello.name, heartbeat_interval_s=HEARTBEAT_S))
            elif kind == "heartbeat":
                yield workers_pb2.GatewayMessage(heartbeat_ack=workers_pb2.HeartbeatAck())
            elif kind == "metrics":
                yield workers_pb2.GatewayMessage(batch_ack=workers_pb2.BatchAck(
                    run_id=message.metrics.run_id, sequence=message.metrics.sequence))


async def bare_server(cert: str, key: str) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    workers_pb2_grpc.add_GatewayServiceServicer_to_server(BareGateway(), server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
        [(Path(key).read_bytes(), Path(cert).read_bytes())]))
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


class StubOrchestrator(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    def __init__(self) -> None:
        self.admitted = 0
        self.heartbeats = 0
        self.statuses: dict[str, float] = {}

    async def AdmitWorker(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        if request.hello.token != TOKEN:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked worker token")
        self.admitted += 1
        return orchestrator_pb2.AdmitWorkerResponse(worker=workers_pb2.Worker(id=request.hello.name))

    async def ReportWorkerEvents(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        now = time.monotonic()
        for event in request.events:
            if event.HasField("heartbeat"):
                self.heartbeats += 1
            elif event.HasField("status"):
                self.statuses.setdefault(event.status.run_id, now)
        return orchestrator_pb2.ReportWorkerEventsResponse()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(values: list[float]) -> str:
    if not values:
        return "none"
    ordered = sorted(values)

    def ms(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000
    return f"p50 {ms(0.50):7.2f} ms  p99 {ms(0.99):7.2f} ms"


def client_process(mode: str, spec: dict) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "bench.gateway", mode, json.dumps(spec)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


async def read_json(process: subprocess.Popen[str], timeout_s: float) -> dict:
    assert process.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), timeout_s)
    if not line:
        raise RuntimeError(f"client process exited with {process.wait()}")
    return json.loads(line)


# ------------------------------------------------------------------ real samples


def in_call_samples() -> list[results_pb2.EndpointSample]:
    """Per-second samples of a 4 s PCMU self-call between two engines on loopback, while in call."""
    spec = tests_pb2.TestSpec(name="bench-samples")
    sip_port = random.randrange(20000, 40000)
    callees = spec.groups.add(name="callees", count=2, role=common_pb2.ENDPOINT_ROLE_CALLEE, codecs=["PCMU"])
    callees.target.aor = f"sip:{{n}}@127.0.0.1:{sip_port}"
    callees.target.number_start = 100
    callees.media.tone.frequency_hz = 440
    callers = spec.groups.add(name="callers", count=2, role=common_pb2.ENDPOINT_ROLE_CALLER, codecs=["PCMU"])
    callers.target.call_uri = "group:callees"
    callers.scenario.call_duration.seconds = 4
    engines = [EngineClient(env={"SIP_IP": "127.0.0.1"}, stderr=subprocess.DEVNULL) for _ in range(2)]
    try:
        for engine in engines:
            assert engine.wait_for("ready", 30) is not None, "engine did not start"
        rtp = random.randrange(40000, 50000, 2)
        start_at = time.time() + 1
        for engine, group, base in ((engines[0], "callees", rtp), (engines[1], "callers", rtp + 100)):
            command = engine_pb2.EngineCommand()
            command.start.run_id, command.start.start_at = "bench-samples", start_at
            command.start.spec.CopyFrom(spec)
            command.start.slices.add(group=group, first_index=0, count=2)
            command.start.rtp_port_min, command.start.rtp_port_max = base, base + 99
            engine.send(command)
        assert engines[1].wait_for("done", 30) is not None, "the self-call did not finish"
        engines[0].wait_for("done", 10)
    finally:
        for engine in engines:
            engine.kill()
    samples = [e.sample for engine in engines for e in engine.received if e.WhichOneof("event") == "sample"]
    in_call = [s for s in samples if s.metrics.call_active and s.metrics.rx_packets > 0]
    assert in_call, "no in-call sample"
    return in_call


GAUGES = [m.name for m in METRICS if m.kind == "gauge"]


def batch_of(samples: list[results_pb2.EndpointSample], endpoints: int) -> workers_pb2.WorkerMessage:
    """A worker's batch for one second: endpoint i carries one of the real samples' values, its
    gauges (jitter, delays, MOS…) moved by up to ±20 % so that no two endpoints are copies, which
    gzip would exploit; counters and states stay as measured (50 packets a second is 50 for all)."""
    rng = random.Random(endpoints)
    batch = results_pb2.MetricBatch(run_id="bench-run", sequence=1)
    for i in range(endpoints):
        sample = batch.samples.add()
        sample.CopyFrom(samples[i % len(samples)])
        sample.endpoint, sample.second = i, int(time.time())
        for name in GAUGES:
            if value := getattr(sample.metrics, name):
                setattr(sample.metrics, name, type(value)(value * rng.uniform(0.8, 1.2)))
    return workers_pb2.WorkerMessage(metrics=batch)


# ------------------------------------------------------------------ the parts


@dataclass
class Setup:
    nats: EmbeddedNats
    ca_file: Path
    gateway_address: str
    gateway_pid: int
    bare_address: str
    bare_pid: int
    stub: StubOrchestrator


async def connected_workers(setup: Setup) -> None:
    """Part 1 and 2: workers held by the gateway, then assignment round trips; the bare peer."""
    names = [f"sim-{i:04d}" for i in range(WORKERS)]
    share = len(names) // CLIENT_PROCESSES

    async def hold(address: str, pid: int, round_trips: bool) -> dict:
        clients = [client_process("hold", {"address": address, "ca_file": str(setup.ca_file),
                                           "names": names[i * share:(i + 1) * share]}) for i in range(CLIENT_PROCESSES)]
        try:
            began = time.monotonic()
            ready = [await read_json(c, 300) for c in clients]
            connect_s = time.monotonic() - began
            await asyncio.sleep(2)
            cpu0, t0, hb0 = cpu_seconds(pid), time.monotonic(), setup.stub.heartbeats
            await asyncio.sleep(HOLD_S)
            result = {"connected": sum(r["connected"] for r in ready), "connect_s": connect_s,
                      "cpu_pct": 100 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0),
                      "rss_mb": rss_bytes(pid) / 2**20, "reported_hb_per_s": (setup.stub.heartbeats - hb0) / HOLD_S}
            if round_trips:
                result["trips"] = await assignment_round_trips(setup, names)
            for client in clients:
                assert client.stdin is not None
                client.stdin.close()
            finals = [await read_json(c, 60) for c in clients]
            result["still_connected"] = result["connected"] - sum(f["ended"] for f in finals)
            result["received"] = {k: v for f in finals for k, v in f["assignments"].items()}
            return result
        finally:
            for client in clients:
                client.kill()
                client.wait()

    gw = await hold(setup.gateway_address, setup.gateway_pid, round_trips=True)
    bare = await hold(setup.bare_address, setup.bare_pid, round_trips=False)
    print(f"connected workers per gateway process ({WORKERS} offered by {CLIENT_PROCESSES} client processes, "
          f"heartbeat every {HEARTBEAT_S} s, held {HOLD_S} s):")
    for label, r in (("gateway", gw), ("peer: bare grpc.aio", bare)):
        print(f"  {label:<21} {r['connected']:>5} connected in {r['connect_s']:5.1f} s, {r['still_connected']:>5} still "
              f"connected at the end; CPU {r['cpu_pct']:5.1f} % of a core, RSS {r['rss_mb']:4.0f} MB")
    print(f"  gateway: {setup.stub.admitted} admitted by the orchestrator, "
          f"{gw['reported_hb_per_s']:.0f} heartbeats/s reported to it (sent {WORKERS / (HEARTBEAT_S * 0.95):.0f}/s)")

    sent, delivered, peer = gw["trips"]
    to_worker = [gw["received"][run_id] - t0 for run_id, t0 in sent.items() if run_id in gw["received"]]
    back = [setup.stub.statuses[run_id] - t0 for run_id, t0 in sent.items() if run_id in setup.stub.statuses]
    print(f"assignment round trip ({len(sent)} assignments to random workers of the {gw['connected']} connected):")
    print(f"  send_to_worker (NATS request → gateway → DELIVERED)   {percentiles(delivered)}")
    print(f"  … → on the worker's stream, received by the worker    {percentiles(to_worker)}  ({len(to_worker)} received)")
    print(f"  … → AssignmentStatus back at the orchestrator         {percentiles(back)}  "
          f"({len(back)} back; includes the gateway's 1 s report interval)")
    print(f"  peer: bare NATS request/reply                         {percentiles(peer)}")


async def assignment_round_trips(setup: Setup, names: list[str]) -> tuple[dict[str, float], list[float], list[float]]:
    nc = await nats.connect(setup.nats.url)
    responder = await nats.connect(setup.nats.url)
    try:
        sent: dict[str, float] = {}
        delivered: list[float] = []
        for i in range(ASSIGNMENTS):
            run_id = f"trip-{i}"
            message = workers_pb2.GatewayMessage(assignment=workers_pb2.Assignment(
                run_id=run_id, slices=[workers_pb2.EndpointSlice(group="callers", count=4)]))
            t0 = time.monotonic()
            assert await send_to_worker(nc, random.choice(names), message), "assignment not delivered"
            delivered.append(time.monotonic() - t0)
            sent[run_id] = t0
            await asyncio.sleep(0.02)
        await asyncio.sleep(2.5)  # statuses ride the gateway's next reports

        async def echo(msg) -> None:  # type: ignore[no-untyped-def]
            await msg.respond(msg.data)
        await responder.subscribe("bench.echo", cb=echo)
        await responder.flush()
        peer = []
        payload = message.SerializeToString()  # an assignment's size
        for _ in range(ASSIGNMENTS):
            t0 = time.monotonic()
            await nc.request("bench.echo", payload, timeout=5)
            peer.append(time.monotonic() - t0)
        return sent, delivered, peer
    finally:
        await nc.close()
        await responder.close()


async def batch_rate(setup: Setup, samples: list[results_pb2.EndpointSample]) -> None:
    """Part 3: batches/s into JetStream through the gateway; nats-py and the bare stream as peers."""
    template = batch_of(samples, ENDPOINTS_PER_BATCH)
    nc = await nats.connect(setup.nats.url)
    js = nc.jetstream()

    async def through(address: str, pid: int, label: str, compress: bool = False) -> tuple[float, float, int, int]:
        """Batches/s acked, the server's CPU, batches acked and stored (new worker names: no de-dup)."""
        stored0 = (await js.stream_info(STREAM)).state.messages
        client = client_process("stream", {"address": address, "ca_file": str(setup.ca_file), "gzip": compress,
                                           "names": [f"{label}-{i}" for i in range(STREAMERS)],
                                           "template": template.SerializeToString().hex(), "seconds": STREAM_S})
        try:
            await read_json(client, 120)
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            acks = (await read_json(client, STREAM_S + 60))["acks"]
            cpu_pct = 100 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        finally:
            client.wait(30)
        steady = [t for t in acks if acks[0] + 1 <= t]  # without the first second's ramp
        rate = len(steady) / (steady[-1] - steady[0]) if len(steady) > 1 else 0.0
        stored = (await js.stream_info(STREAM)).state.messages - stored0
        return rate, cpu_pct, len(acks), stored

    gateway = await through(setup.gateway_address, setup.gateway_pid, "streamer")
    gateway_gzip = await through(setup.gateway_address, setup.gateway_pid, "streamer-gzip", compress=True)
    bare_rate, bare_cpu, _, _ = await through(setup.bare_address, setup.bare_pid, "bare")

    payload = template.metrics.SerializeToString()
    published = 0
    deadline = time.monotonic() + STREAM_S

    async def publisher(i: int) -> None:
        nonlocal published
        for sequence in range(1, 10**7):
            if time.monotonic() > deadline:
                return
            await js.publish(f"callmeter.metrics.peer.p{i}", payload,
                             headers={"Nats-Msg-Id": batch_msg_id(f"p{i}", "peer", sequence)})
            published += 1
    began = time.monotonic()
    await asyncio.gather(*(publisher(i) for i in range(STREAMERS)))
    nats_rate = published / (time.monotonic() - began)
    await nc.close()

    size = template.ByteSize()
    print(f"metric batches per second through one gateway ({STREAMERS} workers streaming, {WINDOW} unacked each, "
          f"{ENDPOINTS_PER_BATCH} endpoint-samples = {size / 1024:.1f} KiB a batch, {STREAM_S} s):")
    for label, (rate, cpu, acked, stored) in (("gateway → JetStream", gateway), ("gateway → JetStream, gzip", gateway_gzip)):
        print(f"  {label:<29}{rate:8.0f} batches/s = {rate * ENDPOINTS_PER_BATCH:9.0f} endpoint-s/s; "
              f"gateway CPU {cpu:4.0f} % of a core; {acked} acked, {stored} stored")
    print(f"  peer: nats-py → JetStream    {nats_rate:8.0f} batches/s = {nats_rate * ENDPOINTS_PER_BATCH:9.0f} "
          f"endpoint-s/s ({STREAMERS} tasks awaiting each publish, as the gateway does per worker)")
    print(f"  peer: bare grpc.aio stream   {bare_rate:8.0f} batches/s = {bare_rate * ENDPOINTS_PER_BATCH:9.0f} "
          f"endpoint-s/s; server CPU {bare_cpu:4.0f} % of a core (ack only)")


class CountingRelay:
    """A TCP relay in front of the gateway that counts the bytes each way."""

    def __init__(self, target: str) -> None:
        self.host, port = target.rsplit(":", 1)
        self.port = int(port)
        self.up = self.down = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(self.host, self.port)
        await asyncio.gather(self._pipe(reader, upstream_writer, "up"), self._pipe(upstream_reader, writer, "down"))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                setattr(self, direction, getattr(self, direction) + len(data))
                writer.write(data)
                await writer.drain()
        writer.close()

    async def close(self) -> None:
        self.server.close()


async def wire_bytes(setup: Setup, samples: list[results_pb2.EndpointSample]) -> None:
    """Part 4: bytes per endpoint-second, as protobuf and on the wire, plain and gzip."""
    catalog = len(endpoint_metrics_pb2.EndpointMetrics.DESCRIPTOR.fields)
    filled = statistics.mean(len(s.metrics.ListFields()) for s in samples)
    print(f"bytes per endpoint-second on the stream (real in-call samples of a PCMU self-call: {filled:.0f} of the "
          f"catalog's {catalog} metrics non-zero; budget {BUDGET_BYTES} B):")
    print("  endpoints/batch   protobuf   gzip'd   wire up   wire up gzip   wire down (acks)")
    up: dict[tuple[int, bool], float] = {}
    for endpoints in WIRE_SIZES:
        template = batch_of(samples, endpoints)
        raw = template.SerializeToString()
        down = 0.0
        for compress in (False, True):
            relay = CountingRelay(setup.gateway_address)
            sim = Sim(await relay.start(), setup.ca_file.read_bytes(), f"wire-{endpoints}-{compress}",
                      grpc.Compression.Gzip if compress else None)
            await sim.hello()
            endpoint_seconds = endpoints * len(await stream_batches(sim, template, 120, WIRE_ENDPOINT_SECONDS // endpoints))
            await relay.close()
            up[endpoints, compress] = relay.up / endpoint_seconds
            down = max(down, relay.down / endpoint_seconds)
        print(f"  {endpoints:>15} {len(raw) / endpoints:8.1f} B {len(gzip.compress(raw)) / endpoints:6.1f} B "
              f"{up[endpoints, False]:7.1f} B {up[endpoints, True]:10.1f} B {down:12.1f} B")
    print(f"  500 endpoints on one worker send {up[500, False] * 500 * 8 / 1000:.0f} kbit/s, "
          f"{up[500, True] * 500 * 8 / 1000:.0f} kbit/s with gzip (the promise: under 1000)")
    json_size = statistics.mean(len(MessageToJson(s, indent=None)) for s in samples)
    print(f"  peer: one sample as JSON (protobuf's JSON mapping) {json_size:.0f} B")


def grpc_gzip(data: bytes) -> bytes:
    """What gRPC core makes of a message with gzip: zlib's default level, the gzip wrapper."""
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def cpu_per_call(call, repeat: int = 300) -> float:  # type: ignore[no-untyped-def]
    began = time.process_time()
    for _ in range(repeat):
        call()
    return (time.process_time() - began) / repeat


async def link_compression_cpu(setup: Setup, samples: list[results_pb2.EndpointSample]) -> None:
    """Part 5: CPU per endpoint-second of gzip on the worker → gateway link, at both ends."""
    template = batch_of(samples, LINK_ENDPOINTS)
    raw = template.SerializeToString()
    packed = grpc_gzip(raw)
    serialize = cpu_per_call(template.SerializeToString)
    compress = cpu_per_call(lambda: grpc_gzip(raw))
    decompress = cpu_per_call(lambda: zlib.decompress(packed, 16 + zlib.MAX_WBITS))
    interval_s = LINK_STREAMERS / LINK_BATCHES_PER_S

    async def paced(compress_link: bool) -> tuple[float, float, int]:
        """Gateway and client CPU seconds per endpoint-second, and the batches acked."""
        label = "link-gzip" if compress_link else "link-plain"
        client = client_process("stream", {"address": setup.gateway_address, "ca_file": str(setup.ca_file),
                                           "gzip": compress_link, "names": [f"{label}-{i}" for i in range(LINK_STREAMERS)],
                                           "template": raw.hex(), "seconds": LINK_S, "interval_s": interval_s})
        try:
            await read_json(client, 120)
            cpu0 = cpu_seconds(setup.gateway_pid)
            final = await read_json(client, LINK_S + 60)
            gateway_cpu = cpu_seconds(setup.gateway_pid) - cpu0
        finally:
            client.wait(30)
        endpoint_seconds = len(final["acks"]) * LINK_ENDPOINTS
        return gateway_cpu / endpoint_seconds, final["cpu_s"] / endpoint_seconds, len(final["acks"])

    plain = await paced(False)
    gzipped = await paced(True)
    us = 1e6 / LINK_ENDPOINTS
    print(f"gzip on the worker link: CPU (batches of {LINK_ENDPOINTS} in-call endpoint samples = "
          f"{len(raw) / 1024:.1f} KiB, {len(packed) / 1024:.1f} KiB gzipped; {LINK_STREAMERS} workers, "
          f"{LINK_BATCHES_PER_S} batches/s together, {LINK_S} s):")
    print("                                   plain           gzip     ratio   (CPU per endpoint-second)")
    for label, index in (("gateway (receive, publish, ack)", 0), ("sending process (all of it)", 1)):
        print(f"  {label:<31} {plain[index] * 1e6:8.2f} µs   {gzipped[index] * 1e6:8.2f} µs   "
              f"{gzipped[index] / plain[index]:5.2f}x")
    print(f"  batches acked: {plain[2]} plain, {gzipped[2]} gzip")
    print(f"  in this process, one batch: serialize {serialize * 1e6:6.0f} µs ({serialize * us:.2f} µs per endpoint), "
          f"gzip {compress * 1e6:6.0f} µs ({compress * us:.2f}), gunzip {decompress * 1e6:6.0f} µs ({decompress * us:.2f})")
    print(f"  a worker with 500 endpoints in call spends {500 * compress / LINK_ENDPOINTS * 100:.2f} % of a core "
          f"gzipping, saving {(len(raw) - len(packed)) / LINK_ENDPOINTS * 500 * 8 / 1000:.0f} kbit/s")


async def measure(tmp: Path) -> None:
    samples = await asyncio.to_thread(in_call_samples)
    server = EmbeddedNats(tmp / "nats")
    server.start()
    stub = StubOrchestrator()
    orchestrator = grpc.aio.server()
    orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(stub, orchestrator)
    orchestrator_port = orchestrator.add_insecure_port("127.0.0.1:0")
    await orchestrator.start()
    pki = ensure_dev_pki(tmp / "tls")
    unlimited = str(2**40)
    await asyncio.to_thread(create_metrics_streams, server.url)  # metrics-ingest's: this benchmark runs none
    gateway = start_service("gateway", tmp, {
        "CALLMETER_NATS_URL": server.url, "CALLMETER_TLS_CERT_FILE": str(pki.server_cert),
        "CALLMETER_TLS_KEY_FILE": str(pki.server_key), "CALLMETER_ORCHESTRATOR_ADDRESS": f"127.0.0.1:{orchestrator_port}",
        "CALLMETER_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S), "CALLMETER_RATE_LIMIT_MESSAGES_PER_S": unlimited,
        "CALLMETER_RATE_LIMIT_MESSAGE_BURST": unlimited, "CALLMETER_RATE_LIMIT_BYTES_PER_S": unlimited,
        "CALLMETER_RATE_LIMIT_BYTE_BURST": unlimited})
    bare = subprocess.Popen([sys.executable, "-m", "bench.gateway", "bare", str(pki.server_cert), str(pki.server_key)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert bare.stdout is not None
        bare_port = int(bare.stdout.readline())
        setup = Setup(server, pki.ca_cert, gateway.address,
                      gateway.process.pid, f"127.0.0.1:{bare_port}", bare.pid, stub)
        await connected_workers(setup)
        await batch_rate(setup, samples)
        await wire_bytes(setup, samples)
        await link_compression_cpu(setup, samples)
    finally:
        bare.terminate()
        bare.wait()
        await asyncio.to_thread(gateway.terminate)  # the stub orchestrator answers its last report
        await orchestrator.stop(0)
        server.stop()


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="callmeter-bench-gateway-") as tmp:
        asyncio.run(measure(Path(tmp)))


if __name__ == "__main__":
    if sys.argv[1] == "bare":
        asyncio.run(bare_server(sys.argv[2], sys.argv[3]))
    elif sys.argv[1] == "hold":
        asyncio.run(client_hold(json.loads(sys.argv[2])))
    elif sys.argv[1] == "stream":
        asyncio.run(client_stream(json.loads(sys.argv[2])))
