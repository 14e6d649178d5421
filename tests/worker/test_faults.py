"""Faults with real peers on loopback: each gives a per-endpoint error with the SIP code or the
reason, and the rest of the run goes on.

Peers are SIPp scenarios (tests/worker/sipp/) answering 403, 404, 486, 488, 503 or ringing forever,
SIPp's UAS echoing RTP, a loopback port nobody listens on, an RTP range too small for the
calls, and an engine killed with SIGKILL under the supervisor's RunExecution. A wrong password
(401 from Kamailio's digest) is covered in test_engine_registrar.py. Bounded: calls of a few
seconds, ring timeouts of 2 s, every wait with a timeout.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

import pytest

from callmeter.common import outcomes
from callmeter.v1 import common_pb2, engine_pb2, results_pb2, tests_pb2, workers_pb2
from services.worker.execution import RunExecution
from services.worker.packing import pack, rtp_ranges
from tests.worker.conftest import final_outcomes, free_udp_port, samples_of, total
from tests.worker.sipp import Sipp, require_sipp

REJECTIONS = {403: "Forbidden", 404: "Not Found", 486: "Busy Here", 503: "Service Unavailable"}


def add_caller(spec: tests_pb2.TestSpec, name: str, uri: str, count: int = 1, duration_s: float = 2,
               ring_timeout_s: float = 0, repetitions: int = 1) -> tests_pb2.EndpointGroup:
    group = spec.groups.add(name=name, count=count, role=common_pb2.ENDPOINT_ROLE_CALLER, codecs=["PCMU"])
    group.target.call_uri = uri
    group.scenario.call_duration.FromMilliseconds(int(duration_s * 1000))
    if ring_timeout_s:
        group.scenario.ring_timeout.FromMilliseconds(int(ring_timeout_s * 1000))
    group.scenario.repetitions = repetitions
    group.scenario.pause_between_calls.FromMilliseconds(200)
    return group


def start(spec: tests_pb2.TestSpec, rtp: tuple[int, int] | None = None) -> engine_pb2.EngineCommand:
    """Every group of the spec in one engine, starting in 0.3 s."""
    command = engine_pb2.EngineCommand()
    command.start.run_id = "run-faults"
    command.start.spec.CopyFrom(spec)
    for group in spec.groups:
        command.start.slices.add(group=group.name, first_index=0, count=group.count)
    base = random.randrange(20000, 40000, 2)
    command.start.rtp_port_min, command.start.rtp_port_max = rtp or (base, base + 99)
    command.start.start_at = time.time() + 0.3
    return command


def errors_of(engine) -> list:
    return [e.endpoint_error for e in engine.received if e.WhichOneof("event") == "endpoint_error"]


def test_rejected_calls_report_their_code_and_each_phone_calls_again(engines, tmp_path: Path) -> None:
    require_sipp()
    peers = {code: Sipp(f"uas_{code}.xml", tmp_path) for code in REJECTIONS}
    try:
        spec = tests_pb2.TestSpec(name="rejections")
        for code, peer in peers.items():
            peer.wait_listening()
            add_caller(spec, f"to{code}", f"sip:service@{peer.uri_host}", repetitions=2)
        engine = engines("rejections")
        engine.run_to_end(start(spec), timeout=15)
    finally:
        for peer in peers.values():
            peer.stop()

    errors = errors_of(engine)
    samples = samples_of(engine)
    for code, reason in REJECTIONS.items():
        mine = [e for e in errors if e.group == f"to{code}"]
        # A failed call does not end the phone's scenario: it places its second call too.
        assert len(mine) == 2, errors
        assert {(e.endpoint, e.sip_code) for e in mine} == {(0, code)}
        assert all(f"failed: {code} {reason}" in e.reason for e in mine), mine
        metrics = [s for s in samples if s.group == f"to{code}"]
        assert total(metrics, "calls_attempted") == 2
        assert total(metrics, "calls_failed") == 2
        assert total(metrics, "calls_connected") == 0
        assert {s.metrics.call_last_code for s in metrics if s.metrics.calls_failed} == {code}
    # One outcome per endpoint, with the code received.
    assert final_outcomes(samples) == {(f"to{code}", 0): (outcomes.CALL_FAILED, code) for code in REJECTIONS}
    assert "Assertion" not in engine.log()


def test_no_answer_and_unreachable_target_while_another_call_goes_on(engines, tmp_path: Path) -> None:
    require_sipp()
    ringing, echo = Sipp("uas_ring.xml", tmp_path), Sipp("uas", tmp_path, "-rtp_echo")
    refusing = Sipp("uas_488.xml", tmp_path)
    try:
        ringing.wait_listening()
        echo.wait_listening()
        refusing.wait_listening()
        closed = free_udp_port()  # nothing listens there
        spec = tests_pb2.TestSpec(name="no-answer")
        add_caller(spec, "noanswer", f"sip:service@{ringing.uri_host}", ring_timeout_s=2)
        add_caller(spec, "unreachable", f"sip:service@127.0.0.1:{closed}", ring_timeout_s=2)
        add_caller(spec, "talker", f"sip:service@{echo.uri_host}", duration_s=4)
        add_caller(spec, "refused", f"sip:service@{refusing.uri_host}")
        engine = engines("no-answer")
        engine.run_to_end(start(spec), timeout=15)
    finally:
        ringing.stop()
        echo.stop()
        refusing.stop()

    errors = {e.group: e for e in errors_of(engine)}
    assert set(errors) == {"noanswer", "unreachable", "refused"}, errors
    no_answer, unreachable = errors["noanswer"], errors["unreachable"]
    # Cancelled by us: the 487 that ends the INVITE answers our CANCEL, it is not the target's verdict.
    assert no_answer.sip_code == 0
    assert "not answered within the ring timeout (2 s; last response 180)" in no_answer.reason
    assert "no response at all within the ring timeout (2 s)" in unreachable.reason
    assert "unreachable" in unreachable.reason

    samples = samples_of(engine)
    talker = [s for s in samples if s.group == "talker"]
    assert total(talker, "calls_connected") == 1 and total(talker, "calls_failed") == 0
    assert total(talker, "rx_packets") >= 150  # 4 s of RTP echoed back, 50 packets a second
    for group in ("noanswer", "unreachable"):
        mine = [s for s in samples if s.group == group]
        assert total(mine, "calls_failed") == 1 and total(mine, "calls_connected") == 0
    ring = [s.metrics.ring_time_ms for s in samples if s.group == "noanswer" and s.metrics.ring_time_ms]
    assert len(ring) == 1 and 0 < ring[0] < 1000
    # Given up with no final response: a timeout, with no code invented, whatever came before.
    # A 488 is a failed negotiation.
    assert final_outcomes(samples) == {("noanswer", 0): (outcomes.TIMEOUT, 0), ("unreachable", 0): (outcomes.TIMEOUT, 0),
                                       ("talker", 0): (outcomes.SUCCESS, 0),
                                       ("refused", 0): (outcomes.NEGOTIATION_FAILED, 488)}


def test_rtp_port_range_exhausted_fails_the_call_that_finds_no_port(engines, tmp_path: Path) -> None:
    require_sipp()
    echo = Sipp("uas", tmp_path, "-rtp_echo")
    try:
        echo.wait_listening()
        spec = tests_pb2.TestSpec(name="rtp-range")
        add_caller(spec, "callers", f"sip:service@{echo.uri_host}", count=2, duration_s=2)
        base = random.randrange(20000, 40000, 2)
        engine = engines("rtp-range")
        engine.run_to_end(start(spec, rtp=(base, base + 1)), timeout=15)  # room for one RTP/RTCP pair
    finally:
        echo.stop()

    errors = errors_of(engine)
    assert len(errors) == 1, errors
    (error,) = errors
    assert error.sip_code == 0
    assert f"not placed: Address already in use (no free RTP/RTCP port pair in {base}-{base + 1})" in error.reason
    samples = samples_of(engine)
    other = [s for s in samples if s.endpoint != error.endpoint]
    assert total(other, "calls_connected") == 1
    assert total(other, "rx_packets") >= 50
    refused = [s for s in samples if s.endpoint == error.endpoint]
    assert total(refused, "calls_failed") == 1 and total(refused, "calls_connected") == 0


def test_engine_killed_mid_call_loses_its_endpoints_and_the_other_engine_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_sipp()
    monkeypatch.setenv("SIP_IP", "127.0.0.1")  # inherited by the engines RunExecution starts
    echo = Sipp("uas", tmp_path, "-rtp_echo")
    try:
        echo.wait_listening()
        samples, statuses, killed_at = asyncio.run(_kill_one_engine(echo))
    finally:
        echo.stop()

    final = statuses[-1]
    assert final.state == workers_pb2.ASSIGNMENT_STATE_DONE, final  # not FAILED: half the endpoints ran
    lost = {(e.group, e.endpoint): e.reason for e in final.errors}
    assert set(lost) == {("callers", i) for i in range(4)}, lost
    assert all(reason == "engine process killed by SIGKILL" for reason in lost.values()), lost
    assert final.endpoints_failed == 4
    # The loss was reported while the run was still going.
    assert any(s.state == workers_pb2.ASSIGNMENT_STATE_RUNNING and s.endpoints_failed == 4 for s in statuses)

    for endpoint in range(4, 8):
        mine = [s for s in samples if s.endpoint == endpoint]
        assert total(mine, "calls_connected") == 1 and total(mine, "calls_failed") == 0
        after = [s for s in mine if s.second > killed_at + 1]
        assert total(after, "rx_packets") >= 50, "its RTP kept flowing after the other engine died"
        assert not mine[-1].metrics.call_active, "the call ended by the scenario, not cut"
    victims = [s for s in samples if s.endpoint < 4]
    assert victims and max(s.second for s in victims) <= killed_at + 1, "no samples from a dead engine"


async def _kill_one_engine(echo: Sipp) -> tuple[list[results_pb2.EndpointSample], list[workers_pb2.AssignmentStatus], float]:
    spec = tests_pb2.TestSpec(name="engine-lost")
    add_caller(spec, "callers", f"sip:service@{echo.uri_host}", count=8, duration_s=5)
    assignment = workers_pb2.Assignment(run_id="run-engine-lost", spec=spec)
    assignment.slices.add(group="callers", first_index=0, count=8)
    assignment.start_at.FromNanoseconds(int((time.time() + 0.5) * 1e9))
    packed = pack(spec, list(assignment.slices), per_engine=4)
    assert [[(p.first_index, p.count) for p in slices] for slices in packed] == [[(0, 4)], [(4, 4)]]
    base = random.randrange(20000, 40000, 2)
    samples: list[results_pb2.EndpointSample] = []
    statuses: list[workers_pb2.AssignmentStatus] = []
    execution = RunExecution(assignment, packed, rtp_ranges(base, base + 399, 2), {},
                             on_sample=lambda _run, sample: samples.append(sample), on_status=statuses.append)
    run = asyncio.create_task(execution.run())
    deadline = time.monotonic() + 20
    while {s.endpoint for s in samples if s.metrics.call_active} != set(range(8)):
        assert time.monotonic() < deadline and not run.done(), "the 8 calls did not all connect"
        await asyncio.sleep(0.1)
    await asyncio.sleep(1)
    (victim,) = [engine for engine in execution.engines if engine.name.endswith("-0")]
    assert victim.process is not None
    os.kill(victim.process.pid, signal.SIGKILL)
    killed_at = time.time()
    await asyncio.wait_for(run, 20)
    return samples, statuses, killed_at


def test_back_to_back_zero_second_calls_neither_abort_the_engine_nor_fail(engines, tmp_path: Path) -> None:
    """pjsua frees a hung-up call's slot only when its BYE completes, and pjmedia's ioqueue holds a
    call's sockets 500 ms after it ends: without waiting for both, calls of 0 s in a loop got
    PJ_ETOOMANY and then aborted the engine (an ioqueue assertion) at ~60 calls/s."""
    require_sipp()
    uas = Sipp("uas", tmp_path)
    try:
        uas.wait_listening()
        spec = tests_pb2.TestSpec(name="back-to-back")
        add_caller(spec, "callers", f"sip:service@{uas.uri_host}", count=4, duration_s=0, repetitions=25)
        spec.groups[0].scenario.ClearField("pause_between_calls")
        engine = engines("back-to-back")
        engine.run_to_end(start(spec), timeout=20)
    finally:
        uas.stop()
    assert not errors_of(engine), errors_of(engine)[:3]
    samples = samples_of(engine)
    assert total(samples, "calls_attempted") == 100
    assert total(samples, "calls_connected") == 100
    assert "Assertion" not in engine.log()


def test_a_callee_whose_caller_failed_is_not_called_not_failed(engines, tmp_path: Path) -> None:
    """The caller's INVITE goes to a proxy nobody listens on: it times out at its ring timeout and
    never reaches the callee, which gives up once the callers' schedule is over."""
    spec = tests_pb2.TestSpec(name="not-called")
    callee = spec.groups.add(name="callees", count=1, role=common_pb2.ENDPOINT_ROLE_CALLEE, codecs=["PCMU"])
    callee.target.aor = f"sip:{{n}}@127.0.0.1:{free_udp_port()}"
    caller = add_caller(spec, "callers", "group:callees", duration_s=1, ring_timeout_s=1)
    caller.target.proxy = f"127.0.0.1:{free_udp_port()}"
    engine = engines("not-called")
    engine.run_to_end(start(spec), timeout=30)

    ended = final_outcomes(samples_of(engine))
    assert ended == {("callers", 0): (outcomes.TIMEOUT, 0), ("callees", 0): (outcomes.NOT_CALLED, 0)}
    counted = outcomes.tally(ended, {"callers": 1, "callees": 1}, outcomes.call_map(spec))
    assert counted["callees"] == {(outcomes.NOT_CALLED, 0): 1}  # its caller's failure is counted once, there
