"""Measures the compiled limits of the installed pjsua2 wheel; docs/engine.md quotes its output.

    python -m services.worker.engine.probe accounts   # accounts one process can hold
    python -m services.worker.engine.probe calls      # concurrent call legs per UaConfig.maxCalls
    python -m services.worker.engine.probe cpu        # CPU and memory of real engines, idle and calling
    python -m services.worker.engine.probe pool N     # N engine pairs with 4 calls each, at once

Every trial runs in a child process, because exceeding a limit may abort the process
(PJ_ASSERT_RETURN is compiled with assertions on in this wheel). Loopback only, bounded in time.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import textwrap
import time

from callmeter.v1 import common_pb2, engine_pb2, tests_pb2
from services.worker.engine.client import EngineClient

# Child: add accounts one by one, printing the count after each success.
_ACCOUNTS = """
import pjsua2 as pj
ep = pj.Endpoint(); ep.libCreate()
cfg = pj.EpConfig(); cfg.uaConfig.threadCnt = 0; cfg.uaConfig.mainThreadOnly = True
cfg.logConfig.level = 0; cfg.logConfig.consoleLevel = 0
ep.libInit(cfg); ep.audDevManager().setNullDev()
tc = pj.TransportConfig(); tc.boundAddress = "127.0.0.1"
tid = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tc); ep.libStart()
accounts = []
for i in range({limit}):
    ac = pj.AccountConfig(); ac.idUri = f"sip:{{i}}@127.0.0.1"; ac.sipConfig.transportId = tid
    acc = pj.Account(); acc.create(ac); accounts.append(acc)
    print("probe accounts", len(accounts), flush=True)
"""

# Child: with UaConfig.maxCalls = {max_calls}, call one account on this process {attempts} times
# (each call is two legs here: outgoing and incoming) and count the legs that get confirmed.
_CALLS = """
import time, pjsua2 as pj
ep = pj.Endpoint(); ep.libCreate()
cfg = pj.EpConfig(); cfg.uaConfig.threadCnt = 0; cfg.uaConfig.mainThreadOnly = True
cfg.uaConfig.maxCalls = {max_calls}
cfg.logConfig.level = 0; cfg.logConfig.consoleLevel = 0
cfg.medConfig.clockRate = 8000; cfg.medConfig.ecTailLen = 0; cfg.medConfig.noVad = True
try:
    ep.libInit(cfg)
except pj.Error as exc:
    print("probe libInit failed", exc.reason, flush=True); raise SystemExit(0)
ep.audDevManager().setNullDev()
tc = pj.TransportConfig(); tc.boundAddress = "127.0.0.1"
tid = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tc); ep.libStart()
port = ep.transportGetInfo(tid).localName.rsplit(":", 1)[1]
confirmed = set(); calls = []
class Call(pj.Call):
    def onCallState(self, prm):
        if self.getInfo().state == pj.PJSIP_INV_STATE_CONFIRMED: confirmed.add(self.getId())
class Acc(pj.Account):
    def onIncomingCall(self, prm):
        call = Call(self, prm.callId); calls.append(call)
        op = pj.CallOpParam(); op.statusCode = 200; call.answer(op)
ac = pj.AccountConfig(); ac.idUri = "sip:probe@127.0.0.1"; ac.sipConfig.transportId = tid
acc = Acc(); acc.create(ac)
refused, error = 0, ""
for _ in range({attempts}):
    call = Call(acc)
    try:
        call.makeCall(f"sip:probe@127.0.0.1:{{port}}", pj.CallOpParam(True)); calls.append(call)
    except pj.Error as exc:
        refused += 1; error = exc.reason
    end = time.time() + 0.5
    while time.time() < end: ep.libHandleEvents(10)
