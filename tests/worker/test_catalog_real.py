"""Every metric of the catalog, measured in real engine-to-engine calls on loopback.

Four engines run at once for about ten seconds:
- "callers" and "callees": the main call (the caller registers, refreshes, sends RFC 2833 DTMF,
  hangs up after 7 s and unregisters), an SRTP call put on hold and taken off it with a SIP INFO
  DTMF, a call cancelled while ringing, a call to a scripted proxy that asks for credentials and
  then answers 486, and registrations that a scripted registrar answers 302, 403, 503, 603, drops
  at the refresh, or cannot be reached (TCP refused);
- "rejecters": callees answering 302, 503 and 603, and a callee whose engine advertises another
  RTP address in SDP (SDP_IP, as behind NAT: the caller sees RTP from another source than its
  SDP, and pjmedia latches onto it), whose pjmedia drops 10 % of the RTP it receives
  (MediaConfig.rxDropPct) and whose jitter buffer starts at 200 ms and keeps at least 60 ms, for
  loss, loss bursts, concealment, jitter-buffer adaptation and the far end's loss reports;
- "rejected": their callers.

Every metric must be non-zero in some second on some endpoint, except the few listed in
LEGITIMATELY_ZERO with the reason; the counts must match what the calls did (each response,
request and digit counted once, on the right side); in-call samples must fit the control-plane
budget of 250 bytes per endpoint-second.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from callmeter.catalog import BY_NAME, METRICS
from callmeter.v1 import common_pb2, endpoint_metrics_pb2, engine_pb2, results_pb2, tests_pb2
from services.worker.engine.client import EngineClient
from tests.worker.conftest import EngineProcess, free_udp_port, samples_of, total
from tests.worker.scripted_sip import ScriptedSipServer

IMPAIRED = Path(__file__).resolve().parent / "impaired"  # its sitecustomize.py sets pjmedia's impairments
MAIN_CALL_S = 7  # long enough for the second RTCP exchange (pjmedia: every 5 s), which measures the RTT
DROP_PCT = 10
BUDGET_BYTES = 250  # per endpoint-second on the stream (DESIGN.md: < 1 Mbit/s for 500 endpoints)
# Scripted registrar users: number -> final response (see scripted_sip.py), and one it drops.
REGISTER_CODES = {902: 302, 903: 403, 904: 503, 905: 603}
LOST_USER = 901

# Metrics that may stay 0 in these calls, and why. Keep it small: every other metric must be
# measured, so a metric the sampler stops filling fails the test.
LEGITIMATELY_ZERO = {
    # Loopback neither duplicates nor delays packets, and pjmedia's loss simulation only drops:
    "rx_duplicates": "no duplicated RTP on loopback",
    "rx_seq_discarded": "pjmedia drops for a bad sequence only on duplicates or wild jumps: none on loopback",
    "rx_discarded": "no packet arrives after its turn to play or into a full jitter buffer on loopback",
    "jb_discarded_frames": "the same, counted in frames by the jitter buffer",
    # pjmedia's jitter estimate starts after 25 packets from |D|/16 in whole samples (125 µs at
    # 8 kHz): its minimum is 0 unless the network jitters, and the far end's first report comes
    # before its estimate starts. Real networks make them non-zero; loopback only sometimes.
    "rx_jitter_min_ms": "0 without network jitter",
    "tx_jitter_min_ms": "0 without network jitter",
    # A transaction times out after Timer B/F, 32 s without a response: too long for a test.
    "sip_timeouts": "needs 32 s of silence from the far end",
    # Set by the worker's supervisor, which this test does without (it drives engines itself).
    "worker_lag_ms": "no supervisor here (tests/worker/test_local.py runs one)",
}


class TunedEngine(EngineProcess):
    """An engine with extra environment (SDP_IP; PYTHONPATH for the media impairments)."""

    def __init__(self, log_path: Path, env: dict[str, str]) -> None:
        self.log_path = log_path
        EngineClient.__init__(self, env={"SIP_IP": "127.0.0.1", "PYTHONFAULTHANDLER": "1", **env},
                              stderr=log_path.open("wb"))


def closed_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when this returns: connecting is refused


# Codec priority is per engine: the two engines of the lossy call use PCMA (payload type 8, not 0).
PCMA_GROUPS = ("rejecter_", "rejected_", "lossy_")


def group(spec: tests_pb2.TestSpec, name: str, role: int, **fields: object) -> tests_pb2.EndpointGroup:
    codec = "PCMA" if name.startswith(PCMA_GROUPS) else "PCMU"
    return spec.groups.add(name=name, count=1, role=role, codecs=[codec], **fields)


def caller(spec: tests_pb2.TestSpec, name: str, callee: str, call_s: float) -> tests_pb2.EndpointGroup:
    """A caller of the callee group, or of a URI."""
    phone = group(spec, name, common_pb2.ENDPOINT_ROLE_CALLER)
    phone.target.call_uri = callee if callee.startswith("sip:") else f"group:{callee}"
    phone.scenario.call_duration.FromMilliseconds(int(call_s * 1000))
    return phone


def callee(spec: tests_pb2.TestSpec, name: str, **scenario: object) -> tests_pb2.EndpointGroup:
    phone = group(spec, name, common_pb2.ENDPOINT_ROLE_CALLEE)
    phone.target.aor = f"sip:{{n}}@127.0.0.1:{free_udp_port()}"
    for key, value in scenario.items():
        setattr(phone.scenario, key, value)
    return phone


def registering(spec: tests_pb2.TestSpec, name: str, registrar: str, number: int, **fields: object) -> tests_pb2.EndpointGroup:
    phone = group(spec, name, common_pb2.ENDPOINT_ROLE_REGISTRAR_ONLY, **fields)
    phone.target.registrar = registrar
    phone.target.number_start = number
    return phone


def the_spec(registrar_port: int) -> tests_pb2.TestSpec:
    spec = tests_pb2.TestSpec(name="catalog")
    spec.timeout.FromSeconds(MAIN_CALL_S + 2)  # ends the registrar-only phones
    registrar = f"127.0.0.1:{registrar_port}"
    # The main call: register (refreshed every 5 s, pjsip's shortest), RFC 2833 DTMF, hang up, unregister.
    callee(spec, "main_callee")
    main = caller(spec, "main_caller", "main_callee", MAIN_CALL_S)
    main.target.registrar, main.target.number_start = registrar, 900
    main.scenario.register_expiry.FromSeconds(60)
    main.scenario.reregister_interval.FromSeconds(2)
    main.scenario.unregister_at_end = True
    main.scenario.dtmf.after.FromMilliseconds(1000)
    main.scenario.dtmf.digits = "123"
    # SRTP, hold for 1 s, then DTMF by SIP INFO.
    callee(spec, "hold_callee").srtp = common_pb2.SRTP_MODE_MANDATORY
    hold = caller(spec, "hold_caller", "hold_callee", 4)
    hold.srtp = common_pb2.SRTP_MODE_MANDATORY
    hold.scenario.hold.after.FromMilliseconds(1000)
    hold.scenario.hold.duration.FromMilliseconds(1000)
    hold.scenario.dtmf.after.FromMilliseconds(2500)
    hold.scenario.dtmf.digits = "4"
    hold.scenario.dtmf.method = common_pb2.DTMF_METHOD_SIP_INFO
    # Ringing for longer than the caller waits: CANCEL, 487.
    slow = callee(spec, "slow_callee")
    slow.scenario.answer_delay.FromSeconds(3)
    caller(spec, "cancel_caller", "slow_callee", 1).scenario.ring_timeout.FromMilliseconds(1500)  # spans a second
    # A proxy that asks for credentials, then answers 486 (the scripted server).
    caller(spec, "auth_caller", f"sip:486@{registrar}", 1).credential_ref = "lab"
    # Registrations: dropped at the refresh; unreachable (TCP refused); refused with 3xx-6xx.
    registering(spec, "lost", registrar, LOST_USER).scenario.register_expiry.FromSeconds(2)
    registering(spec, "unreachable", f"127.0.0.1:{closed_tcp_port()}", 910, transport=common_pb2.TRANSPORT_TCP)
    refused = registering(spec, "refused", registrar, min(REGISTER_CODES))
    refused.count = len(REGISTER_CODES)
    # Rejections with the other classes, and the lossy call behind "NAT".
    for code in (302, 503, 603):
        callee(spec, f"rejecter_{code}", reject_code=code)
        caller(spec, f"rejected_{code}", f"rejecter_{code}", 1)
    callee(spec, "lossy_callee")
    caller(spec, "lossy_caller", "lossy_callee", MAIN_CALL_S)
    return spec


ENGINES = {  # engine -> (environment, groups)
    "callers": ({}, ["main_caller", "hold_caller", "cancel_caller", "auth_caller", "lost", "unreachable"]),
    "callees": ({}, ["main_callee", "hold_callee", "slow_callee", "refused"]),
    "rejected": ({}, ["rejected_302", "rejected_503", "rejected_603", "lossy_caller"]),
    "rejecters": ({"SDP_IP": "127.0.0.2", "PYTHONPATH": str(IMPAIRED), "CALLMETER_TEST_RX_DROP_PCT": str(DROP_PCT),
                   "CALLMETER_TEST_JB_INIT_MS": "200", "CALLMETER_TEST_JB_MIN_PRE_MS": "60"},
                  ["rejecter_302", "rejecter_503", "rejecter_603", "lossy_callee"]),
}


def start_command(spec: tests_pb2.TestSpec, groups: list[str], rtp_base: int, start_at: float) -> engine_pb2.EngineCommand:
    command = engine_pb2.EngineCommand()
    command.start.run_id = "run-catalog"
    command.start.spec.CopyFrom(spec)
    counts = {g.name: g.count for g in spec.groups}
    for name in groups:
        command.start.slices.add(group=name, first_index=0, count=counts[name])
    command.start.rtp_port_min, command.start.rtp_port_max = rtp_base, rtp_base + 99
    command.start.start_at = start_at
    command.start.credentials["lab"].password = "secret"
    return command


@pytest.fixture(scope="module")
def catalog_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list]]:
    """Runs the scenario once for the module's tests; the samples of each group."""
    logs = tmp_path_factory.mktemp("catalog")
    registrar = ScriptedSipServer(register_codes=REGISTER_CODES, lose={LOST_USER})
    engines: dict[str, TunedEngine] = {}
    try:
        spec = the_spec(registrar.port)
        engines.update({name: TunedEngine(logs / f"{name}.log", env) for name, (env, _) in ENGINES.items()})
        for engine in engines.values():
            engine.wait_for("ready", timeout=30)
        start_at = time.time() + 0.5
        rtp_base = random.randrange(20000, 40000, 100)
        for k, (name, (_, groups)) in enumerate(ENGINES.items()):
            engines[name].send(start_command(spec, groups, rtp_base + 100 * k, start_at))
        for engine in engines.values():
            engine.wait_for("done", timeout=MAIN_CALL_S + 20)
        for engine in engines.values():
            assert engine.stop() == 0, engine.log()
            assert "Assertion" not in engine.log() and "callback failed" not in engine.log(), engine.log()
        by_group: dict[str, list] = {}
        for engine in engines.values():
            for sample in samples_of(engine):
                by_group.setdefault(sample.group, []).append(sample)
        yield by_group
    finally:
        for engine in engines.values():
            engine.kill()
        registrar.close()


