"""Real engine processes on loopback: a self-call between two engines, and refusals.

Each engine is `python -m services.worker.engine`, driven through its stdin/stdout channel
exactly as the supervisor drives it. Bounded: a few seconds of calls, every wait has a timeout.
"""

from __future__ import annotations

import os
import random
import signal
import time

from callmeter.v1 import common_pb2, engine_pb2, tests_pb2
from tests.worker.conftest import free_udp_port, samples_of, total

CALL_SECONDS = 5


def start_command(spec: tests_pb2.TestSpec, group: str, count: int, rtp_base: int, start_at: float) -> engine_pb2.EngineCommand:
    command = engine_pb2.EngineCommand()
    start = command.start
    start.run_id = "run-selfcall"
    start.spec.CopyFrom(spec)
    start.slices.add(group=group, first_index=0, count=count)
    start.rtp_port_min, start.rtp_port_max = rtp_base, rtp_base + 99
    start.start_at = start_at
    return command


def self_call_spec(call_seconds: int) -> tests_pb2.TestSpec:
    callee_port = free_udp_port()
    spec = tests_pb2.TestSpec(name="self-call")
    callees = spec.groups.add(name="callees", count=2, role=common_pb2.ENDPOINT_ROLE_CALLEE, codecs=["PCMU"])
    callees.target.aor = f"sip:{{n}}@127.0.0.1:{callee_port}"
    callees.target.number_start = 100
    callees.media.tone.frequency_hz = 440
    callers = spec.groups.add(name="callers", count=2, role=common_pb2.ENDPOINT_ROLE_CALLER, codecs=["PCMU"])
    callers.target.call_uri = "group:callees"
    callers.scenario.call_duration.seconds = call_seconds
    return spec


def test_self_call_between_two_engines_carries_rtp_and_scores_mos(engines) -> None:
    spec = self_call_spec(CALL_SECONDS)
    callee_engine, caller_engine = engines("callee-engine"), engines("caller-engine")
    for engine in (callee_engine, caller_engine):
        ready = engine.next_event(timeout=20)
        assert ready is not None and ready.WhichOneof("event") == "ready", "the first frame must be ready"
        assert ready.ready.pid == engine.proc.pid
        assert ready.ready.max_calls == 4 and ready.ready.max_accounts == 8
        assert {"PCMU", "PCMA", "G722"} <= set(ready.ready.codecs)

    rtp_base = random.randrange(20000, 40000, 2)
    start_at = time.time() + 1.0
    callee_engine.send(start_command(spec, "callees", 2, rtp_base, start_at))
    caller_engine.send(start_command(spec, "callers", 2, rtp_base + 100, start_at))

    caller_done = caller_engine.wait_for("done", timeout=CALL_SECONDS + 20)
    callee_done = callee_engine.wait_for("done", timeout=10)
    assert caller_done.done.run_id == callee_done.done.run_id == "run-selfcall"
    for engine in (callee_engine, caller_engine):
        assert engine.stop() == 0, engine.log()
        kinds = [e.WhichOneof("event") for e in engine.received]
        assert kinds[0] == "ready" and "endpoint_error" not in kinds, [e for e in engine.received if e.HasField("endpoint_error")]
        assert kinds.index("done") > kinds.index("sample"), "samples come before done"
        assert "Assertion" not in engine.log()

    for engine, group in ((caller_engine, "callers"), (callee_engine, "callees")):
        samples = samples_of(engine)
        assert {s.group for s in samples} == {group}
        assert {s.endpoint for s in samples} == {0, 1}
        seconds = sorted({s.second for s in samples})
        assert seconds == list(range(seconds[0], seconds[-1] + 1)), "one sample per endpoint-second, no gaps"
        assert CALL_SECONDS <= len(seconds) <= CALL_SECONDS + 4
        assert total(samples, "calls_attempted") == 2
        assert total(samples, "calls_connected") == 2
        assert total(samples, "calls_failed") == 0
        assert all(s.metrics.call_last_code == 200 for s in samples if s.metrics.call_active)
        assert [s.metrics.setup_time_ms > 0 for s in samples if s.metrics.setup_time_ms] == [True, True]
        for endpoint in (0, 1):
            mine = [s for s in samples if s.endpoint == endpoint]
            received, sent = total(mine, "rx_packets"), total(mine, "tx_packets")
            # PCMU at 20 ms: 50 packets a second each way.
            assert received >= 50 * (CALL_SECONDS - 1), (group, endpoint, received)
            assert sent >= 50 * (CALL_SECONDS - 1), (group, endpoint, sent)
            assert total(mine, "rx_bytes") == 160 * received
            assert total(mine, "rx_lost") <= received * 0.01
        scored = [s.metrics for s in samples if s.metrics.mos]
        assert len(scored) >= 2 * (CALL_SECONDS - 1)
        assert all(350 <= m.mos <= 450 for m in scored), [m.mos for m in scored]
        assert all(8000 <= m.r_factor <= 9400 for m in scored)
        assert any(m.rx_jitter_us for m in scored)
        assert any(m.jb_delay_ms for m in scored)
    assert any(s.metrics.rtt_us for s in samples_of(callee_engine) + samples_of(caller_engine))