print("probe calls confirmed_legs", len(confirmed), "makeCall_refused", refused, error, flush=True)
ep.hangupAllCalls()
end = time.time() + 1
while time.time() < end: ep.libHandleEvents(10)
del call; calls.clear()  # Call objects must go before the library (FACTS.md)
acc.shutdown(); ep.libDestroy()
"""


def _child(code: str, timeout: float = 30) -> tuple[int, list[str]]:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("probe ")]
    tail = [line for line in proc.stderr.splitlines() if "Assertion" in line][-1:]
    return proc.returncode, lines + tail


def probe_accounts(limit: int = 12) -> None:
    code, lines = _child(_ACCOUNTS.format(limit=limit))
    held = [line for line in lines if line.startswith("probe accounts")]
    print(f"accounts held: {held[-1].split()[-1] if held else 0}; child exit code {code}")
    for line in lines[len(held):]:
        print(f"  {line}")


def probe_calls(values: tuple[int, ...] = (4, 5, 8, 32)) -> None:
    for max_calls in values:
        code, lines = _child(_CALLS.format(max_calls=max_calls, attempts=min(max_calls, 6)))
        print(f"UaConfig.maxCalls={max_calls}: exit code {code}; " + "; ".join(lines))


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def _memory(pid: int) -> str:
    """Resident, proportional (shared pages split among their users) and private memory."""
    kb = {}
    for line in open(f"/proc/{pid}/smaps_rollup"):
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            kb[parts[0].rstrip(":")] = int(parts[1])
    private = kb["Private_Clean"] + kb["Private_Dirty"]
    return f"RSS {kb['Rss'] / 1024:.1f} / PSS {kb['Pss'] / 1024:.1f} / USS {private / 1024:.1f} MB"


def _cpu_pct(pids: list[int], seconds: float) -> list[float]:
    before = [_cpu_seconds(pid) for pid in pids]
    start = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - start
    return [100 * (_cpu_seconds(pid) - b) / elapsed for pid, b in zip(pids, before)]


def _engine(poll_ms: int) -> EngineClient:
    engine = EngineClient(env={"SIP_IP": "127.0.0.1", "CALLMETER_ENGINE_POLL_MS": str(poll_ms)},
                          stderr=subprocess.DEVNULL)
    if engine.wait_for("ready", 20) is None:
        raise RuntimeError("engine did not get ready")
    return engine


def probe_idle(poll_values: tuple[int, ...], seconds: float) -> None:
    for poll_ms in poll_values:
        engine = _engine(poll_ms)
        time.sleep(2)
        (pct,) = _cpu_pct([engine.proc.pid], seconds)
        print(f"idle engine, poll {poll_ms} ms: {pct:.2f} % of a core; {_memory(engine.proc.pid)}")
        engine.stop()


def probe_calls_cpu(legs: tuple[int, ...], seconds: float, poll_ms: int, pairs: int = 1) -> None:
    """k callers in one engine call k callees in another (PCMU, tone): k legs per engine.

    With pairs > 1, that many engine pairs run at once: the pool's behaviour, not one engine's.
    """
    for k in legs:
        engines: list[EngineClient] = []
        start_at = time.time() + 1 + 0.3 * pairs
        for pair in range(pairs):
            spec = tests_pb2.TestSpec(name="cpu")
            callees = spec.groups.add(name="callees", count=k, role=common_pb2.ENDPOINT_ROLE_CALLEE, codecs=["PCMU"])
            callees.target.aor = f"sip:{{n}}@127.0.0.1:{_free_udp_port()}"
            callers = spec.groups.add(name="callers", count=k, role=common_pb2.ENDPOINT_ROLE_CALLER, codecs=["PCMU"])
            callers.target.call_uri = "group:callees"
            callers.scenario.call_duration.seconds = int(seconds) + 6
            rtp_base = random.randrange(20000, 40000, 200)
            for group, offset in (("callees", 0), ("callers", 100)):
                engine = _engine(poll_ms)
                command = engine_pb2.EngineCommand()
                command.start.run_id = f"cpu-{pair}"
                command.start.spec.CopyFrom(spec)
                command.start.slices.add(group=group, first_index=0, count=k)
                command.start.rtp_port_min, command.start.rtp_port_max = rtp_base + offset, rtp_base + offset + 99
                command.start.start_at = start_at
                engine.send(command)
                engines.append(engine)
        time.sleep(max(start_at - time.time(), 0) + 3)  # let the calls settle
        pcts = _cpu_pct([e.proc.pid for e in engines], seconds)
        memory = _memory(engines[-1].proc.pid)
        for engine in engines:
            engine.wait_for("done", seconds + 20)
            engine.stop()
        metrics = [e.sample.metrics for engine in engines for e in engine.received if e.HasField("sample")]
        connected = sum(m.calls_connected for m in metrics) // 2
        received, lost = sum(m.rx_packets for m in metrics), sum(m.rx_lost for m in metrics)
        mos = [m.mos / 100 for m in metrics if m.mos]
        print(f"{pairs} engine pair(s), {k} PCMU leg(s) per engine, poll {poll_ms} ms: {connected} calls connected; "
              f"per engine {sum(pcts) / len(pcts):.2f} % of a core (max {max(pcts):.2f}), all {sum(pcts):.1f} %; "
              f"loss {100 * lost / max(received + lost, 1):.3f} %, MOS min {min(mos, default=0):.2f}; {memory}")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str]) -> int:
    what = argv[0] if argv else "all"
    if what in ("accounts", "all"):
        probe_accounts()
    if what in ("calls", "all"):
        probe_calls()
    if what in ("cpu", "all"):
        probe_idle(poll_values=(10, 20, 50), seconds=15)
        for poll_ms in (20, 50):
            probe_calls_cpu(legs=(1, 2, 4), seconds=15, poll_ms=poll_ms)
    if what == "pool":
        probe_calls_cpu(legs=(4,), seconds=15, poll_ms=20, pairs=int(argv[1]) if len(argv) > 1 else 4)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