def test_every_metric_is_measured_in_real_calls(catalog_run: dict[str, list]) -> None:
    samples = [s for group in catalog_run.values() for s in group]
    catalog = {m.name for m in METRICS}
    assert catalog == {f.name for f in endpoint_metrics_pb2.EndpointMetrics.DESCRIPTOR.fields}
    assert len(catalog) >= 150
    assert set(LEGITIMATELY_ZERO) <= catalog and len(LEGITIMATELY_ZERO) <= 10
    seen = {name for name in catalog if any(getattr(s.metrics, name) for s in samples)}
    never = sorted(catalog - seen - set(LEGITIMATELY_ZERO))
    assert not never, f"never measured in any second of any endpoint: {never}"


def test_in_call_samples_fit_the_stream_budget(catalog_run: dict[str, list]) -> None:
    """Bytes one endpoint-second takes in a MetricBatch on the stream: the sample (group name,
    endpoint, second, metrics) and its field header."""
    in_call = [s for group in catalog_run.values() for s in group if s.metrics.call_active]
    sizes = sorted(len(results_pb2.MetricBatch(samples=[s]).SerializeToString()) for s in in_call)
    assert len(sizes) >= 4 * MAIN_CALL_S
    assert sizes[-1] <= BUDGET_BYTES, f"in-call endpoint-seconds take {sizes[0]}-{sizes[-1]} bytes"


