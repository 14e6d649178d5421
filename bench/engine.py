"""The pjsua2 engines on this machine, each figure beside SIPp measured in the same run.

1. Per-engine overhead and its cheap cuts: idle and 4-leg engines at poll intervals of 20, 50
   and 100 ms (CALLMETER_ENGINE_POLL_MS), and a bare pjsua2 process (no Python scenario loop)
   with pjsua's default media settings against the engine's (8 kHz bridge, no echo canceller,
   no VAD; all with the null audio device, which is what clocks the conference bridge).
2. Sustained PCMU legs: engine pairs (4 callers → 4 callees, so 4 legs in each engine) added
   level by level; a level holds if over its window every leg is up, receive loss < 1 % and the
   95th percentile of the per-second RFC 3550 jitter < 10 ms. Peer: SIPp UAC playing a 20 ms
   PCMU pcap into SIPp UAS -rtp_echo, as many legs (UAC + UAS) as the last level that held.
3. REGISTERs per second against Kamailio (digest, the registrar test's configuration): a storm
   of engines × 8 phones started at once, beside SIPp's REGISTER scenario at the same concurrency.
4. Call setups per second to SIPp's UAS: engine callers (4 per engine, repeated calls of 0 s)
   beside SIPp's UAC at the same concurrency.

CALLMETER_BENCH_QUICK=1: 10 s levels and small maxima, to try it. Loopback only; every loop is
bounded in count and time. The machine is shared: the table says how busy the rest of it was.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from callmeter.v1 import common_pb2, engine_pb2, tests_pb2
from services.worker.engine.channel import read_frame
from services.worker.engine.client import EngineClient

QUICK = os.environ.get("CALLMETER_BENCH_QUICK") == "1"
LEVEL_S = 10 if QUICK else 60
# Engines (callers + callees, 4 legs each) at each level of the ramp; it stops at the first that fails.
LEVELS = (4, 8, 16) if QUICK else (8, 16, 32, 64, 96, 112, 128)
CUT_WINDOW_S = 5 if QUICK else 10
CUT_POLLS = (20, 50, 100)
REGISTER_ENGINES = 8 if QUICK else 50  # × 8 phones
SIPP_REGISTERS = 1000 if QUICK else 4000
SETUP_ENGINES = 4 if QUICK else 16  # × 4 callers
SETUP_REPETITIONS = 10 if QUICK else 30
SIPP_CALLS = 1000 if QUICK else 4000
LOSS_MAX_PCT = 1.0
JITTER_P95_MAX_MS = 10.0

SIP_IP = "127.0.0.1"
SIPP = shutil.which("sipp") or "/usr/bin/sipp"
TICKS = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


# --- processes, CPU and memory ------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, its ended threads included, in clock ticks (10 ms); 0 once it is gone."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def thread_seconds(pid: int) -> float:
    """CPU time of a process's live threads to the nanosecond (schedstat): for small figures of
    processes whose threads live as long as they do (engines, bare pjsua2)."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
    except OSError:
        pass
    return total / 1e9


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    values = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB; PSS shares the pages several processes map among them."""
    kb = {}
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                kb[parts[0].rstrip(":")] = int(parts[1])
    except OSError:
        return 0.0, 0.0
    return kb.get("Rss", 0) / 1024, kb.get("Pss", 0) / 1024


def udp_datagrams() -> tuple[int, int, int]:
    """UDP datagrams the kernel delivered to a socket, those to a port without one, and those
    dropped because a socket's receive buffer was full (machine-wide counters)."""
    lines = [line.split() for line in open("/proc/net/snmp") if line.startswith("Udp:")]
    return tuple(int(lines[1][lines[0].index(name)]) for name in ("InDatagrams", "NoPorts", "RcvbufErrors"))


class Window:
    """CPU of given processes and of the whole machine between start() and stop()."""

    def __init__(self, pids: Iterable[int], precise: bool = False) -> None:
        self.pids = list(pids)
        self.cpu = thread_seconds if precise else cpu_seconds

    def start(self) -> Window:
        self.began = time.monotonic()
        self.cpu0 = {pid: self.cpu(pid) for pid in self.pids}
        self.self0 = cpu_seconds(os.getpid())
        self.machine0 = machine_jiffies()
        self.udp0 = udp_datagrams()
        return self

    def stop(self) -> Window:
        self.seconds = time.monotonic() - self.began
        self.pct = {pid: max(100 * (self.cpu(pid) - self.cpu0[pid]) / self.seconds, 0.0) for pid in self.pids}
        self.self_pct = 100 * (cpu_seconds(os.getpid()) - self.self0) / self.seconds
        busy0, total0 = self.machine0
        busy1, total1 = machine_jiffies()
        # Busy share of the whole machine, in % of one core (0 … 100 × cores).
        self.machine_pct = 100 * CORES * (busy1 - busy0) / max(total1 - total0, 1)
        (delivered, unbound, dropped), (delivered0, unbound0, dropped0) = udp_datagrams(), self.udp0
        self.udp_per_s = (delivered - delivered0) / self.seconds
        self.udp_unbound_per_s = (unbound - unbound0) / self.seconds
        self.udp_dropped = dropped - dropped0
        return self

    @property
    def total_pct(self) -> float:
        return sum(self.pct.values())

    @property
    def others_pct(self) -> float:
        """What the rest of the machine (other engineers' work, the kernel's share not charged) used."""
        return max(self.machine_pct - self.total_pct - self.self_pct, 0.0)


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[2]) == pgid:
                    pids.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return pids


# --- ports ------------------------------------------------------------------------------------


def udp_bound(port: int) -> bool:
    wanted = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    with open("/proc/net/udp") as table:
        return any(line.split()[1] in wanted for line in list(table)[1:])


class Ports:
    """Disjoint loopback ports for one benchmark run: RTP ranges below the ephemeral range,
    SIP listening ports above it (ip_local_port_range is 32768-60999 here)."""

    RTP_PER_ENGINE = 40  # 4 phones × 10 ports: 5 RTP/RTCP pairs each

    def __init__(self) -> None:
        self.next_rtp = random.randrange(10000, 12000, 2)
        self.next_sip = random.randrange(61000, 62000)

    def rtp(self) -> tuple[int, int]:
        first = self.next_rtp
        self.next_rtp += self.RTP_PER_ENGINE
        if self.next_rtp > 32000:
            raise RuntimeError("out of RTP ports for the benchmark")
        return first, first + self.RTP_PER_ENGINE - 1

    def sip(self, count: int = 1) -> int:
        """The first of `count` consecutive free UDP ports."""
        while True:
            first = self.next_sip
            self.next_sip += count
            if self.next_sip > 65000:
                raise RuntimeError("out of SIP ports for the benchmark")
            if not any(udp_bound(first + k) for k in range(count)):
                return first

    def media(self) -> int:
        """An even port p with p … p+3 free (SIPp's RTP echo binds p and p+2)."""
        self.next_sip += self.next_sip % 2
        return self.sip(4)


