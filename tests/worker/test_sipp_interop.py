"""Interop with a SIP stack that is not ours: SIPp (Debian's sip-tester) on loopback.

Our engine calls SIPp's built-in UAS, which echoes RTP back (-rtp_echo); SIPp's UAC calls our
callee engine and plays a PCMA recording into the call. Bounded: one short call each.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from callmeter.v1 import common_pb2, engine_pb2, tests_pb2
from tests.worker.conftest import free_udp_port, samples_of, total
from tests.worker.sipp import Sipp, require_sipp

CALL_SECONDS = 3


def start_command(spec: tests_pb2.TestSpec, group: str, count: int, start_at: float) -> engine_pb2.EngineCommand:
    command = engine_pb2.EngineCommand()
    command.start.run_id = "run-interop"
    command.start.spec.CopyFrom(spec)
    command.start.slices.add(group=group, first_index=0, count=count)
    base = random.randrange(20000, 40000, 2)
    command.start.rtp_port_min, command.start.rtp_port_max = base, base + 99
    command.start.start_at = start_at
    return command


def test_engine_calls_sipp_uas_and_gets_its_rtp_echoed(engines, tmp_path: Path) -> None:
    require_sipp()
    uas = Sipp("uas", tmp_path, "-rtp_echo")
    try:
        uas.wait_listening()
        spec = tests_pb2.TestSpec(name="to-sipp")
        callers = spec.groups.add(name="callers", count=2, role=common_pb2.ENDPOINT_ROLE_CALLER, codecs=["PCMU"])
        callers.target.call_uri = f"sip:service@{uas.uri_host}"
        callers.scenario.call_duration.seconds = CALL_SECONDS
        engine = engines("caller-engine")
        engine.run_to_end(start_command(spec, "callers", 2, time.time() + 0.3), timeout=CALL_SECONDS + 15)
    finally:
        uas.stop()

    assert not [e for e in engine.received if e.HasField("endpoint_error")]
    samples = samples_of(engine)
    for endpoint in (0, 1):
        mine = [s for s in samples if s.endpoint == endpoint]
        assert total(mine, "calls_connected") == 1
        assert {s.metrics.call_last_code for s in mine if s.metrics.call_active} == {200}
        sent, echoed = total(mine, "tx_packets"), total(mine, "rx_packets")
        assert sent >= 50 * (CALL_SECONDS - 1)
        assert echoed >= 0.9 * sent, (sent, echoed)  # SIPp sent our own packets back
        assert total(mine, "rx_lost") <= echoed * 0.01
        assert any(s.metrics.mos for s in mine)
    assert "Assertion" not in engine.log()


def test_sipp_uac_calls_our_callee_and_plays_pcma(engines, tmp_path: Path) -> None:
    require_sipp(pcap=True)
    port = free_udp_port()
    spec = tests_pb2.TestSpec(name="from-sipp")
    callees = spec.groups.add(name="callees", count=1, role=common_pb2.ENDPOINT_ROLE_CALLEE, codecs=["PCMA"])
    callees.target.aor = f"sip:{{n}}@127.0.0.1:{port}"
    callees.target.number_start = 100
    engine = engines("callee-engine")
    engine.wait_for("ready", timeout=20)
    engine.send(start_command(spec, "callees", 1, time.time()))
    time.sleep(0.5)  # the engine binds its SIP port when it starts the run

    uac = Sipp("uac_pcma.xml", tmp_path, "-s", "100", "-m", "1", remote=f"127.0.0.1:{port}")
    code = uac.wait(timeout=CALL_SECONDS + 15)
    assert code == 0, uac.log()  # SIPp's exit code 0: every call it placed succeeded
    assert uac.counter("Successful call") == 1
    time.sleep(1.2)  # the sample covering the end of the call
    assert engine.stop() == 0, engine.log()

    assert not [e for e in engine.received if e.HasField("endpoint_error")]
    samples = samples_of(engine)
    assert total(samples, "calls_attempted") == 1
    assert total(samples, "calls_connected") == 1
    assert not samples[-1].metrics.call_active, "SIPp's BYE ended the call"
    # The recording has 30 ms packets: ~33 a second.
    assert total(samples, "rx_packets") >= 30 * (CALL_SECONDS - 1)
    assert total(samples, "rx_bytes") == 240 * total(samples, "rx_packets")
    assert total(samples, "tx_packets") >= 30 * (CALL_SECONDS - 1)
    assert any(s.metrics.mos for s in samples)
