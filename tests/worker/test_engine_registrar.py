"""Engines against a real registrar and proxy (Kamailio on loopback): digest REGISTER, calls
routed by the registrar, unregister at the end, a wrong password reported with its code."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from callmeter.common import outcomes
from callmeter.v1 import common_pb2, engine_pb2, tests_pb2
from tests.worker.conftest import final_outcomes, samples_of, total
from tests.worker.kamailio import PASSWORD, kamailio


@pytest.fixture
def registrar(tmp_path: Path) -> Iterator[int]:
    with kamailio(tmp_path) as port:
        yield port


@pytest.mark.parametrize("transport", [common_pb2.TRANSPORT_UDP, common_pb2.TRANSPORT_TCP], ids=["udp", "tcp"])
def test_register_call_through_the_registrar_and_unregister(engines, registrar: int, transport: int) -> None:
    spec = tests_pb2.TestSpec(name="via-registrar")
    callees = spec.groups.add(name="callees", count=1, role=common_pb2.ENDPOINT_ROLE_CALLEE, codecs=["PCMA"],
                              credential_ref="lab", transport=transport)
    callers = spec.groups.add(name="callers", count=1, role=common_pb2.ENDPOINT_ROLE_CALLER, codecs=["PCMA"],
                              credential_ref="lab", transport=transport)
    wrong = spec.groups.add(name="wrong", count=1, role=common_pb2.ENDPOINT_ROLE_REGISTRAR_ONLY,
                            credential_ref="wrong", transport=transport)
    for group, start in ((callees, 200), (callers, 100), (wrong, 300)):
        group.target.registrar = f"127.0.0.1:{registrar}"
        group.target.number_start = start
        group.scenario.unregister_at_end = True
    callers.target.proxy = f"127.0.0.1:{registrar}"
    callers.target.call_uri = "group:callees"
    callers.scenario.call_duration.seconds = 2

    callee_engine, caller_engine = engines("callee-engine"), engines("caller-engine")
    # Callees register a second before callers call: a call that reaches the registrar first gets 404.
    start_at = time.time() + 1.0
    rtp_base = random.randrange(20000, 40000, 2)
    for engine, slices, base, begin in ((callee_engine, [("callees", 1)], rtp_base, start_at),
                                        (caller_engine, [("callers", 1), ("wrong", 1)], rtp_base + 100, start_at + 1)):
        engine.wait_for("ready", timeout=20)
        command = engine_pb2.EngineCommand()
        command.start.run_id = "run-registrar"
        command.start.spec.CopyFrom(spec)
        for group, count in slices:
            command.start.slices.add(group=group, first_index=0, count=count)
        command.start.credentials["lab"].password = PASSWORD
        command.start.credentials["wrong"].password = "not the password"
        command.start.rtp_port_min, command.start.rtp_port_max = base, base + 99
        command.start.start_at = begin
        engine.send(command)

    error = caller_engine.wait_for("endpoint_error", timeout=15).endpoint_error
    assert (error.group, error.sip_code) == ("wrong", 401) and "401" in error.reason
    caller_engine.wait_for("done", timeout=20)
    callee_engine.wait_for("done", timeout=10)
    assert caller_engine.stop() == 0 and callee_engine.stop() == 0

    for engine, group in ((callee_engine, "callees"), (caller_engine, "callers")):
        samples = [s for s in samples_of(engine) if s.group == group]
        assert total(samples, "register_attempts") == 2  # register, then unregister at the end
        assert total(samples, "register_failures") == 0
        assert any(s.metrics.registered for s in samples) and not samples[-1].metrics.registered
        assert total(samples, "calls_connected") == 1
        assert total(samples, "rx_packets") >= 50
        assert all(350 <= s.metrics.mos <= 450 for s in samples if s.metrics.mos)
    wrong_samples = [s for s in samples_of(caller_engine) if s.group == "wrong"]
    assert total(wrong_samples, "register_failures") == 1
    assert {s.metrics.register_last_code for s in wrong_samples} == {401}
    # One outcome each, the registrar's code with the failure.
    assert final_outcomes(samples_of(caller_engine) + samples_of(callee_engine)) == {
        ("callers", 0): (outcomes.SUCCESS, 0), ("callees", 0): (outcomes.SUCCESS, 0),
        ("wrong", 0): (outcomes.REGISTRATION_FAILED, 401)}
