"""The metrics pipeline: endpoint-seconds from a JetStream publish to rows a query can count.

metrics-ingest (services/metrics, its real code with its default settings: one process, a chDB
store, a nats-server child) runs in this process; a publisher child process sends realistic
in-call MetricBatches (250 endpoint-seconds each, as one worker sends a second of 250
endpoints) with ``Nats-Msg-Id`` headers, using ``publish_async``.

- end to end: a burst of batches published at once, until a count query sees every row in the
  rollup (ingest refreshes the rollup rows of each insert's seconds before it acks, so rows in
  the rollup are in the raw table too: every query sees them);
- lag under a steady load: batches published at a fixed rate for a while; a batch's lag is the
  time from its publish to the first count query that sees its rows (ingest inserts in stream
  order, so the count tells how many batches are queryable), polled every STEADY_POLL_S;
- disk: bytes per endpoint-second after ``OPTIMIZE … FINAL`` (system.parts), raw and rollups;
- the query service's reads of the burst's run, on the merged store, and the run summary
  computed from the raw rows as before the rollup (the same numbers, checked).

Peers measured in the same run: a direct insert of the same rows into the same store, already
encoded as the ingest encodes them (the store's ceiling), and the rollup refresh after each of
those inserts (the rollup's cost); the ingest's own decode, checks and
row encoding alone (CPU time); and the raw nats-py publish rates (core NATS, JetStream with
``publish_async``, JetStream waiting for each ack as the gateway does).

CALLMETER_BENCH_QUICK=1: a few seconds per phase. CALLMETER_BENCH_METRICS_RATES overrides the
steady rates (endpoint-seconds/s, comma separated), CALLMETER_BENCH_METRICS_STEADY_S their
duration. CALLMETER_INGEST_* settings apply to the ingest.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import pickle
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from callmeter.catalog import METRICS
from callmeter.common.stores.metrics_stream import batch_msg_id, batch_subject
from callmeter.common.varint import encode_varint
from callmeter.v1 import endpoint_metrics_pb2, results_pb2

QUICK = bool(os.environ.get("CALLMETER_BENCH_QUICK"))
#: The data set: WORKERS × PER_BATCH endpoints for SECONDS seconds, one batch per worker-second.
WORKERS = 20
PER_BATCH = 250
SECONDS = 40 if QUICK else 200
STEADY_S = float(os.environ.get("CALLMETER_BENCH_METRICS_STEADY_S", 4.0 if QUICK else 30.0))
#: The goal of the issue, per metrics-ingest process.
GOAL_RATE = 100_000
GOAL_P99_LAG_S = 2.0
STEADY_RATES = [int(r) for r in os.environ.get("CALLMETER_BENCH_METRICS_RATES", f"50000,{GOAL_RATE}").split(",")]
#: Count queries: often enough for the lag's resolution, rarely enough not to load the store
#: thread during the burst (each takes a few ms there).
STEADY_POLL_S = 0.1
BURST_POLL_S = 0.2
#: Longest wait for rows to become queryable after the last publish of a phase.
DRAIN_TIMEOUT_S = 60.0
#: Batches published one at a time, waiting for each ack (the gateway's way).
SYNC_PUBLISHES = 300 if QUICK else 1000
RAW_STREAM = "BENCH_RAW"

NAMES = [m.name for m in METRICS]


# ---------------------------------------------------------------------------------------------
# The data: what 5,000 endpoints of a running call test report, second by second.


class Columns(dict[str, np.ndarray]):
    """One array per catalog metric for every endpoint; a metric the catalog lacks is ignored."""

    def put(self, name: str, where: np.ndarray, values: Any) -> None:
        if name in self:
            self[name][where] = values


def simulate(endpoints: int, seconds: int, seed: int) -> Iterator[Columns]:
    """Every catalog metric of every endpoint for each second, as the worker's sampler sets them.

    Calls of 30–300 s with gaps of 3–40 s (so ~90% of endpoint-seconds are in a call), 4% of
    calls fail, G.711 at 50 packets/s, jitter around 1.5 ms, an RTCP report (RTT, far-end loss
    and jitter) every 5 s, loss 0–1% per call, R factor and MOS from the E-model's delay and loss
    terms, lifetime min/mean/max of the stream's jitter, RTT and loss periods, jitter-buffer
    state, codec parameters, audio levels, a REGISTER refresh every 30 minutes. Event values
    (setup, ring, register time, SIP response counts) are set only in the second of their event,
    as the sampler does. Metrics this simulation does not know stay 0 (absent on the wire).
    """
    rng = np.random.default_rng(seed)
    e = endpoints
    caller = np.arange(e) < e // 2
    in_call = np.zeros(e, dtype=bool)
    left = rng.integers(1, 40, e)  # seconds left in the current call or gap
    age = np.zeros(e, dtype=np.int64)
    jitter = np.zeros(e, dtype=np.int64)
    rtt_base = np.zeros(e, dtype=np.int64)
    rtt = np.zeros(e, dtype=np.int64)
    tx_jitter = np.zeros(e, dtype=np.int64)
    tx_loss = np.zeros(e, dtype=np.int64)
    jb = np.zeros(e, dtype=np.int64)
    pt = np.zeros(e, dtype=np.int64)
    loss_p = np.zeros(e)
    last_code = np.zeros(e, dtype=np.int64)
    register_at = rng.integers(0, 1800, e)
    # Lifetime statistics of the stream: (min, sum, count, max) of rx jitter, tx jitter, RTT, loss periods.
    stats = {name: np.zeros((4, e), dtype=np.int64) for name in ("rx_jitter", "tx_jitter", "rtt", "rx_loss_period")}

    def connect(ok: np.ndarray) -> None:
        n = int(ok.sum())
        in_call[ok] = True
        left[ok] = rng.integers(30, 300, n)
        age[ok] = 0
        jitter[ok] = rng.lognormal(7.3, 0.5, n).astype(np.int64)
        rtt_base[ok] = rng.integers(15_000, 150_000, n)
        rtt[ok] = tx_jitter[ok] = tx_loss[ok] = 0
        jb[ok] = rng.choice([40, 60, 80], n)
        pt[ok] = rng.choice([0, 8], n, p=[0.8, 0.2])
        loss_p[ok] = rng.choice([0.0, 0.0005, 0.002, 0.01], n, p=[0.5, 0.3, 0.15, 0.05])
        last_code[ok] = 200
        for table in stats.values():
            table[:, ok] = 0

    def lifetime(c: Columns, stem: str, where: np.ndarray, values: np.ndarray, unit: str, last: bool = False) -> None:
        table = stats[stem]
        first = where & (table[2] == 0)
        table[0, first] = values[first]
        table[0, where] = np.minimum(table[0, where], values[where])
        table[1, where] += values[where]
        table[2, where] += 1
        table[3, where] = np.maximum(table[3, where], values[where])
        known = table[2] > 0
        c.put(f"{stem}_min_{unit}", known, table[0, known])
        c.put(f"{stem}_mean_{unit}", known, table[1, known] // table[2, known])
        c.put(f"{stem}_max_{unit}", known, table[3, known])
        if last:
            c.put(f"{stem}_last_{unit}", where, values[where])

    busy = rng.random(e) < 0.88  # the test has been running a while: most endpoints are mid-call
    connect(busy)
    left[busy] = rng.integers(1, 300, int(busy.sum()))
    age[busy] = rng.integers(5, 300, int(busy.sum()))
    rtt[busy] = rtt_base[busy]
    tx_jitter[busy] = jitter[busy]

    for s in range(seconds):
        c = Columns({name: np.zeros(e, dtype=np.int64) for name in NAMES})
        everyone = np.ones(e, dtype=bool)
        c.put("registered", everyone, 1)
        c.put("register_last_code", everyone, 200)
        since = (s + register_at) % 1800
        c.put("register_expiry_left_s", everyone, 3600 - since)
        c.put("register_refresh_in_s", everyone, np.maximum(1795 - since, 0))
        refresh = since == 0
        n_refresh = int(refresh.sum())
        for name in ("register_attempts", "register_2xx", "register_refreshes", "register_bindings"):
            c.put(name, refresh, 1)
        c.put("register_time_ms", refresh, rng.integers(8, 90, n_refresh))
        c.put("register_granted_s", refresh, 3600)

        left -= 1
        ending = left <= 0
        hangup = ending & in_call
        in_call[hangup] = False
        left[hangup] = rng.integers(3, 40, int(hangup.sum()))
        c.put("calls_ended", hangup, 1)
        c.put("media_streams_ended", hangup, 1)
        by_us = hangup & (rng.random(e) < 0.5)
        c.put("byes_sent", by_us, 1)
        c.put("byes_received", hangup & ~by_us, 1)
        dial = ending & ~hangup
        if dial.any():
            c.put("calls_attempted", dial, 1)
            failed = dial & (rng.random(e) < 0.04)
            c.put("calls_failed", failed, 1)
            last_code[failed] = rng.choice([408, 480, 486, 503], int(failed.sum()))
            left[failed] = rng.integers(3, 40, int(failed.sum()))
            ok = dial & ~failed
            n_ok = int(ok.sum())
            c.put("calls_connected", ok, 1)
            c.put("setup_time_ms", ok, rng.integers(120, 900, n_ok))
            c.put("ring_time_ms", ok, rng.integers(40, 300, n_ok))
            c.put("media_start_ms", ok, rng.integers(120, 900, n_ok))
            c.put("first_rtp_ms", ok, rng.integers(150, 950, n_ok))
            c.put("invite_rx_1xx", ok & caller, 2)
            c.put("invite_rx_2xx", ok & caller, 1)
            c.put("trying_time_ms", ok & caller, rng.integers(20, 400, n_ok)[caller[ok]])
            c.put("invite_tx_1xx", ok & ~caller, 2)
            c.put("invite_tx_2xx", ok & ~caller, 1)
            c.put("calls_answered", ok & ~caller, 1)
            c.put("answer_time_ms", ok & ~caller, rng.integers(100, 800, n_ok)[~caller[ok]])
            c.put("ack_time_ms", ok & ~caller, rng.integers(10, 800, n_ok)[~caller[ok]])
            connect(ok)
        c.put("call_last_code", everyone, last_code)

        a = in_call
        n = int(a.sum())
        age[a] += 1
        c.put("call_active", a, 1)
        c.put("call_state", a, 5)  # PJSIP_INV_STATE_CONFIRMED
        c.put("call_connected_s", a, age[a])
        c.put("call_total_s", a, age[a] + 1)
        c.put("stream_age_s", a, age[a])
        for name, value in (("tx_pt", pt[a]), ("rx_pt", pt[a]), ("dtmf_tx_pt", 101), ("dtmf_rx_pt", 101),
                            ("clock_rate_khz", 80), ("ptime_ms", 20), ("codec_bitrate_kbps", 640),
                            ("jb_frame_bytes", 320), ("jb_min_prefetch_frames", 1), ("jb_max_prefetch_frames", 40)):
            c.put(name, a, value)
        packets = 50 - (rng.random(n) < 0.05).astype(np.int64)
        lost = rng.binomial(50, loss_p[a])
        c.put("rx_packets", a, packets)
        c.put("rx_bytes", a, packets * 160)
        c.put("rx_lost", a, lost)
        loss_pct = np.round(10_000 * lost / (packets + lost)).astype(np.int64)
        c.put("rx_loss_pct", a, loss_pct)
        c.put("rx_discarded", a, rng.random(n) < 0.01)
        rx_jitter = np.zeros(e, dtype=np.int64)
        rx_jitter[a] = (jitter[a] * rng.uniform(0.6, 1.4, n)).astype(np.int64)
        c.put("rx_jitter_us", a, rx_jitter[a])
        lifetime(c, "rx_jitter", a, rx_jitter, "us")
        had_loss = np.zeros(e, dtype=bool)
        had_loss[a] = lost > 0
        lost_ms = np.zeros(e, dtype=np.int64)
        lost_ms[a] = lost * 20
        c.put("rx_loss_periods", had_loss, 1)
        lifetime(c, "rx_loss_period", had_loss, lost_ms, "ms", last=True)
        c.put("tx_packets", a, 50)
        c.put("tx_bytes", a, 8000)
        rtcp = a & (age % 5 == 0)
        k = int(rtcp.sum())
        rtt[rtcp] = (rtt_base[rtcp] * rng.uniform(0.9, 1.2, k)).astype(np.int64)
        tx_jitter[rtcp] = (jitter[rtcp] * rng.uniform(0.6, 1.4, k)).astype(np.int64)
        tx_loss[rtcp] = rng.binomial(250, loss_p[rtcp])
        c.put("tx_lost", rtcp, tx_loss[rtcp])
        for name in ("rtcp_sent", "rtcp_received", "rtt_samples"):
            c.put(name, rtcp, 1)
        c.put("rtcp_tx_interval_ms", rtcp, rng.integers(4_500, 5_500, k))
        c.put("rtcp_rx_interval_ms", rtcp, rng.integers(4_500, 5_500, k))
        lifetime(c, "tx_jitter", rtcp, tx_jitter, "us")
        lifetime(c, "rtt", rtcp, rtt, "us")
        reported = a & (rtt > 0)
        c.put("rtt_us", reported, rtt[reported])
        c.put("tx_jitter_us", reported, tx_jitter[reported])
        c.put("tx_loss_pct", reported, np.round(10_000 * tx_loss[reported] / 250).astype(np.int64))
        c.put("jb_delay_ms", a, jb[a])
        c.put("jb_delay_max_ms", a, jb[a] + rng.integers(0, 20, n))
        c.put("jb_size_frames", a, np.maximum(jb[a] // 20 + rng.integers(-1, 2, n), 0))
        c.put("jb_prefetch_frames", a, jb[a] // 20)
        c.put("jb_burst_frames", a, rng.integers(1, 4, n))
        c.put("jb_avg_delay_ms", a, jb[a] + rng.integers(-2, 3, n))
        c.put("jb_min_delay_ms", a, np.maximum(jb[a] - 20, 0))
        c.put("jb_max_delay_ms", a, jb[a] + 40)
        c.put("jb_dev_delay_ms", a, rng.integers(3, 15, n))
        c.put("jb_avg_burst_frames", a, rng.integers(1, 3, n))
        c.put("audio_level_sent_pct", a, rng.integers(0, 100, n))
        c.put("audio_level_received_pct", a, rng.integers(0, 100, n))
        # E-model (G.107 simplified): delay and loss impairments, R, MOS, both directions.
        delay_ms = rtt[a] / 2000 + 20 + jb[a]
        ident = 0.024 * delay_ms + 0.11 * np.maximum(delay_ms - 177.3, 0)
        ie_eff = 30 * np.log1p(0.15 * loss_pct / 100)
        r = np.clip(93.2 - ident - ie_eff, 0, 100)
        r_lq = np.clip(93.2 - ie_eff, 0, 100)

        def mos(r: np.ndarray) -> np.ndarray:
            return np.round((1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6) * 100).astype(np.int64)

        c.put("r_factor", a, np.round(r * 100).astype(np.int64))
        c.put("mos", a, mos(r))
        c.put("r_factor_lq", a, np.round(r_lq * 100).astype(np.int64))
        c.put("mos_lq", a, mos(r_lq))
        c.put("emodel_delay_ms", a, np.round(delay_ms).astype(np.int64))
        c.put("emodel_id", a, np.round(ident * 100).astype(np.int64))
        c.put("emodel_ie_eff", a, np.round(ie_eff * 100).astype(np.int64))
        c.put("emodel_burst_r", had_loss, 100)
        tx_delay = rtt[a] / 2000 + 20
        tx_id = 0.024 * tx_delay
        tx_ie = 30 * np.log1p(0.15 * tx_loss[a] / 2.5)
        tx_r = np.clip(93.2 - tx_id - tx_ie, 0, 100)
        tx_r_lq = np.clip(93.2 - tx_ie, 0, 100)
        for name, values in (("tx_emodel_delay_ms", np.round(tx_delay)), ("tx_emodel_id", np.round(tx_id * 100)),
                             ("tx_emodel_ie_eff", np.round(tx_ie * 100)), ("tx_r_factor", np.round(tx_r * 100)),
                             ("tx_mos", mos(tx_r)), ("tx_r_factor_lq", np.round(tx_r_lq * 100)), ("tx_mos_lq", mos(tx_r_lq))):
            where = np.zeros(e, dtype=bool)
            where[a] = rtt[a] > 0
            c.put(name, where, values.astype(np.int64)[rtt[a] > 0])
        yield c


_varint = functools.lru_cache(maxsize=1 << 16)(encode_varint)


def encode_metrics(columns: Columns, numbers: dict[str, int]) -> list[bytes]:
    """Each endpoint's EndpointMetrics as upb serializes it (fields in number order, zeros left out).

    NumPy varint encoding: protobuf's Python API would take longer to build the data than
    metrics-ingest takes to store it.
    """
    names = sorted((name for name in columns if name in numbers), key=numbers.__getitem__)
    assert all(columns[name].min(initial=0) >= 0 for name in names), "unsigned metrics only"
    matrix = np.stack([columns[name].astype(np.uint64) for name in names], axis=1)  # endpoint × field
    rows, fields = np.nonzero(matrix)  # row-major: by endpoint, then field number
    tokens = np.empty(2 * rows.size, dtype=np.uint64)
    tokens[0::2] = np.array([numbers[name] << 3 for name in names], dtype=np.uint64)[fields]
    tokens[1::2] = matrix[rows, fields]
    widths = np.ones(tokens.size, dtype=np.int64)
    for bits in range(7, 64, 7):
        widths += tokens >= np.uint64(1 << bits)
    ends = np.cumsum(widths)
    out = np.zeros(int(ends[-1]) if ends.size else 0, dtype=np.uint8)
    starts = ends - widths
    for k in range(int(widths.max(initial=0))):
        at = np.flatnonzero(widths > k)
        more = (widths[at] > k + 1).astype(np.uint8) << np.uint8(7)
        out[starts[at] + k] = ((tokens[at] >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8) | more
    per_row = np.bincount(np.repeat(rows, 2), weights=widths, minlength=matrix.shape[0]).astype(np.int64)
    bounds = np.concatenate(([0], np.cumsum(per_row)))
    data = out.tobytes()
    return [data[bounds[i]:bounds[i + 1]] for i in range(matrix.shape[0])]


def batch_bodies(base_second: int, seconds: int = SECONDS, seed: int = 7) -> list[tuple[str, bytes]]:
    """(worker_id, serialized MetricBatch without run_id), second by second, worker by worker.

    The first half of the workers report group "callers", the rest "callees". run_id is added
    per phase by ``with_run`` so one data set serves every run.
    """
    numbers = {f.name: f.number for f in endpoint_metrics_pb2.EndpointMetrics.DESCRIPTOR.fields}
    half = WORKERS // 2
    bodies = []
    for s, columns in enumerate(simulate(WORKERS * PER_BATCH, seconds, seed)):
        metrics = encode_metrics(columns, numbers)
        second = b"\x18" + _varint(base_second + s)
        for w in range(WORKERS):
            worker_id = f"w{w:03d}"
            group = b"callers" if w < half else b"callees"
            first = (w % half) * PER_BATCH
            parts = [b"\x12" + _varint(len(worker_id)) + worker_id.encode() + b"\x18" + _varint(s + 1)]
            for i in range(PER_BATCH):
                m = metrics[w * PER_BATCH + i]
                endpoint = b"\x10" + _varint(first + i) if first + i else b""  # proto3 leaves a 0 out
                sample = b"\x0a" + _varint(len(group)) + group + endpoint + second + b"\x22" + _varint(len(m)) + m
                parts.append(b"\x22" + _varint(len(sample)) + sample)
            bodies.append((worker_id, b"".join(parts)))
    # The encoder must agree with protobuf: what upb makes of a body, it serializes back unchanged.
    for _, body in bodies[:: max(1, len(bodies) // 20)]:
        assert results_pb2.MetricBatch.FromString(body).SerializeToString() == body
    return bodies


def with_run(run_id: str, body: bytes) -> bytes:
    """The batch with field 1 (run_id) in front: protobuf fields may come in any order."""
    raw = run_id.encode()
    assert len(raw) < 128
    return b"\x0a" + bytes([len(raw)]) + raw + body


def message(run_id: str, worker_id: str, index: int, body: bytes) -> tuple[str, bytes, dict[str, str]]:
    """Subject, payload and headers as the gateway publishes them."""
    return (batch_subject(run_id, worker_id), with_run(run_id, body),
            {"Nats-Msg-Id": batch_msg_id(worker_id, run_id, index)})


# ---------------------------------------------------------------------------------------------
# The publisher child: one nats-py connection, commands as JSON lines on stdin, answers on stdout.


async def _publisher(url: str, data_path: str) -> None:
    import nats
    from nats.js.api import StorageType, StreamConfig

    with open(data_path, "rb") as file:
        bodies: list[tuple[str, bytes]] = pickle.load(file)
    nc = await nats.connect(url)
    js = nc.jetstream()
    loop = asyncio.get_running_loop()
    print(json.dumps({"ready": True}), flush=True)

    async def burst(messages: list[tuple[str, bytes, dict[str, str]]]) -> dict[str, Any]:
        began = time.time()
        futures = [await js.publish_async(s, p, headers=h) for s, p, h in messages]
        sent = time.time()
        acks = await asyncio.gather(*futures)
        return {"began": began, "sent": sent, "acked": time.time(), "duplicates": sum(bool(a.duplicate) for a in acks)}

    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command = json.loads(line)
        op = command["op"]
        if op == "core":
            payloads = [with_run("core", body) for _, body in bodies]
            began = time.time()
            for payload in payloads:
                await nc.publish("bench.core.nobody", payload)
            await nc.flush()
            answer: dict[str, Any] = {"seconds": time.time() - began}
        elif op == "raw":
            await js.add_stream(StreamConfig(name=RAW_STREAM, subjects=["bench.raw.>"], storage=StorageType.FILE,
                                             duplicate_window=120.0))
            messages = [(f"bench.raw.{w}", with_run("raw", b), {"Nats-Msg-Id": f"raw:{i}"}) for i, (w, b) in enumerate(bodies)]
            answer = await burst(messages)
            began = time.time()
            for i, (w, b) in enumerate(bodies[:SYNC_PUBLISHES]):
                await js.publish(f"bench.raw.{w}", with_run("raw", b), headers={"Nats-Msg-Id": f"rawsync:{i}"})
            answer["sync_seconds"] = time.time() - began
            await js.delete_stream(RAW_STREAM)
        elif op == "burst":
            answer = await burst([message(command["run_id"], w, i, b) for i, (w, b) in enumerate(bodies)])
        elif op == "steady":
            answer = await _steady(js, bodies, command["prefix"], command["batches_per_s"], command["seconds"])
        else:
            answer = {"error": f"unknown op {op}"}
        print(json.dumps(answer), flush=True)
    await nc.close()


async def _steady(js: Any, bodies: list[tuple[str, bytes]], prefix: str, batches_per_s: float, seconds: float) -> dict[str, Any]:
    """Publishes on a fixed schedule; run ids ``<prefix><cycle>`` when the data set is used again."""
    total = round(batches_per_s * seconds)
    published: list[float] = []
    acked = [0.0] * total
    futures = []
    start = time.monotonic()
    i = 0
    while i < total:
        due = min(total, int((time.monotonic() - start) * batches_per_s) + 1)
        while i < due:
            cycle, j = divmod(i, len(bodies))
            worker_id, body = bodies[j]
            subject, payload, headers = message(f"{prefix}{cycle}", worker_id, j, body)
            published.append(time.time())
            future = await js.publish_async(subject, payload, headers=headers)
            future.add_done_callback(lambda _, k=i: acked.__setitem__(k, time.time()))
            futures.append(future)
            i += 1
        await asyncio.sleep(max(0.0, i / batches_per_s - (time.monotonic() - start)))
    elapsed = time.monotonic() - start
    acks = await asyncio.gather(*futures)
    ack_s = np.array(acked) - np.array(published)
    return {"published": published, "seconds": elapsed, "duplicates": sum(bool(a.duplicate) for a in acks),
            "ack_p50": float(np.percentile(ack_s, 50)), "ack_p99": float(np.percentile(ack_s, 99))}


class Publisher:
    """The child process, driven from this one."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, url: str, data_path: Path) -> Publisher:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.metrics_pipeline", "--publisher", url, str(data_path),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).resolve().parents[1],
            limit=2**26)  # an answer holds every publish time of a steady phase
        publisher = cls(process)
        await publisher.answer(timeout_s=120)
        return publisher

    async def send(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()

    async def answer(self, timeout_s: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout_s)
        if not line:
            raise RuntimeError(f"publisher exited with {await self.process.wait()}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    async def call(self, timeout_s: float = 300.0, **command: Any) -> dict[str, Any]:
        await self.send(**command)
        return await self.answer(timeout_s)

    async def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


# ---------------------------------------------------------------------------------------------
# This process: metrics-ingest, the direct insert, the count queries.


def table_rows(client) -> int:  # type: ignore[no-untyped-def]
    """Endpoint-seconds every query can see now: those in the rollup (refreshed after the raw insert)."""
    return int(client.command("SELECT sum(endpoints) FROM rollup_group_seconds FINAL"))


def final_rows(client) -> int:  # type: ignore[no-untyped-def]
    return int(client.command("SELECT count() FROM endpoint_seconds FINAL"))


def final_run_rows(client, run_id: str) -> int:  # type: ignore[no-untyped-def]
    return int(client.query("SELECT count() FROM endpoint_seconds FINAL WHERE run_id = {r:String}",
                            parameters={"r": run_id}).result_rows[0][0])


def refresh_late_second(client, run_id: str) -> None:  # type: ignore[no-untyped-def]
    """The rollup refresh of one second in the middle of a run whose raw rows are merged into one part.

    What a straggler batch costs: the raw table is sorted by endpoint before second, so the
    refresh reads the (run, group) range of every part whose seconds span the late one.
    """
    from services.metrics.store import refresh_rollups

    middle = client.command("SELECT toUInt32(avg(toUnixTimestamp(second))) FROM rollup_group_seconds "
                            "WHERE run_id = {r:String}", parameters={"r": run_id})
    refresh_rollups(client, [(run_id, "callers", int(middle))])


def disk_usage(client, table: str = "endpoint_seconds") -> dict[str, Any]:  # type: ignore[no-untyped-def]
    client.command(f"OPTIMIZE TABLE {table} FINAL")
    row = client.query("SELECT sum(rows), sum(bytes_on_disk), sum(data_compressed_bytes), sum(data_uncompressed_bytes), "
                       "count(), any(default_compression_codec), any(part_type) FROM system.parts "
                       "WHERE database = currentDatabase() AND table = {t:String} AND active",
                       parameters={"t": table}).result_rows[0]
    top = client.query("SELECT name, data_compressed_bytes FROM system.columns WHERE database = currentDatabase() "
                       "AND table = {t:String} ORDER BY data_compressed_bytes DESC LIMIT 4",
                       parameters={"t": table}).result_rows
    return {"rows": int(row[0]), "on_disk": int(row[1]), "compressed": int(row[2]), "uncompressed": int(row[3]),
            "parts": int(row[4]), "codec": row[5], "part_type": row[6], "top": [(name, int(size)) for name, size in top]}


@dataclass
class Polls:
    """(wall time after the query returned, rows counted since the phase began)."""

    points: list[tuple[float, int]]

    def first_seen(self, rows: int) -> float | None:
        for at, count in self.points:
            if count >= rows:
                return at
        return None


async def poll_rows(store: Any, baseline: int, target: int, deadline: float, every_s: float) -> Polls:
    points = []
    while True:
        count = await store.call(table_rows) - baseline
        points.append((time.time(), count))
        if count >= target or time.monotonic() > deadline:
            return Polls(points)
        await asyncio.sleep(every_s)


def insert_stats() -> tuple[float, float, float, float]:
    """(inserts, seconds in them, rows, seconds in rollup refreshes) so far, from the ingest's Prometheus metrics."""
    from prometheus_client import REGISTRY

    def value(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    return (value("callmeter_metrics_insert_seconds_count"), value("callmeter_metrics_insert_seconds_sum"),
            value("callmeter_metrics_rows_inserted_total"), value("callmeter_metrics_rollup_refresh_seconds_sum"))


def describe_inserts(before: tuple[float, float, float, float]) -> str:
    count, seconds, rows, refresh = (now - then for now, then in zip(insert_stats(), before, strict=True))
    if not count:
        return "no insert"
    return (f"{count:.0f} inserts of {rows / count:,.0f} rows in {seconds / count:.3f} s on average, "
            f"each followed by a rollup refresh of {refresh / count:.3f} s ({refresh / (seconds + refresh):.0%} "
            f"of the store thread's ingest time)")


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def rate(n: float, seconds: float) -> str:
    return f"{n / seconds:,.0f}" if seconds > 0 else "∞"


async def direct_insert(store: Any, bodies: list[tuple[str, bytes]], max_rows: int,
                        max_bytes: int) -> tuple[float, float, float, int]:
    """The same rows through the ingest's decode and row building, then the store's insert in max_rows chunks,
    each followed by the rollup refresh of its seconds.

    Returns (decode and build seconds, insert seconds, refresh seconds, rows), timed apart with
    nothing else running.
    """
    from services.metrics.batches import Refusal, RowBuffer, decode_rows
    from services.metrics.store import insert_samples, refresh_rollups

    now = int(time.time())
    decode_s = insert_s = refresh_s = 0.0
    rows = 0
    per_insert = max(1, max_rows // PER_BATCH)
    for chunk, first in enumerate(range(0, len(bodies), per_insert)):
        began = time.thread_time()
        buffer = RowBuffer()
        for worker_id, body in bodies[first:first + per_insert]:
            batch = decode_rows(batch_subject("direct", worker_id), with_run("direct", body), max_bytes, 0, now + 3600)
            assert not isinstance(batch, Refusal), batch
            buffer.add(batch)
        data = buffer.protobuf_rows() if store.protobuf_rows else buffer.columns
        keys = buffer.keys()
        decode_s += time.thread_time() - began
        began = time.perf_counter()
        await store.call(insert_samples, data, f"bench-direct:{chunk}")
        insert_s += time.perf_counter() - began
        began = time.perf_counter()
        await store.call(refresh_rollups, keys)
        refresh_s += time.perf_counter() - began
        rows += buffer.rows
    return decode_s, insert_s, refresh_s, rows


@dataclass
class Bench:
    """What the phases share."""

    store: Any
    ingest: Any
    publisher: Publisher
    bodies: list[tuple[str, bytes]]
    rows: int
    wire_bytes: int


async def publish_peers(bench: Bench) -> None:
    """The raw nats-py publish rates, with nothing consuming them."""
    batches, rows = len(bench.bodies), bench.rows
    core = await bench.publisher.call(op="core")
    raw = await bench.publisher.call(op="raw")
    raw_s = raw["acked"] - raw["began"]
    sync_n = min(SYNC_PUBLISHES, batches)
    print(f"peer  nats-py core publish (no JetStream)        {rate(batches, core['seconds']):>9} msgs/s = "
          f"{rate(rows, core['seconds']):>11} endpoint-seconds/s", flush=True)
    print(f"peer  nats-py JetStream publish_async, all acked  {rate(batches, raw_s):>9} msgs/s = "
          f"{rate(rows, raw_s):>11} endpoint-seconds/s", flush=True)
    print(f"peer  nats-py JetStream publish, each ack awaited {rate(sync_n, raw['sync_seconds']):>9} msgs/s = "
          f"{rate(sync_n * PER_BATCH, raw['sync_seconds']):>11} endpoint-seconds/s", flush=True)


async def store_peers(bench: Bench, settings: Any) -> float:
    """The ingest's Python work alone, and the store's insert of the same rows: the ceiling (rows/s)."""
    decode_s, insert_s, refresh_s, rows = await direct_insert(bench.store, bench.bodies, settings.ingest_max_rows,
                                                              settings.ingest_max_message_bytes)
    inserts = -(-rows // settings.ingest_max_rows)
    form = "protobuf-row" if bench.store.protobuf_rows else "column"
    print(f"peer  decode + check + {form}s (ingest's code, CPU time) {rate(rows, decode_s):>11} endpoint-seconds/s",
          flush=True)
    print(f"ceiling  direct insert, {settings.ingest_max_rows:,}-row {form} inserts {rate(rows, insert_s):>11} "
          f"endpoint-seconds/s   (decode + insert in turn: {rate(rows, decode_s + insert_s)})", flush=True)
    print(f"peer  rollup refresh after each of those inserts: {refresh_s / inserts * 1000:.0f} ms "
          f"(the insert: {insert_s / inserts * 1000:.0f} ms) = +{refresh_s / insert_s:.0%}; insert + refresh "
          f"{rate(rows, insert_s + refresh_s):>11} endpoint-seconds/s", flush=True)
    return rows / (insert_s + refresh_s)


async def end_to_end(bench: Bench, ceiling: float) -> float:
    """Every batch published at once, until a count query sees every row (rows/s)."""
    rows = bench.rows
    baseline = await bench.store.call(table_rows)
    cpu_before, load_before, inserts_before = cpu_s(), load(), insert_stats()
    await bench.publisher.send(op="burst", run_id="bench-e2e")
    polls = await poll_rows(bench.store, baseline, rows, time.monotonic() + rows / 10_000 + DRAIN_TIMEOUT_S, BURST_POLL_S)
    burst = await bench.publisher.answer(60)
    cpu = cpu_s() - cpu_before
    assert not burst["duplicates"], burst
    seen = polls.first_seen(rows)
    if seen is None:
        print(f"end to end  NOT DRAINED: {polls.points[-1][1]:,} of {rows:,} rows queryable at the deadline")
        return 0.0
    took = seen - burst["began"]
    print(f"end to end  publish → queryable, burst of {rows:,}  {rows / took:>11,.0f} endpoint-seconds/s "
          f"({took:.2f} s; published in {burst['acked'] - burst['began']:.2f} s) = "
          f"{rows / took / ceiling:.2f} × the direct insert + refresh", flush=True)
    print(f"    ingest process CPU {cpu / took:.2f} cores = {cpu / rows * 1e6:.1f} µs per endpoint-second (incl. chDB "
          f"threads, rollup count queries every {BURST_POLL_S * 1000:.0f} ms); {describe_inserts(inserts_before)}; "
          f"load {load_before} → {load()}", flush=True)
    return rows / took


async def steady(bench: Bench, steady_rate: int) -> bool:
    """Publishes at a fixed rate; the lag of every batch from its publish to a count query that sees it.

    True if the p99 lag is below the goal and every batch became queryable.
    """
    batches_per_s = steady_rate / PER_BATCH
    total = round(batches_per_s * STEADY_S)
    baseline = await bench.store.call(table_rows)
    load_before, inserts_before = load(), insert_stats()
    await bench.publisher.send(op="steady", prefix=f"st{steady_rate // 1000}k-", batches_per_s=batches_per_s,
                               seconds=STEADY_S)
    polls = await poll_rows(bench.store, baseline, total * PER_BATCH, time.monotonic() + STEADY_S + DRAIN_TIMEOUT_S,
                            STEADY_POLL_S)
    answer = await bench.publisher.answer(60)
    assert not answer["duplicates"], answer["duplicates"]
    # Ingest inserts in stream order, so once the count reaches k batches' rows, the first k are queryable.
    lags = []
    position = 0
    for k, published in enumerate(answer["published"]):
        while position < len(polls.points) and polls.points[position][1] < (k + 1) * PER_BATCH:
            position += 1
        if position == len(polls.points):
            break
        lags.append(polls.points[position][0] - published)
    missing = total - len(lags)
    p50, p99 = (float(np.percentile(lags, q)) for q in (50, 99)) if lags else (float("nan"),) * 2
    print(f"steady {steady_rate:,}/s for {STEADY_S:.0f} s (sent {total * PER_BATCH / answer['seconds']:,.0f}/s)   "
          f"lag publish → queryable p50 {p50:.2f} s, p99 {p99:.2f} s, max {max(lags, default=float('nan')):.2f} s"
          f"{f'; {missing:,} batches NOT queryable within {DRAIN_TIMEOUT_S:.0f} s' if missing else ''}", flush=True)
    print(f"    peer: JetStream publish ack p50 {answer['ack_p50'] * 1000:.1f} ms, p99 {answer['ack_p99'] * 1000:.1f} ms; "
          f"rollup count query every {STEADY_POLL_S * 1000:.0f} ms; {describe_inserts(inserts_before)}; "
          f"load {load_before} → {load()}", flush=True)
    return p99 < GOAL_P99_LAG_S and not missing


async def disk(bench: Bench) -> None:
    """Bytes per endpoint-second once merged, beside JetStream's and the wire's; every key once."""
    stream = await bench.ingest.nats.jetstream().stream_info("CALLMETER_METRICS")
    began = time.perf_counter()
    usage = await bench.store.call(disk_usage)
    optimize_s = time.perf_counter() - began
    distinct = await bench.store.call(final_rows)
    rows = usage["rows"]
    print(f"disk  {usage['on_disk'] / rows:.1f} B/endpoint-second in chDB after OPTIMIZE FINAL "
          f"({rows:,} rows, {usage['on_disk'] / 2**20:.0f} MiB in {usage['parts']} {usage['part_type']} part(s), "
          f"{usage['codec']}, {usage['uncompressed'] / rows:.0f} B uncompressed; took {optimize_s:.1f} s)", flush=True)
    top = ", ".join(f"{name} {size / rows:.1f} B" for name, size in usage["top"])
    print(f"    peer: JetStream file store {stream.state.bytes / (stream.state.messages * PER_BATCH):.1f} B/endpoint-second, "
          f"wire {bench.wire_bytes / bench.rows:.1f} B; biggest columns: {top}", flush=True)
    print(f"    every key once: FINAL {distinct:,} = rows {rows:,}: {distinct == rows}", flush=True)
    for table in ("rollup_group_seconds", "rollup_endpoints"):
        rollup = await bench.store.call(disk_usage, table)
        print(f"    rollup {table}: {rollup['on_disk'] / rows:.2f} B/endpoint-second ({rollup['rows']:,} rows, "
              f"{rollup['on_disk'] / 2**20:.1f} MiB)", flush=True)


#: The run summary from the raw rows, as it was computed before the rollup (the peer).
_RAW_SUMMARY_SQL = """
SELECT run_id, `group`, grouping(`group`) AS is_total,
  uniqExact(`group`, endpoint),
  sum(calls_attempted), sum(calls_connected), sum(calls_failed),
  ifNotFinite(avgIf(mos / 100, call_active = 1 AND mos > 0), 0),
  ifNotFinite(minIf(mos / 100, call_active = 1 AND mos > 0), 0),
  ifNotFinite(quantileExactInclusiveIf(0.95)(rx_jitter_us / 1000, call_active = 1), 0),
  sum(rx_lost), sum(rx_packets),
  ifNotFinite(quantileExactInclusiveIf(0.95)(rtt_us / 1000, call_active = 1 AND rtt_us > 0), 0),
  ifNotFinite(quantileExactInclusiveIf(0.95)(setup_time_ms / 1, calls_connected > 0 AND setup_time_ms > 0), 0)
FROM endpoint_seconds FINAL WHERE run_id IN {runs:Array(String)}
GROUP BY GROUPING SETS ((run_id, `group`), (run_id))
"""
_RAW_REGISTERED_SQL = """
SELECT run_id, `group`, grouping(`group`), countIf(last_registered = 1)
FROM (SELECT run_id, `group`, endpoint, argMax(registered, second) AS last_registered
      FROM endpoint_seconds FINAL WHERE run_id IN {runs:Array(String)} GROUP BY run_id, `group`, endpoint)
GROUP BY GROUPING SETS ((run_id, `group`), (run_id))
"""
_RAW_FAILURES_SQL = """
SELECT run_id, `group`, grouping(`group`), if(call_last_code >= 300, call_last_code, 0) AS code, sum(calls_failed)
FROM endpoint_seconds FINAL WHERE run_id IN {runs:Array(String)} AND calls_failed > 0
GROUP BY GROUPING SETS ((run_id, `group`, code), (run_id, code))
"""


def raw_summary(client, run_id: str) -> dict[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    """group ('' for the run) → GroupSummary fields, from the raw rows: three queries, as before the rollup."""
    fields = ("endpoints", "calls_attempted", "calls_connected", "calls_failed", "mos_avg", "mos_min", "jitter_ms_p95",
              "lost", "received", "rtt_ms_p95", "setup_ms_p95")
    found: dict[str, dict[str, Any]] = {}
    params = {"runs": [run_id]}
    for _, group, is_total, *values in client.query(_RAW_SUMMARY_SQL, parameters=params).result_rows:
        found["" if is_total else group] = {**dict(zip(fields, values, strict=True)), "failures_by_code": {}}
    for _, group, is_total, registered in client.query(_RAW_REGISTERED_SQL, parameters=params).result_rows:
        found["" if is_total else group]["registered"] = registered
    for _, group, is_total, code, failures in client.query(_RAW_FAILURES_SQL, parameters=params).result_rows:
        found["" if is_total else group]["failures_by_code"][code] = failures
    for summary in found.values():
        lost, received = summary.pop("lost"), summary.pop("received")
        summary["loss_pct"] = 100.0 * lost / (received + lost) if received + lost else 0.0
    return found


def rollup_summary(client, run_id: str) -> dict[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    """The same from the rollups, through the query service's code."""
    from services.metrics import queries

    fields = [f.name for f in results_pb2.GroupSummary.DESCRIPTOR.fields if f.name not in ("group", "failures_by_code")]
    return {group: {**{name: getattr(summary, name) for name in fields}, "failures_by_code": dict(summary.failures_by_code)}
            for group, summary in queries.group_summaries(client, [run_id]).get(run_id, {}).items()}


def same_summaries(rollup: dict[str, dict[str, Any]], raw: dict[str, dict[str, Any]]) -> str:
    """'identical …', or what differs.

    mos_avg is compared to 1e-9: the rollup divides an integer sum (exact), the raw query adds up
    ~10⁶ Float64s of mos / 100, whose rounding shows around the 11th digit.
    """
    differences = []
    mos_drift = 0.0
    for group in sorted(set(rollup) | set(raw)):
        ours, theirs = rollup.get(group, {}), raw.get(group, {})
        for name in sorted(set(theirs)):
            a, b = ours.get(name), theirs[name]
            if name == "mos_avg" and a is not None and b:
                mos_drift = max(mos_drift, abs(a - b) / abs(b))
                same = abs(a - b) <= 1e-9 * abs(b)
            else:
                same = a == b
            if not same:
                differences.append(f"{group or 'total'}.{name}: rollup {a!r}, raw {b!r}")
    if differences:
        return "DIFFERENT: " + "; ".join(differences[:6])
    return f"identical (mos_avg to {mos_drift:.0e} relative)" if mos_drift else "identical"


async def summary_times(bench: Bench, when: str) -> None:
    """GetRunSummary of the burst's run from the rollups, and from the raw rows (the peer), best of 3."""
    run = "bench-e2e"
    times = {}
    answers = {}
    for label, fn in (("rollups", rollup_summary), ("raw rows", raw_summary)):
        best = float("inf")
        for _ in range(3):
            began = time.perf_counter()
            answers[label] = await bench.store.call(fn, run)
            best = min(best, time.perf_counter() - began)
        times[label] = best
    print(f"summary  GetRunSummary of the burst's run {when}: from the rollups {times['rollups'] * 1000:.0f} ms, "
          f"from the raw rows {times['raw rows'] * 1000:.0f} ms ({times['raw rows'] / times['rollups']:.1f}×); "
          f"numbers {same_summaries(answers['rollups'], answers['raw rows'])}", flush=True)


async def query_times(bench: Bench) -> None:
    """The query service's reads of the burst's run (5,000 endpoints × SECONDS), best of 3, merged store."""
    from callmeter.catalog import BY_NAME
    from services.metrics import queries

    run = "bench-e2e"
    await summary_times(bench, "after OPTIMIZE")
    reads: list[tuple[str, Any, tuple[Any, ...]]] = [
        ("GetRunSummary (2 queries on the rollups)", queries.run_summary, (run, [])),
        ("peer: the summary on raw rows (3 queries)", raw_summary, (run,)),
        ("GetSeries, whole run, avg mos, step 10 s", queries.series, (run, BY_NAME["mos"], "avg", 10, "", -1)),
        ("GetSeries, one group, p95 jitter, step 1 s", queries.series, (run, BY_NAME["rx_jitter_us"], "p95", 1, "callers", -1)),
        ("GetSeries, one endpoint", queries.series, (run, BY_NAME["mos"], "avg", 1, "callers", 7)),
        ("GetTopEndpoints, lowest mos", queries.top_endpoints, (run, BY_NAME["mos"], True, 10)),
        ("peer: count() FINAL of the run", final_run_rows, (run,)),
        ("rollup refresh of one late second, run merged", refresh_late_second, (run,)),
    ]
    print(f"queries  over the burst's {bench.rows:,} endpoint-seconds (best of 3, after OPTIMIZE):", flush=True)
    for label, fn, args in reads:
        best = float("inf")
        for _ in range(3):
            began = time.perf_counter()
            await bench.store.call(fn, *args)
            best = min(best, time.perf_counter() - began)
        print(f"    {label:<44} {best * 1000:>6.0f} ms", flush=True)


async def measure(tmp: Path) -> None:
    from callmeter.common.stores.nats import EmbeddedNats
    from services.metrics.main import MetricsIngest
    from services.metrics.settings import MetricsSettings
    from services.metrics.store import MetricsStore

    print(f"load average before: {load()} ({os.cpu_count()} cores, shared with other benchmarks)", flush=True)
    began = time.perf_counter()
    bodies = batch_bodies(int(time.time()) - SECONDS - 7200)
    generated_s = time.perf_counter() - began
    data_path = tmp / "bodies.pickle"
    with open(data_path, "wb") as file:
        pickle.dump(bodies, file, protocol=pickle.HIGHEST_PROTOCOL)
    rows = len(bodies) * PER_BATCH
    wire = sum(len(with_run("bench-e2e", body)) for _, body in bodies)
    looked = [sample.metrics for _, body in bodies[::50] for sample in results_pb2.MetricBatch.FromString(body).samples]
    print(f"data: {WORKERS * PER_BATCH:,} endpoints ({WORKERS} workers × {PER_BATCH}) × {SECONDS} s = {rows:,} "
          f"endpoint-seconds in {len(bodies):,} MetricBatches, {wire / rows:.1f} B/endpoint-second on the wire, "
          f"{sum(m.call_active for m in looked) / len(looked):.0%} in a call, "
          f"{sum(len(m.ListFields()) for m in looked) / len(looked):.0f} of {len(METRICS)} metrics non-zero on average "
          f"(generated in {generated_s:.1f} s)", flush=True)

    nats_server = EmbeddedNats(tmp / "nats")
    nats_server.start()
    settings = MetricsSettings(nats_url=nats_server.url, clickhouse_url=f"chdb://{tmp / 'chdb'}")
    ingest = MetricsIngest(settings, MetricsStore(settings.clickhouse_url, settings.raw_ttl_days))
    publisher = None
    try:
        await ingest.start()
        publisher = await Publisher.start(nats_server.url, data_path)
        print(f"ingest settings: max_rows {settings.ingest_max_rows:,}, max_delay {settings.ingest_max_delay_s} s, "
              f"fetch_batch {settings.ingest_fetch_batch}, max_ack_pending {settings.ingest_max_ack_pending:,}", flush=True)
        bench = Bench(ingest.store, ingest, publisher, bodies, rows, wire)
        await publish_peers(bench)
        ceiling = await store_peers(bench, settings)
        e2e = await end_to_end(bench, ceiling)
        lag_ok = [await steady(bench, steady_rate) for steady_rate in STEADY_RATES]
        await summary_times(bench, "as ingested (before OPTIMIZE)")
        await disk(bench)
        await query_times(bench)
        print(f"goal ≥ {GOAL_RATE:,} endpoint-seconds/s per ingest process: {'met' if e2e >= GOAL_RATE else 'MISSED'} "
              f"({e2e:,.0f}); p99 lag < {GOAL_P99_LAG_S:.0f} s at {', '.join(f'{r:,}/s' for r in STEADY_RATES)}: "
              f"{'met' if all(lag_ok) else 'MISSED'}", flush=True)
        print(f"load average after: {load()}", flush=True)
    finally:
        if publisher is not None:
            await publisher.close()
        await ingest.stop()
        nats_server.stop()


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="callmeter-bench-metrics-") as tmp:
        asyncio.run(measure(Path(tmp)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--publisher"]:
        asyncio.run(_publisher(sys.argv[2], sys.argv[3]))
    else:
        run()