# --- engines ------------------------------------------------------------------------------------


class Row(NamedTuple):
    second: int
    group: str
    endpoint: int
    active: bool
    rx: int
    lost: int
    jitter_us: int
    connected: int
    failed: int
    registered: bool
    register_ms: int
    setup_ms: int


class Engine(EngineClient):
    """An engine whose events are folded into rows as they arrive (nothing queued)."""

    def __init__(self, poll_ms: int = 0) -> None:
        self.rows: list[Row] = []
        self.errors: list[str] = []
        self.ready = threading.Event()
        self.done_at: float | None = None
        env = {"SIP_IP": SIP_IP, "CALLMETER_LOG_LEVEL": "warning"}
        if poll_ms:
            env["CALLMETER_ENGINE_POLL_MS"] = str(poll_ms)
        super().__init__(env=env, stderr=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            while (body := read_frame(self.proc.stdout)) is not None:
                event = engine_pb2.EngineEvent.FromString(body)
                kind = event.WhichOneof("event")
                if kind == "sample":
                    s, m = event.sample, event.sample.metrics
                    self.rows.append(Row(s.second, s.group, s.endpoint, m.call_active, m.rx_packets, m.rx_lost,
                                         m.rx_jitter_us, m.calls_connected, m.calls_failed, m.registered,
                                         m.register_time_ms, m.setup_time_ms))
                elif kind == "endpoint_error":
                    error = event.endpoint_error
                    self.errors.append(f"{error.group}/{error.endpoint}: {error.reason}")
                elif kind == "done":
                    self.done_at = time.time()
                elif kind == "ready":
                    self.ready.set()
        finally:
            self._events.put(None)

    def start_run(self, spec: tests_pb2.TestSpec, slices: list[tuple[str, int, int]], rtp: tuple[int, int],
                  start_at: float, credentials: dict[str, str] | None = None) -> None:
        """Starts the run: slices are (group, first index, count)."""
        command = engine_pb2.EngineCommand()
        start = command.start
        start.run_id = f"bench-{spec.name}"
        start.spec.CopyFrom(spec)
        for group, first, count in slices:
            start.slices.add(group=group, first_index=first, count=count)
        start.rtp_port_min, start.rtp_port_max = rtp
        start.start_at = start_at
        for name, password in (credentials or {}).items():
            start.credentials[name].password = password
        self.send(command)


def spawn(count: int, poll_ms: int = 0) -> list[Engine]:
    engines = [Engine(poll_ms) for _ in range(count)]
    deadline = time.monotonic() + 30 + count
    for engine in engines:
        if not engine.ready.wait(max(deadline - time.monotonic(), 0.1)):
            stop_all(engines)
            raise RuntimeError("an engine did not get ready")
    return engines


def stop_all(engines: list[Engine]) -> None:
    """Stop commands to all first, then the waits: each engine hangs up for up to 3 s."""
    for engine in engines:
        try:
            engine.send(engine_pb2.EngineCommand(stop=engine_pb2.EngineStop(reason="bench done")))
            assert engine.proc.stdin is not None
            engine.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
    deadline = time.monotonic() + 20
    for engine in engines:
        try:
            engine.proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            engine.kill()


def wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def pcmu_spec(name: str, callee_port: int, duration_s: int) -> tests_pb2.TestSpec:
    """4 callers calling 4 callees (each callee on its own SIP port, callee_port + i)."""
    spec = tests_pb2.TestSpec(name=name)
    callees = spec.groups.add(name="callees", count=4, role=common_pb2.ENDPOINT_ROLE_CALLEE, codecs=["PCMU"])
    callees.target.aor = f"sip:callee@{SIP_IP}:{{n}}"
    callees.target.number_start = callee_port
    callers = spec.groups.add(name="callers", count=4, role=common_pb2.ENDPOINT_ROLE_CALLER, codecs=["PCMU"])
    callers.target.call_uri = "group:callees"
    callers.scenario.call_duration.seconds = duration_s
    return spec


class Pair(NamedTuple):
    callee: Engine
    caller: Engine


def start_pairs(count: int, ports: Ports, duration_s: int, poll_ms: int = 0) -> list[Pair]:
    """`count` engine pairs, each 4 callers → 4 callees, calls starting 1 s from now."""
    engines = spawn(2 * count, poll_ms)
    pairs = [Pair(engines[2 * i], engines[2 * i + 1]) for i in range(count)]
    start_at = time.time() + 1.0
    for i, pair in enumerate(pairs):
        spec = pcmu_spec(f"legs-{i}", ports.sip(4), duration_s)
        pair.callee.start_run(spec, [("callees", 0, 4)], ports.rtp(), start_at)
        pair.caller.start_run(spec, [("callers", 0, 4)], ports.rtp(), start_at)
    return pairs


def legs_up(engines: list[Engine]) -> int:
    """Phones whose newest sample shows a call in progress."""
    up = 0
    for engine in engines:
        newest: dict[tuple[str, int], bool] = {}
        for row in engine.rows[-8:]:
            newest[(row.group, row.endpoint)] = row.active
        up += sum(newest.values())
    return up


# --- media figures ----------------------------------------------------------------------------


@dataclass
class Media:
    legs: int  # phones expected in a call
    legs_full: int  # phones in a call in every second of the window
    loss_pct: float
    jitter_p95_ms: float
    jitter_max_ms: float
    packets_per_leg_s: float

    @property
    def holds(self) -> bool:
        return self.legs_full == self.legs and self.loss_pct < LOSS_MAX_PCT and self.jitter_p95_ms < JITTER_P95_MAX_MS

    def why_not(self) -> str:
        reasons = []
        if self.legs_full < self.legs:
            reasons.append(f"{self.legs - self.legs_full} of {self.legs} legs not up all along")
        if self.loss_pct >= LOSS_MAX_PCT:
            reasons.append(f"loss {self.loss_pct:.2f} %")
        if self.jitter_p95_ms >= JITTER_P95_MAX_MS:
            reasons.append(f"jitter p95 {self.jitter_p95_ms:.1f} ms")
        return ", ".join(reasons)


def media_figures(engines: list[Engine], first_second: int, end_second: int) -> Media:
    """Receive figures of every phone over the seconds [first_second, end_second)."""
    want = end_second - first_second
    received = lost = full = phones = 0
    jitters: list[float] = []
    for engine in engines:
        per_phone: dict[tuple[str, int], list[Row]] = {}
        for row in engine.rows:
            if first_second <= row.second < end_second:
                per_phone.setdefault((row.group, row.endpoint), []).append(row)
        phones += 4
        for rows in per_phone.values():
            full += len(rows) == want and all(row.active for row in rows)
            for row in rows:
                received += row.rx
                lost += row.lost
                if row.active:
                    jitters.append(row.jitter_us / 1000)
    jitters.sort()
    return Media(
        legs=phones, legs_full=full, loss_pct=100 * lost / max(received + lost, 1),
        jitter_p95_ms=jitters[min(len(jitters) - 1, int(0.95 * len(jitters)))] if jitters else math.inf,
        jitter_max_ms=jitters[-1] if jitters else math.inf,
        packets_per_leg_s=received / max(phones * want, 1),
    )


# --- 1. per-engine overhead and cheap cuts ---------------------------------------------------

# A bare pjsua2 process: the same media path as an engine (tone → calls → null sound device),
# `calls` calls to itself (2 legs each), and a loop of libHandleEvents(poll) and nothing else.
_BARE = r"""
import json, sys, time
import pjsua2 as pj
c = json.loads(sys.argv[1])
ep = pj.Endpoint(); ep.libCreate()
cfg = pj.EpConfig(); cfg.uaConfig.threadCnt = 0; cfg.uaConfig.mainThreadOnly = True
cfg.logConfig.level = 0; cfg.logConfig.consoleLevel = 0
m = cfg.medConfig
if c["clock"]: m.clockRate = m.sndClockRate = c["clock"]
if c["ec"] is not None: m.ecTailLen = c["ec"]
if c["novad"]: m.noVad = True
ep.libInit(cfg); ep.audDevManager().setNullDev()
tc = pj.TransportConfig(); tc.boundAddress = "127.0.0.1"
tid = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tc); ep.libStart()
for codec in ep.codecEnum2():
    ep.codecSetPriority(codec.codecId, 255 if codec.codecId.startswith("PCMU") else 0)
port = ep.transportGetInfo(tid).localName.rsplit(":", 1)[1]
tone = pj.ToneGenerator(); tone.createToneGenerator(m.clockRate, 1)
desc = pj.ToneDesc(); desc.freq1, desc.freq2, desc.on_msec, desc.off_msec = 1004, 0, 1000, 0
tones = pj.ToneDescVector(); tones.append(desc); tone.play(tones, True)
sink = ep.audDevManager().getPlaybackDevMedia()
calls, up = [], set()
class Call(pj.Call):
    def onCallState(self, prm):
        pass
    def onCallMediaState(self, prm):
        info = self.getInfo()
        for media in info.media:
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                audio = self.getAudioMedia(media.index)
                tone.startTransmit(audio); audio.startTransmit(sink); up.add(self.getId())
class Acc(pj.Account):
    def onIncomingCall(self, prm):
        call = Call(self, prm.callId); calls.append(call)
        op = pj.CallOpParam(); op.statusCode = 200; call.answer(op)
def account(user, rtp):
    ac = pj.AccountConfig(); ac.idUri = f"sip:{user}@127.0.0.1"; ac.sipConfig.transportId = tid
    ac.mediaConfig.transportConfig.port = rtp; ac.mediaConfig.transportConfig.portRange = 18
    ac.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    acc = Acc(); acc.create(ac); return acc
caller, callee = account("caller", c["rtp"]), account("callee", c["rtp"] + 20)
for _ in range(c["calls"]):
    call = Call(caller); call.makeCall(f"sip:callee@127.0.0.1:{port}", pj.CallOpParam(True)); calls.append(call)
end = time.time() + 5
while len(up) < 2 * c["calls"] and time.time() < end:
    ep.libHandleEvents(10)
print("ready", len(up), flush=True)
while True:
    ep.libHandleEvents(c["poll"])
"""


@dataclass
class Bare:
    label: str
    clock: int = 0  # 0: pjsua's default (16 kHz)
    ec: int | None = None  # echo canceller tail in ms; None: pjsua's default (200 ms)
    novad: bool = False
    calls: int = 2
    poll: int = 20
    proc: subprocess.Popen | None = None

    def start(self, rtp: int) -> None:
        config = {"clock": self.clock, "ec": self.ec, "novad": self.novad, "calls": self.calls, "poll": self.poll,
                  "rtp": rtp}
        self.proc = subprocess.Popen([sys.executable, "-c", _BARE, json.dumps(config)], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)

    def wait_ready(self) -> int:
        """Legs up, from the child's "ready N" line (pjlib may print before it)."""
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("ready "):
                return int(line.split()[1])
        return -1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # a measuring child: no orderly pjsua shutdown needed
            self.proc.wait(5)


def overhead(ports: Ports) -> dict[str, object]:
    """Idle engines, bare pjsua2 variants (one window), then 4-leg engine pairs (another)."""
    idle = {poll: spawn(4, poll) for poll in CUT_POLLS}
    bares = [Bare("pjsua defaults (16 kHz bridge, EC 200 ms, VAD)"),
             Bare("8 kHz bridge", clock=8000),
             Bare("8 kHz, no EC", clock=8000, ec=0),
             Bare("8 kHz, no EC, no VAD (the engine's)", clock=8000, ec=0, novad=True),
             Bare("the engine's, poll 50 ms", clock=8000, ec=0, novad=True, poll=50),
             Bare("idle, no calls", clock=8000, ec=0, novad=True, calls=0)]
    bare_legs = {}
    try:
        for bare in bares:
            bare.start(ports.rtp()[0])
        for bare in bares:
            bare_legs[bare.label] = bare.wait_ready()
        time.sleep(2)
        pids = [e.pid for engines in idle.values() for e in engines] + [b.proc.pid for b in bares if b.proc]
        window = Window(pids, precise=True).start()
        time.sleep(CUT_WINDOW_S)
        window.stop()
        idle_pct = {poll: statistics.mean(window.pct[e.pid] for e in engines) for poll, engines in idle.items()}
        idle_mem = statistics.mean(memory_mb(e.pid)[0] for engines in idle.values() for e in engines)
        bare_pct = {b.label: window.pct[b.proc.pid] for b in bares if b.proc}
        bare_mem = memory_mb(bares[3].proc.pid)[0] if bares[3].proc else 0.0
        others = window.others_pct
    finally:
        for bare in bares:
            bare.stop()
        stop_all([e for engines in idle.values() for e in engines])

    pairs = {poll: start_pairs(1, ports, duration_s=CUT_WINDOW_S + 20, poll_ms=poll) for poll in CUT_POLLS}
    everyone = [engine for group in pairs.values() for pair in group for engine in pair]
    try:
        up = wait_until(lambda: legs_up(everyone) == 4 * len(everyone), 15)
        time.sleep(2)
        window = Window([e.pid for e in everyone], precise=True).start()
        time.sleep(CUT_WINDOW_S)
        window.stop()
        calling_pct = {poll: statistics.mean(window.pct[e.pid] for pair in group for e in pair)
                       for poll, group in pairs.items()}
        calling_mem = statistics.mean(memory_mb(e.pid)[0] for e in everyone)
        others = max(others, window.others_pct)
    finally:
        stop_all(everyone)
    return {"idle": idle_pct, "idle_rss": idle_mem, "calling": calling_pct, "calling_up": up,
            "calling_rss": calling_mem, "bare": bare_pct, "bare_legs": bare_legs, "bare_rss": bare_mem,
            "others": others}


# --- 2. sustained legs ----------------------------------------------------------------------------


@dataclass
class Level:
    engines: int
    media: Media
    engines_pct: float
    machine_pct: float
    others_pct: float
    rss_mb: float
    pss_mb: float
    again: bool = False  # the second window of a level whose first failed

    @property
    def legs(self) -> int:
        return self.media.legs

    @property
    def per_leg_pct(self) -> float:
        return self.engines_pct / max(self.legs, 1)


def ramp(ports: Ports) -> list[Level]:
    """Adds engine pairs level by level (their calls go on) and measures each level's window.

    The first level that fails is measured once more with the same calls before the ramp stops:
    the machine is shared, and one burst of someone else's work should not end it (one repeat per
    ramp keeps the run bounded)."""
    levels: list[Level] = []
    pairs: list[Pair] = []
    # Calls last until the engines are stopped: long enough for every level and its repeat.
    duration = len(LEVELS) * (2 * LEVEL_S + 60) + 60
    try:
        for target in LEVELS:
            pairs += start_pairs(target // 2 - len(pairs), ports, duration)
            engines = [engine for pair in pairs for engine in pair]
            wait_until(lambda: legs_up(engines) == 4 * len(engines), 20)
            time.sleep(2)
            levels.append(measure_level(engines))
            if not levels[-1].media.holds and not any(level.again for level in levels):
                levels.append(measure_level(engines, again=True))
            if not levels[-1].media.holds:
                break
    finally:
        stop_all([engine for pair in pairs for engine in pair])
    return levels


def measure_level(engines: list[Engine], again: bool = False) -> Level:
    window = Window([e.pid for e in engines]).start()
    began = time.time()
    time.sleep(LEVEL_S)
    ended = time.time()
    window.stop()
    memory = [memory_mb(e.pid) for e in engines]
    time.sleep(1.2)  # the samples of the window's last second
    return Level(engines=len(engines), media=media_figures(engines, math.ceil(began), math.floor(ended)),
                 engines_pct=window.total_pct, machine_pct=window.machine_pct, others_pct=window.others_pct,
                 rss_mb=statistics.mean(m[0] for m in memory), pss_mb=statistics.mean(m[1] for m in memory),
                 again=again)


# SIPp's PCMU stream: 20 ms packets of a 1004 Hz tone, played from a pcap (raw socket: root).
def write_pcmu_pcap(path: Path, seconds: int = 10) -> None:
    def ulaw(sample: int) -> int:
        sign = 0x80 if sample < 0 else 0
        magnitude = min(abs(sample), 32635) + 0x84
        exponent = max(magnitude.bit_length() - 8, 0)
        return ~(sign | (exponent << 4) | ((magnitude >> (exponent + 3)) & 0x0F)) & 0xFF

    tone = bytes(ulaw(int(8000 * math.sin(2 * math.pi * 1004 * n / 8000))) for n in range(8000))
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))  # Ethernet
    for k in range(seconds * 50):
        payload = tone[(k * 160) % 8000:][:160].ljust(160, b"\xff")
        rtp = struct.pack("!BBHII", 0x80, 0, k & 0xFFFF, k * 160, 0x5EED) + payload
        udp = struct.pack("!HHHH", 6000, 6000, 8 + len(rtp), 0) + rtp
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), k & 0xFFFF, 0, 64, 17, 0,
                         bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1])) + udp
        frame = b"\x00" * 12 + b"\x08\x00" + ip
        out += struct.pack("<IIII", k // 50, (k % 50) * 20000, len(frame), len(frame)) + frame
    path.write_bytes(out)


SIPP_RTP_UAC = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="UAC with PCMU pcap">
  <send retrans="500"><![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]T[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=sipp 1 1 IN IP4 [local_ip]
      s=-
      c=IN IP4 [media_ip]
      t=0 0
      m=audio [auto_media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200"/>
  <send><![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]T[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Length: 0
  ]]></send>
{plays}
  <send retrans="500"><![CDATA[
      BYE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]T[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Contact: sip:sipp@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Length: 0
  ]]></send>
  <recv response="200"/>
</scenario>
"""
SIPP_PLAY = """  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>
  <pause milliseconds="10000"/>"""

SIPP_REGISTER = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="REGISTER with digest">
  <send retrans="500"><![CDATA[
      REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:u[call_number]@[remote_ip]>;tag=[pid]T[call_number]
      To: <sip:u[call_number]@[remote_ip]>
      Call-ID: [call_id]
      CSeq: 1 REGISTER
      Contact: <sip:u[call_number]@[local_ip]:[local_port]>
      Expires: 300
      Max-Forwards: 70
      Content-Length: 0
  ]]></send>
  <recv response="401" auth="true"/>
  <send retrans="500"><![CDATA[
      REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:u[call_number]@[remote_ip]>;tag=[pid]T[call_number]
      To: <sip:u[call_number]@[remote_ip]>
      Call-ID: [call_id]
      CSeq: 2 REGISTER
      Contact: <sip:u[call_number]@[local_ip]:[local_port]>
      [authentication username=sipp password={password}]
      Expires: 300
      Max-Forwards: 70
      Content-Length: 0
  ]]></send>
  <recv response="200"/>
</scenario>
"""


class Sipp:
    """One SIPp process on loopback; -trace_stat writes its counters every second."""

    def __init__(self, tmp: Path, ports: Ports, scenario: list[str], *args: str) -> None:
        self.port = ports.sip()
        self.media_port = ports.media()
        self.stats = tmp / f"sipp-{self.port}.csv"
        self.out = (tmp / f"sipp-{self.port}.out").open("w+")
        self.cpu_s: float | None = None  # the process's whole CPU time, once reaped
        self.proc = subprocess.Popen([SIPP, *scenario, "-i", SIP_IP, "-p", str(self.port), "-mi", SIP_IP,
                                      "-mp", str(self.media_port), "-nostdin", "-timeout", "300",
                                      "-trace_stat", "-stf", str(self.stats), "-fd", "100ms", *args],
                                     cwd=tmp, stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True)

    def listening(self) -> Sipp:
        if not wait_until(lambda: udp_bound(self.port) or self.exited(), 5) or self.exited():
            raise RuntimeError(f"sipp did not start: {self.output()[-500:]}")
        return self

    def wait(self, timeout: float) -> int:
        """Waits for the exit and keeps the process's CPU time (its rusage: /proc is gone by then)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self.cpu_s = usage.ru_utime + usage.ru_stime
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                return self.proc.returncode
            time.sleep(0.01)
        raise subprocess.TimeoutExpired(SIPP, timeout)

    def exited(self) -> bool:
        """Whether SIPp has exited, without reaping it (wait() reaps it and keeps its CPU time)."""
        if self.proc.returncode is not None:
            return True
        return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

    def stop(self) -> None:
        if self.proc.returncode is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.wait(5)

    def run_out(self, total: int, timeout: float) -> float:
        """Waits until SIPp has finished `total` calls, or made no progress for 2 s (calls waiting
        out a retransmission timeout), then stops it; returns when its last call succeeded, in
        seconds after its start (from -trace_stat every 100 ms)."""
        deadline = time.monotonic() + timeout
        progress, since = -1, time.monotonic()
        while not self.exited() and time.monotonic() < deadline:
            finished = self.stat("SuccessfulCall(C)") + self.stat("FailedCall(C)")
            if finished >= total:
                break
            if finished != progress:
                progress, since = finished, time.monotonic()
            elif time.monotonic() - since > 2.0:
                break
            time.sleep(0.05)
        time.sleep(0.2)  # the last statistics line
        self.stop()
        return self.last_success_s()

    def last_success_s(self) -> float:
        rows = self._rows()
        if not rows:
            return 0.0
        final = rows[-1]["SuccessfulCall(C)"]
        first = next(row for row in rows if row["SuccessfulCall(C)"] == final)
        return float(first["CurrentTime"].split("\t")[-1]) - float(first["StartTime"].split("\t")[-1])

    def _rows(self) -> list[dict[str, str]]:
        try:
            lines = self.stats.read_text().splitlines()
        except OSError:
            return []
        header = lines[0].split(";") if lines else []
        return [dict(zip(header, line.split(";"))) for line in lines[1:] if line.count(";") >= len(header) - 2]

    def output(self) -> str:
        self.out.flush()
        self.out.seek(0)
        return self.out.read()

    def stat(self, column: str) -> int:
        """The newest value of a -trace_stat column, e.g. CurrentCall, SuccessfulCall(C); 0 before any."""
        rows = self._rows()
        return int(float(rows[-1][column])) if rows and rows[-1].get(column) else 0


@dataclass
class SippMedia:
    calls: int
    calls_up: int
    uac_pct: float
    uas_pct: float
    others_pct: float
    machine_pct: float
    udp_per_s: float
    udp_unbound_per_s: float
    rss_mb: float

    @property
    def per_leg_pct(self) -> float:
        return (self.uac_pct + self.uas_pct) / max(2 * self.calls, 1)


def sipp_media(tmp: Path, ports: Ports, calls: int) -> SippMedia:
    """SIPp UAC (PCMU pcap, 50 packets/s) → SIPp UAS -rtp_echo: `calls` calls, 2 legs each."""
    pcap = tmp / "pcmu-20ms.pcap"
    write_pcmu_pcap(pcap)
    plays = "\n".join(SIPP_PLAY.format(pcap=pcap) for _ in range(math.ceil((LEVEL_S + 15) / 10)))
    scenario = tmp / "uac_pcmu.xml"
    scenario.write_text(SIPP_RTP_UAC.replace("{plays}", plays))
    uas = Sipp(tmp, ports, ["-sn", "uas"], "-rtp_echo").listening()
    uac = Sipp(tmp, ports, ["-sf", str(scenario), f"{SIP_IP}:{uas.port}"], "-s", "echo", "-r", "50", "-l", str(calls),
               "-m", str(calls))
    try:
        wait_until(lambda: uac.stat("CurrentCall") >= calls, calls / 50 + 10)
        time.sleep(2)
        window = Window([uac.proc.pid, uas.proc.pid]).start()
        time.sleep(LEVEL_S)
        up = uac.stat("CurrentCall")
        window.stop()
        rss = memory_mb(uac.proc.pid)[0] + memory_mb(uas.proc.pid)[0]
    finally:
        uac.stop()
        uas.stop()
    return SippMedia(calls=calls, calls_up=up, uac_pct=window.pct[uac.proc.pid], uas_pct=window.pct[uas.proc.pid],
                     others_pct=window.others_pct, machine_pct=window.machine_pct, udp_per_s=window.udp_per_s,
                     udp_unbound_per_s=window.udp_unbound_per_s, rss_mb=rss)


# --- 3. registrations ---------------------------------------------------------------------------

# UDP workers of the benchmark's Kamailio (the test's configuration has 1): a storm of hundreds of
# REGISTERs at once overflowed one worker's socket buffer, and each dropped REGISTER waited out
# SIP's T1 (500 ms) before its retransmission, whichever tool sent it.
KAMAILIO_CHILDREN = 4

# Kamailio stamps each REGISTER it receives and each one it accepts: the same clock for both tools.
_STAMP_IN = 'if (is_method("REGISTER")) {{\n        xlog("L_ERR", "register-in $TV(Sn) $ci\\n");'
_STAMP_OK = 'save("location");\n        xlog("L_ERR", "registered $TV(Sn) $ci\\n");'


@contextmanager
def kamailio(tmp: Path, ports: Ports) -> Iterator[Kamailio]:
    """Kamailio on loopback with the registrar test's configuration (digest auth, usrloc in
    memory, one UDP worker), plus a log line with a timestamp per REGISTER in and accepted."""
    from tests.worker.kamailio import CONFIG, KAMAILIO, MODULES, PASSWORD

    config = CONFIG.replace('loadmodule "auth.so"', 'loadmodule "auth.so"\nloadmodule "xlog.so"')
    config = config.replace('if (is_method("REGISTER")) {{', _STAMP_IN).replace('save("location");', _STAMP_OK)
    port = ports.sip()
    path = tmp / "kamailio.cfg"
    path.write_text(config.format(port=port, modules=MODULES, password=PASSWORD, children=KAMAILIO_CHILDREN,
                                  slow_register="", passwords=""))
    log = tmp / "kamailio.log"
    proc = subprocess.Popen([KAMAILIO, "-f", str(path), "-DD", "-E", "-P", str(tmp / "kamailio.pid")],
                            stdout=subprocess.DEVNULL, stderr=log.open("wb"), start_new_session=True)
    try:
        if not wait_until(lambda: udp_bound(port) or proc.poll() is not None, 10) or proc.poll() is not None:
            raise RuntimeError("kamailio did not start: " + log.read_text(errors="replace")[-1000:])
        time.sleep(0.5)
        yield Kamailio(port, proc.pid, PASSWORD, log)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


@dataclass
class Kamailio:
    port: int
    pgid: int
    password: str
    log: Path

    def mark(self) -> int:
        return self.log.stat().st_size

    def stamps(self, since: int) -> tuple[list[float], dict[str, float]]:
        """Times REGISTERs were received, and the first acceptance of each Call-ID, since a mark
        (a retransmitted REGISTER is processed again: Kamailio answers it statelessly)."""
        with self.log.open("rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        received: list[float] = []
        accepted: dict[str, float] = {}
        for line in text.splitlines():
            parts = line.rsplit(" ", 3)
            if len(parts) == 4 and parts[1] == "register-in":
                received.append(float(parts[2]))
            elif len(parts) == 4 and parts[1] == "registered":
                accepted.setdefault(parts[3], float(parts[2]))
        return received, accepted


@dataclass
class Rate:
    done: int
    attempted: int
    seconds: float
    latency_ms: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # endpoint errors, or why the tool did not finish
    retransmitted: int | None = None  # REGISTERs the registrar received beyond two per registration
    udp_dropped: int = 0  # datagrams the kernel dropped on full socket buffers in the window (machine-wide)
    own_pct: float | None = 0.0  # CPU of the measured tool's processes, in % of a core
    peer_pct: float = 0.0  # CPU of the registrar or UAS in the same window
    others_pct: float = 0.0

    @property
    def per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def latency(self) -> str:
        if not self.latency_ms:
            return "-"
        values = sorted(self.latency_ms)
        return f"{values[len(values) // 2]}/{values[int(0.95 * (len(values) - 1))]}"


def registrar_span(registrar: Kamailio, mark: int) -> tuple[int, float, int]:
    """REGISTERs accepted (one per Call-ID), the seconds from the first received to the last
    accepted, and the REGISTERs received beyond two per registration (retransmissions)."""
    received, accepted = registrar.stamps(mark)
    if not received or not accepted:
        return 0, 0.0, 0
    return len(accepted), max(accepted.values()) - min(received), max(len(received) - 2 * len(accepted), 0)


def engine_registrations(ports: Ports, registrar: Kamailio) -> Rate:
    """A storm: REGISTER_ENGINES engines × 8 phones, all registering at the same start_at."""
    count = 8 * REGISTER_ENGINES
    spec = tests_pb2.TestSpec(name="registrations")
    phones = spec.groups.add(name="phones", count=count, role=common_pb2.ENDPOINT_ROLE_REGISTRAR_ONLY,
                             credential_ref="lab")
    phones.target.registrar = f"{SIP_IP}:{registrar.port}"
    phones.target.aor = f"sip:reg{{n}}@{SIP_IP}"
    engines = spawn(REGISTER_ENGINES)
    try:
        start_at = time.time() + 2.0
        for i, engine in enumerate(engines):
            engine.start_run(spec, [("phones", 8 * i, 8)], ports.rtp(), start_at, {"lab": registrar.password})
        time.sleep(max(start_at - time.time() - 0.5, 0))
        mark = registrar.mark()
        peer = group_pids(registrar.pgid)
        window = Window([e.pid for e in engines] + peer).start()

        def settled() -> bool:
            registered = sum(len({r.endpoint for r in e.rows if r.registered}) for e in engines)
            return registered + sum(len(e.errors) for e in engines) >= count

        wait_until(settled, 30)
        window.stop()
        done, seconds, extra = registrar_span(registrar, mark)
        latencies = [r.register_ms for e in engines for r in e.rows if r.register_ms]
        errors = [error for e in engines for error in e.errors]
    finally:
        stop_all(engines)
    # No CPU figure for the engines: the window holds seconds of 8-phone engines idling for one burst.
    return Rate(done=done, attempted=count, seconds=seconds, latency_ms=latencies, own_pct=None, errors=errors,
                retransmitted=extra,
                peer_pct=sum(window.pct[p] for p in peer), others_pct=window.others_pct,
                udp_dropped=window.udp_dropped)


def sipp_registrations(tmp: Path, ports: Ports, registrar: Kamailio, total: int) -> Rate:
    """SIPp's REGISTER (401 challenge, then with digest), `total` of them, at the engines' storm
    concurrency (-l), as fast as it goes (-r 20000)."""
    scenario = tmp / "register.xml"
    scenario.write_text(SIPP_REGISTER.format(password=registrar.password))
    mark = registrar.mark()
    peer = group_pids(registrar.pgid)
    window = Window(peer).start()
    sipp = Sipp(tmp, ports, ["-sf", str(scenario), f"{SIP_IP}:{registrar.port}"], "-r", "20000",
                "-l", str(8 * REGISTER_ENGINES), "-m", str(total))
    try:
        sipp.run_out(total, 120)
    finally:
        sipp.stop()
    window.stop()
    done, seconds, extra = registrar_span(registrar, mark)
    failed = sipp.stat("FailedCall(C)")
    return Rate(done=done, attempted=total, seconds=seconds, own_pct=100 * (sipp.cpu_s or 0) / max(seconds, 0.01),
                peer_pct=window.total_pct, others_pct=window.others_pct, retransmitted=extra,
                udp_dropped=window.udp_dropped,
                errors=[f"{failed} REGISTER scenarios failed (retransmission timeouts)"] if failed else [])


# --- 4. call setups --------------------------------------------------------------------------------


def engine_setups(ports: Ports, uas: Sipp) -> Rate:
    """SETUP_ENGINES engines × 4 callers, each SETUP_REPETITIONS calls of 0 s, back to back."""
    count = 4 * SETUP_ENGINES
    spec = tests_pb2.TestSpec(name="setups")
    callers = spec.groups.add(name="callers", count=count, role=common_pb2.ENDPOINT_ROLE_CALLER, codecs=["PCMU"])
    callers.target.call_uri = f"sip:service@{SIP_IP}:{uas.port}"
    callers.scenario.repetitions = SETUP_REPETITIONS
    engines = spawn(SETUP_ENGINES)
    try:
        start_at = time.time() + 2.0
        for i, engine in enumerate(engines):
            engine.start_run(spec, [("callers", 4 * i, 4)], ports.rtp(), start_at)
        time.sleep(max(start_at - time.time() - 0.2, 0))
        window = Window([e.pid for e in engines] + [uas.proc.pid]).start()
        wait_until(lambda: all(e.done_at for e in engines), 30 + SETUP_REPETITIONS * 4)
        window.stop()
        finished = [e.done_at for e in engines if e.done_at]
        seconds = max(finished) - start_at if len(finished) == len(engines) else 0.0
    finally:
        stop_all(engines)
    rows = [r for e in engines for r in e.rows]
    errors = [error for e in engines for error in e.errors]
    if not seconds:
        errors.append(f"{len(engines) - len(finished)} engines not done; exit codes "
                      f"{[e.proc.returncode for e in engines]}")
    return Rate(done=sum(r.connected for r in rows), attempted=count * SETUP_REPETITIONS, seconds=seconds,
                latency_ms=[r.setup_ms for r in rows if r.setup_ms], errors=errors,
                own_pct=sum(window.pct[e.pid] for e in engines), peer_pct=window.pct[uas.proc.pid],
                others_pct=window.others_pct, udp_dropped=window.udp_dropped)


def sipp_setups(tmp: Path, ports: Ports, uas: Sipp) -> Rate:
    """SIPp's built-in UAC (INVITE, ACK, BYE at once: -d 0) at the engines' concurrency."""
    window = Window([uas.proc.pid]).start()
    uac = Sipp(tmp, ports, ["-sn", "uac", f"{SIP_IP}:{uas.port}"], "-d", "0", "-r", "20000",
               "-l", str(4 * SETUP_ENGINES), "-m", str(SIPP_CALLS))
    try:
        seconds = uac.run_out(SIPP_CALLS, 120)
    finally:
        uac.stop()
    window.stop()
    failed, unfinished = uac.stat("FailedCall(C)"), SIPP_CALLS - uac.stat("SuccessfulCall(C)") - uac.stat("FailedCall(C)")
    errors = [f"{failed} calls failed, {unfinished} unfinished (lost UDP, waiting out retransmissions) when "
              "stopped"] if failed or unfinished else []
    return Rate(done=uac.stat("SuccessfulCall(C)"), attempted=SIPP_CALLS, seconds=seconds,
                own_pct=100 * (uac.cpu_s or 0) / window.seconds, peer_pct=window.total_pct,
                others_pct=window.others_pct, errors=errors, udp_dropped=window.udp_dropped)


# --- the run -----------------------------------------------------------------------------------------


def run() -> None:
    from tests.worker.kamailio import KAMAILIO

    began = time.monotonic()
    missing = [name for name, path in (("sipp", SIPP), ("kamailio", KAMAILIO)) if not os.access(path, os.X_OK)]
    if missing:
        print(f"skipped: {', '.join(missing)} not installed (make system-deps)")
        return
    mode = "quick (CALLMETER_BENCH_QUICK=1)" if QUICK else "full"
    print(f"{mode}: {CORES} cores ({_cpu_model()}), shared; load average at start {_loadavg()}; "
          "loopback; 'others' = CPU the rest of the machine used in the same window (% of one core)")
    ports = Ports()
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as name:
        tmp = Path(name)
        cuts = overhead(ports)
        _print_cuts(cuts)
        levels = ramp(ports)
        _print_levels(levels)
        held = [level for level in levels if level.media.holds]
        peer = sipp_media(tmp, ports, (held[-1] if held else levels[0]).legs // 2)
        _print_peer(levels, peer, cuts)
        with kamailio(tmp, ports) as registrar:
            # Two storms each: one REGISTER dropped on Kamailio's full socket buffer costs its storm
            # SIP's T1 (500 ms) before the retransmission, whichever tool sent it.
            ours = [engine_registrations(ports, registrar) for _ in range(2)]
            storms = [sipp_registrations(tmp, ports, registrar, 8 * REGISTER_ENGINES) for _ in range(2)]
            theirs = sipp_registrations(tmp, ports, registrar, SIPP_REGISTERS)
        print(f"REGISTER with digest (401, then 200) to Kamailio ({KAMAILIO_CHILDREN} UDP workers) on loopback; rate = "
              "accepted ÷ (last 200 − first REGISTER in), Kamailio's timestamps; latency p50/p95 from the engines' "
              "onRegStarted → onRegState; two storms each")
        for rate in ours:
            _print_rates("engines", f"{REGISTER_ENGINES} × 8 phones at once", rate)
        for rate in storms:
            _print_rates("SIPp", f"the same storm: -l {8 * REGISTER_ENGINES} -m {8 * REGISTER_ENGINES}", rate)
        _print_rates("SIPp", f"-l {8 * REGISTER_ENGINES} -m {SIPP_REGISTERS}", theirs)
        uas = Sipp(tmp, ports, ["-sn", "uas"]).listening()
        try:
            ours = engine_setups(ports, uas)
            theirs = sipp_setups(tmp, ports, uas)
        finally:
            uas.stop()
        print("call setups to SIPp's UAS (INVITE/180/200/ACK, then BYE at once); engines: connected ÷ (last done − "
              "start), setup p50/p95 INVITE → CONFIRMED; SIPp: successful ÷ time to its last success (calls waiting out "
              "a lost message's retransmission timer are stopped after 2 s without progress)")
        _print_rates("engines", f"{SETUP_ENGINES} × 4 callers × {SETUP_REPETITIONS} calls", ours)
        _print_rates("SIPp uac", f"-l {4 * SETUP_ENGINES} -m {SIPP_CALLS}", theirs)
    print(f"engine benchmark took {time.monotonic() - began:.0f} s")


def _cpu_model() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def _loadavg() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def _print_cuts(cuts: dict) -> None:
    idle, calling, bare = cuts["idle"], cuts["calling"], cuts["bare"]
    polls = "/".join(str(p) for p in CUT_POLLS)
    print(f"per-engine overhead, % of a core over {CUT_WINDOW_S} s (others {cuts['others']:.0f} %):")
    print(f"  idle engine, poll {polls} ms:           " + " / ".join(f"{idle[p]:.2f}" for p in CUT_POLLS)
          + f"   RSS {cuts['idle_rss']:.0f} MB")
    print(f"  engine with 4 PCMU legs, poll {polls} ms: " + " / ".join(f"{calling[p]:.2f}" for p in CUT_POLLS)
          + f"   RSS {cuts['calling_rss']:.0f} MB" + ("" if cuts["calling_up"] else "  (not every leg was up)"))
    print("  bare pjsua2 process (no Python scenario loop), 4 PCMU legs (2 calls to itself), poll 20 ms:")
    for label, pct in bare.items():
        legs = cuts["bare_legs"][label]
        print(f"    {label:<44}{pct:6.2f}" + ("" if legs in (4, 0) else f"  (only {legs} legs up)"))


def _print_levels(levels: list[Level]) -> None:
    print(f"sustained PCMU legs, {LEVEL_S} s per level; holds if every leg is up, loss < {LOSS_MAX_PCT:g} % and "
          f"jitter p95 < {JITTER_P95_MAX_MS:g} ms (engine pairs: 4 callers → 4 callees)")
    print("  engines  legs  up   loss %  jitter p95/max ms  pkt/leg/s  engines CPU %  CPU/leg %  RSS/PSS MB  "
          "machine %  others %  holds")
    for level in levels:
        m = level.media
        print(f"  {level.engines:>5}{'*' if level.again else ' ':1}  {level.legs:>4}  {m.legs_full:>4}  {m.loss_pct:6.3f}  "
              f"{m.jitter_p95_ms:8.1f}/{m.jitter_max_ms:<8.1f}  {m.packets_per_leg_s:9.1f}  {level.engines_pct:13.1f}  "
              f"{level.per_leg_pct:9.2f}  {level.rss_mb:4.0f}/{level.pss_mb:<4.0f}  {level.machine_pct:9.0f}  "
              f"{level.others_pct:8.0f}  {'yes' if m.holds else 'no: ' + m.why_not()}", flush=True)
    if any(level.again for level in levels):
        print("  * the same level measured again, after its first window failed")


def _print_peer(levels: list[Level], peer: SippMedia, cuts: dict) -> None:
    print(f"  peer SIPp: UAC (20 ms PCMU pcap) → UAS -rtp_echo, {peer.calls} calls = {2 * peer.calls} legs "
          f"({peer.calls_up} up at the end): UAC {peer.uac_pct:.1f} % + UAS {peer.uas_pct:.1f} % of a core → "
          f"{peer.per_leg_pct:.3f} % per leg; RSS {peer.rss_mb:.0f} MB both; UDP datagrams/s: "
          f"{peer.udp_per_s:.0f} into sockets (UAS, expected {50 * peer.calls}), {peer.udp_unbound_per_s:.0f} "
          f"echoed to the UAC's unbound media ports; machine {peer.machine_pct:.0f} %, others "
          f"{peer.others_pct:.0f} %")
    held = [level for level in levels if level.media.holds]
    if held:
        best = held[-1]
        print(f"  → {best.legs} legs sustained ({best.engines} engines, {best.legs / CORES:.0f} per core of this "
              f"{CORES}-core machine while others used {best.others_pct:.0f} % of a core); "
              f"{100 / best.per_leg_pct:.0f} legs per core of engine CPU ({best.per_leg_pct:.2f} % a leg, "
              f"SIPp {peer.per_leg_pct:.3f} %: {best.per_leg_pct / max(peer.per_leg_pct, 1e-9):.0f}× less)")
    idle20, calling20 = cuts["idle"][20], cuts["calling"][20]
    print(f"  per leg at poll 20 ms: {calling20 / 4:.2f} % of a core, of which {idle20 / 4:.2f} % is the idle "
          f"engine's own loop (4 legs share one process: the compiled PJSUA_MAX_CALLS)")
    if not levels[-1].media.holds:
        level = levels[-1]
        print(f"  limit: at {level.engines} engines ({level.legs} legs) {level.media.why_not()}, with the machine "
              f"{level.machine_pct:.0f} % busy of {100 * CORES} % (engines {level.engines_pct:.0f} %, others "
              f"{level.others_pct:.0f} %)")
    else:
        print(f"  limit: not reached; the ramp stops at {LEVELS[-1]} engines")


def _print_rates(who: str, how: str, rate: Rate) -> None:
    print(f"  {who:<9}{how:<34}{rate.done:>6} of {rate.attempted:<6} in {rate.seconds:6.2f} s = {rate.per_s:7.0f}/s  "
          f"latency p50/p95 ms {rate.latency():<9} CPU: own "
          f"{'-' if rate.own_pct is None else f'{rate.own_pct:.0f} %'}, peer {rate.peer_pct:.0f} %, "
          f"others {rate.others_pct:.0f} %"
          + ("" if rate.retransmitted is None else f"; {rate.retransmitted} retransmissions seen")
          + f"; {rate.udp_dropped} UDP dropped on full buffers")
    if rate.errors:
        print(f"    {len(rate.errors)} errors, e.g. {rate.errors[0]}")
