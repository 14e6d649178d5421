"""How an engine reads a TestSpec: addresses, codecs, limits and schedules (no pjsua2 involved)."""

from __future__ import annotations

import pytest

from callmeter.v1 import common_pb2, engine_pb2, tests_pb2
from services.worker.engine.channel import ChannelError, FrameDecoder, encode
from services.worker.engine.plan import Limits, plan_start, resolve_codecs, uri_host_port, with_transport

CODEC_IDS = ["speex/16000/1", "speex/8000/1", "speex/32000/1", "iLBC/8000/1", "GSM/8000/1", "PCMU/8000/1",
             "PCMA/8000/1", "G722/16000/1", "L16/44100/1"]
LIMITS = Limits(max_accounts=8, max_calls=4)


def start_of(spec: tests_pb2.TestSpec, *slices: tuple[str, int, int]) -> engine_pb2.EngineStart:
    start = engine_pb2.EngineStart(run_id="r", spec=spec)
    for group, first, count in slices:
        start.slices.add(group=group, first_index=first, count=count)
    return start


def caller_and_callee_spec() -> tests_pb2.TestSpec:
    spec = tests_pb2.TestSpec(name="t")
    callees = spec.groups.add(name="callees", count=3, role=common_pb2.ENDPOINT_ROLE_CALLEE)
    callees.target.aor = "sip:{n}@127.0.0.1:5070"
    callees.target.number_start = 100
    callers = spec.groups.add(name="callers", count=4, role=common_pb2.ENDPOINT_ROLE_CALLER)
    callers.target.call_uri = "group:callees"
    callers.scenario.repetitions = 2
    callers.scenario.call_duration.seconds = 10
    callers.scenario.ring_timeout.seconds = 5
    callers.scenario.ramp_rate_cps = 2
    return spec


def test_group_targets_resolve_to_the_callee_phones_addresses() -> None:
    plan = plan_start(start_of(caller_and_callee_spec(), ("callers", 0, 4)), CODEC_IDS, LIMITS, "127.0.0.1")
    assert not plan.errors
    assert [p.call_uri for p in plan.phones] == [f"sip:{n}@127.0.0.1:5070" for n in (100, 101, 102, 100)]
    assert [p.start_offset_s for p in plan.phones] == [0, 0.5, 1.0, 1.5]
    assert all(p.local_port == 0 and p.aor.startswith("sip:") for p in plan.phones)


def test_callees_listen_on_their_aor_port_and_know_what_calls_to_expect() -> None:
    plan = plan_start(start_of(caller_and_callee_spec(), ("callees", 0, 3)), CODEC_IDS, LIMITS, "127.0.0.1")
    assert [p.aor for p in plan.phones] == ["sip:100@127.0.0.1:5070", "sip:101@127.0.0.1:5070", "sip:102@127.0.0.1:5070"]
    assert {p.local_port for p in plan.phones} == {5070}
    # Callers 0 and 3 call phone 0, two repetitions each.
    assert [p.expected_calls for p in plan.phones] == [4, 2, 2]
    # The last caller starts at 1.5 s; two calls of at most 5 s ringing + 10 s talking, plus slack.
    assert plan.phones[0].calls_due_s == pytest.approx(1.5 + 2 * 15 + 5)


def test_unknown_codec_is_refused_by_name_and_known_ones_keep_their_order() -> None:
    spec = caller_and_callee_spec()
    spec.groups[1].codecs[:] = ["G722", "pcmu", "OPUS", "AMR"]
    plan = plan_start(start_of(spec, ("callers", 0, 2)), CODEC_IDS, LIMITS, "127.0.0.1")
    assert plan.phones == []
    assert [(e.group, e.endpoint) for e in plan.errors] == [("callers", 0), ("callers", 1)]
    assert "'OPUS', 'AMR'" in plan.errors[0].reason and "PCMU" in plan.errors[0].reason
    assert resolve_codecs(["G722", "pcmu", "speex/16000"], CODEC_IDS) == (["G722/16000/1", "PCMU/8000/1", "speex/16000/1"], [])
    assert resolve_codecs(["speex"], CODEC_IDS)[0] == ["speex/16000/1", "speex/8000/1", "speex/32000/1"]