def totals(catalog_run: dict[str, list], group: str) -> dict[str, int]:
    return {name: total(catalog_run[group], name) for name in BY_NAME}


def values(catalog_run: dict[str, list], group: str, name: str) -> set[int]:
    return {getattr(s.metrics, name) for s in catalog_run[group]} - {0}


def test_values_match_what_the_calls_did(catalog_run: dict[str, list]) -> None:
    main_caller, main_callee = totals(catalog_run, "main_caller"), totals(catalog_run, "main_callee")
    # 100 Trying, 180 Ringing, 200 OK, each counted once on each side; BYE from the caller.
    assert (main_caller["invite_rx_1xx"], main_caller["invite_rx_2xx"], main_caller["byes_sent"]) == (2, 1, 1)
    assert (main_callee["invite_tx_1xx"], main_callee["invite_tx_2xx"], main_callee["byes_received"]) == (2, 1, 1)
    assert main_callee["calls_answered"] == main_callee["calls_connected"] == 1
    assert values(catalog_run, "main_caller", "call_end_code") == values(catalog_run, "main_callee", "call_end_code") == {200}
    assert main_caller["dtmf_sent_rfc2833"] == main_callee["dtmf_received_rfc2833"] == 3
    # Registered (60 s granted, one binding), refreshed by pjsua, unregistered at the end.
    assert main_caller["register_2xx"] >= 3, main_caller
    assert main_caller["register_refreshes"] >= 1 and main_caller["unregisters"] == 1, main_caller
    assert values(catalog_run, "main_caller", "register_granted_s") == {60}
    assert max(values(catalog_run, "main_caller", "register_time_ms")) < 1000  # no refresh timed from the first REGISTER
    assert values(catalog_run, "main_caller", "register_bindings") == {1}
    assert main_caller["rtt_samples"] >= 1 and main_caller["rx_lost"] == 0, main_caller
    hold_caller, hold_callee = totals(catalog_run, "hold_caller"), totals(catalog_run, "hold_callee")
    assert hold_caller["reinvites_sent"] == hold_callee["reinvites_received"] == 2  # hold, unhold
    assert values(catalog_run, "hold_caller", "media_hold") == {1} and values(catalog_run, "hold_callee", "media_hold") == {2}
    assert values(catalog_run, "hold_caller", "media_dir") == {1} and values(catalog_run, "hold_callee", "media_dir") == {2}
    assert values(catalog_run, "hold_caller", "srtp_active") == {True} and not values(catalog_run, "main_caller", "srtp_active")
    assert hold_caller["dtmf_sent_info"] == hold_callee["dtmf_received_info"] == hold_callee["infos_received"] == 1
    auth_caller = totals(catalog_run, "auth_caller")
    assert (auth_caller["invite_retries"], auth_caller["invite_rx_4xx"]) == (1, 1)  # with credentials after 407; 486
    assert values(catalog_run, "auth_caller", "call_last_code") == {486}
    assert totals(catalog_run, "cancel_caller")["cancels_sent"] == totals(catalog_run, "slow_callee")["cancels_received"] == 1
    assert totals(catalog_run, "slow_callee")["invite_tx_4xx"] == 1  # 487
    for code in (302, 503, 603):
        assert totals(catalog_run, f"rejected_{code}")[f"invite_rx_{code // 100}xx"] == 1
        assert totals(catalog_run, f"rejecter_{code}")[f"invite_tx_{code // 100}xx"] == 1
    for endpoint, user in enumerate(sorted(REGISTER_CODES)):  # the group's numbers start at the lowest
        code = REGISTER_CODES[user]
        mine = [s for s in catalog_run["refused"] if s.endpoint == endpoint]
        assert total(mine, f"register_{code // 100}xx") == 1 and total(mine, "register_2xx") == 0
    assert totals(catalog_run, "lost")["registrations_lost"] == 1
    assert totals(catalog_run, "unreachable")["sip_transport_errors"] == 1
    # pjmedia dropped DROP_PCT % of what the lossy callee received; its caller hears of it by RTCP.
    lossy_callee, lossy_caller = totals(catalog_run, "lossy_callee"), totals(catalog_run, "lossy_caller")
    loss = 100 * lossy_callee["rx_lost"] / (lossy_callee["rx_packets"] + lossy_callee["rx_lost"])
    assert DROP_PCT / 3 < loss < DROP_PCT * 3, loss
    assert lossy_callee["jb_lost_frames"] > 0 and lossy_caller["tx_lost"] > 0
    assert values(catalog_run, "lossy_caller", "rtp_source_mismatch") == {True}
    assert values(catalog_run, "lossy_caller", "tx_pt") == {8}  # PCMA
    assert max(values(catalog_run, "lossy_callee", "emodel_ie_eff")) > 0
    assert min(values(catalog_run, "lossy_callee", "mos")) < min(values(catalog_run, "main_callee", "mos"))