def test_an_engine_starved_of_cpu_still_gives_every_endpoint_a_sample_for_every_second(engines) -> None:
    """The caller engine is stopped (SIGSTOP: no CPU at all) for 3 s mid-call. Seen before: the
    first sample after such a stall swallowed the missed seconds, so endpoint-seconds went missing."""
    spec = self_call_spec(call_seconds=8)
    callee_engine, caller_engine = engines("callee-engine"), engines("caller-engine")
    for engine in (callee_engine, caller_engine):
        engine.wait_for("ready", timeout=20)
    rtp_base = random.randrange(20000, 40000, 2)
    start_at = time.time() + 1.0
    callee_engine.send(start_command(spec, "callees", 2, rtp_base, start_at))
    caller_engine.send(start_command(spec, "callers", 2, rtp_base + 100, start_at))
    deadline = time.monotonic() + 30
    while not any(s.metrics.call_active for s in samples_of(caller_engine)):
        assert time.monotonic() < deadline, caller_engine.log()
        caller_engine.wait_for("sample", timeout=5)
    os.kill(caller_engine.proc.pid, signal.SIGSTOP)
    stalled_at = time.time()
    time.sleep(3)
    os.kill(caller_engine.proc.pid, signal.SIGCONT)
    caller_engine.wait_for("done", timeout=30)
    callee_engine.wait_for("done", timeout=15)
    for engine in (caller_engine, callee_engine):
        assert engine.stop() == 0, engine.log()
        for endpoint in (0, 1):
            seconds = [s.second for s in samples_of(engine) if s.endpoint == endpoint]
            assert seconds == list(range(seconds[0], seconds[-1] + 1)), (endpoint, seconds)
            assert seconds[0] < stalled_at - 1 and seconds[-1] > stalled_at + 3, "the stall lies inside the samples"
    callers = samples_of(caller_engine)
    assert total(callers, "calls_connected") == 2 and total(callers, "calls_failed") == 0
    # The engine says it was late (callmeter/common/generator_load.py), on its first phone only.
    lag_ms = {s.second: s.metrics.engine_lag_ms / 10 for s in callers if s.endpoint == 0}
    assert max(lag_ms.values()) >= 2000, lag_ms
    assert sorted(lag_ms.values())[len(lag_ms) // 2] < 200, f"an ordinary second is not late: {lag_ms}"
    assert all(s.metrics.engine_lag_ms == s.metrics.engine_cpu_pct == 0 for s in callers if s.endpoint == 1)
    assert any(s.metrics.engine_cpu_pct for s in callers if s.endpoint == 0)


def test_timed_actions_wake_the_loop_on_time_whatever_the_poll(engines) -> None:
    """With a 1 s longest wait, the answer delay and the call's end still come within ms of their
    time: the loop sleeps until the next due action, not for a fixed poll."""
    callee_port = free_udp_port()
    spec = tests_pb2.TestSpec(name="timing")
    callees = spec.groups.add(name="callees", count=1, role=common_pb2.ENDPOINT_ROLE_CALLEE, codecs=["PCMU"])
    callees.target.aor = f"sip:{{n}}@127.0.0.1:{callee_port}"
    callees.scenario.answer_delay.FromMilliseconds(300)
    callers = spec.groups.add(name="callers", count=1, role=common_pb2.ENDPOINT_ROLE_CALLER, codecs=["PCMU"])
    callers.target.call_uri = "group:callees"
    callers.scenario.call_duration.FromMilliseconds(1500)

    slow = {"CALLMETER_ENGINE_POLL_MS": "1000"}
    callee_engine, caller_engine = engines("callee-engine", slow), engines("caller-engine", slow)
    for engine in (callee_engine, caller_engine):
        engine.wait_for("ready", timeout=20)
    rtp_base = random.randrange(20000, 40000, 2)
    start_at = time.time() + 1.5
    callee_engine.send(start_command(spec, "callees", 1, rtp_base, start_at))
    caller_engine.send(start_command(spec, "callers", 1, rtp_base + 100, start_at))
    caller_engine.wait_for("done", timeout=15)
    took = time.time() - start_at
    callee_engine.wait_for("done", timeout=10)
    assert caller_engine.stop() == 0 and callee_engine.stop() == 0

    setup_ms = [s.metrics.setup_time_ms for s in samples_of(caller_engine) if s.metrics.setup_time_ms]
    assert len(setup_ms) == 1 and 295 <= setup_ms[0] <= 400, setup_ms  # a 1 s poll would make it ~1000
    # Start, answer after 0.3 s, hang up 1.5 s later, BYE answered: each late by a poll would add seconds.
    assert 1.8 <= took <= 2.4, took


def test_unknown_codec_is_an_endpoint_error_naming_it(engines) -> None:
    spec = tests_pb2.TestSpec(name="bad-codec")
    callers = spec.groups.add(name="callers", count=2, role=common_pb2.ENDPOINT_ROLE_CALLER, codecs=["PCMU", "OPUS"])
    callers.target.call_uri = "sip:{n}@127.0.0.1:9"
    engine = engines("codec-engine")
    engine.wait_for("ready", timeout=20)
    engine.send(start_command(spec, "callers", 2, 0, time.time()))
    errors = [engine.wait_for("endpoint_error", timeout=10).endpoint_error for _ in range(2)]
    assert sorted(e.endpoint for e in errors) == [0, 1]
    for error in errors:
        assert error.group == "callers"
        assert "OPUS" in error.reason and "unknown codec" in error.reason
    engine.wait_for("done", timeout=10)  # nothing left to run
    assert engine.stop(close_only=True) == 0, engine.log()  # end of stdin stops it too
    assert not samples_of(engine)


def test_endpoints_beyond_the_compiled_limits_are_refused_not_fatal(engines) -> None:
    spec = tests_pb2.TestSpec(name="limits")
    phones = spec.groups.add(name="phones", count=9, role=common_pb2.ENDPOINT_ROLE_REGISTRAR_ONLY)
    phones.target.registrar = "127.0.0.1:9"
    callees = spec.groups.add(name="callees", count=2, role=common_pb2.ENDPOINT_ROLE_CALLEE)
    callees.target.aor = f"sip:{{n}}@127.0.0.1:{free_udp_port()}"
    engine = engines("limits-engine")
    engine.wait_for("ready", timeout=20)
    command = start_command(spec, "phones", 9, 0, time.time() + 3600)  # accounts made, nothing sent yet
    command.start.slices.add(group="callees", first_index=0, count=2)
    engine.send(command)
    errors = [engine.wait_for("endpoint_error", timeout=10).endpoint_error for _ in range(3)]
    assert [(e.group, e.endpoint) for e in errors] == [("phones", 8), ("callees", 0), ("callees", 1)]
    assert all("engine limit: at most 8 endpoints" in e.reason for e in errors)
    time.sleep(0.5)
    assert engine.proc.poll() is None, engine.log()
    assert engine.stop() == 0, engine.log()