def test_groups_sharing_an_engine_must_agree_on_codec_order() -> None:
    spec = caller_and_callee_spec()
    spec.groups[0].codecs[:] = ["PCMU"]
    spec.groups[1].codecs[:] = ["PCMA"]
    plan = plan_start(start_of(spec, ("callees", 0, 1), ("callers", 0, 1)), CODEC_IDS, LIMITS, "127.0.0.1")
    assert plan.codec_order == ["PCMU/8000/1"]
    assert [p.group for p in plan.phones] == ["callees"]
    assert "codec priority is per engine process" in plan.errors[0].reason


def test_compiled_limits_refuse_the_excess_endpoints() -> None:
    spec = caller_and_callee_spec()
    spec.groups[1].count = 6
    plan = plan_start(start_of(spec, ("callers", 0, 6)), CODEC_IDS, LIMITS, "127.0.0.1")
    assert len(plan.phones) == 4
    assert [e.endpoint for e in plan.errors] == [4, 5]
    assert "at most 4 concurrent calls" in plan.errors[0].reason


def test_problems_are_named() -> None:
    spec = caller_and_callee_spec()
    spec.groups[1].credential_ref = "missing"
    spec.groups[0].srtp = common_pb2.SRTP_MODE_MANDATORY
    spec.groups[0].srtp_keying = common_pb2.SRTP_KEYING_DTLS
    plan = plan_start(start_of(spec, ("callers", 0, 1), ("callees", 0, 1), ("nobody", 0, 1)), CODEC_IDS, LIMITS, "x")
    reasons = [e.reason for e in plan.errors]
    assert "credential 'missing'" in reasons[0]
    assert "SRTP_KEYING_DTLS" in reasons[1]
    assert "no group named 'nobody'" in reasons[2]


def test_registering_groups_get_registrar_proxy_and_credentials() -> None:
    spec = tests_pb2.TestSpec(name="t")
    group = spec.groups.add(name="phones", count=2, role=common_pb2.ENDPOINT_ROLE_REGISTRAR_ONLY,
                            transport=common_pb2.TRANSPORT_TCP, credential_ref="lab")
    group.target.registrar = "pbx.example.com:5080"
    group.target.proxy = "sbc.example.com"
    group.target.auth_user = "u{n}"
    group.target.number_start = 7
    group.scenario.register_expiry.seconds = 120
    start = start_of(spec, ("phones", 0, 2))
    start.credentials["lab"].password = "pw"
    plan = plan_start(start, CODEC_IDS, LIMITS, "127.0.0.1")
    first = plan.phones[0]
    assert first.registrar == "sip:pbx.example.com:5080;transport=tcp"
    assert first.proxy == "sip:sbc.example.com;lr;transport=tcp"
    assert first.aor == "sip:7@pbx.example.com;transport=tcp"
    assert (first.auth.username, first.auth.password, first.auth.realm) == ("u7", "pw", "*")
    assert first.refresh_before_s == 12  # refreshed at 90 % of the expiry


def test_uri_helpers() -> None:
    assert uri_host_port("sip:1@127.0.0.1:5070;transport=tcp") == ("127.0.0.1", 5070)
    assert uri_host_port("<sips:alice@[::1]:5061>") == ("::1", 5061)
    assert uri_host_port("sip:pbx.example.com") == ("pbx.example.com", 0)
    assert with_transport("sip:a@b?X=1", common_pb2.TRANSPORT_TLS) == "sip:a@b;transport=tls?X=1"
    assert with_transport("sip:a@b", common_pb2.TRANSPORT_UDP) == "sip:a@b"


def test_frames_split_across_reads() -> None:
    event = engine_pb2.EngineEvent(done=engine_pb2.EngineDone(run_id="r"))
    data = encode(event) * 3
    decoder = FrameDecoder()
    bodies = [body for i in range(len(data)) for body in decoder.feed(data[i:i + 1])]
    assert bodies == [event.SerializeToString()] * 3 and decoder.pending == 0
    with pytest.raises(ChannelError):
        FrameDecoder().feed(b"\xff\xff\xff\xff")
