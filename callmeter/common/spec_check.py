"""The one check of a TestSpec: every problem, each with its field path, or none when it may run.

Used by the API before it stores or validates a test (services/api/handlers/tests.py), by
`callmeter test validate` and by `callmeter worker --local`. ``check_spec`` is pure: what the
engines that would run the test can do comes in as ``Capabilities``: the registered workers'
(the API), this machine's (local mode), or callmeter's own SIP engine (``ENGINE``, for
`validate` without a platform). Paths use the proto field names, ``groups[1].codecs[0]``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.duration_pb2 import Duration
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from callmeter.common.codecs import codec_matches, codec_names
from callmeter.common.enum_words import word
from callmeter.common.start_waves import GROUP_PREFIX
from callmeter.common.directions import higher_is_better
from callmeter.common.verdict import GATE_METRICS, LAST_PASS, is_relative
from callmeter.v1 import common_pb2, tests_pb2, workers_pb2

# Largest group one test may ask for; larger loads are several groups (and several workers).
MAX_GROUP_ENDPOINTS = 10_000
# Longest run a test may ask for (TestSpec.timeout).
MAX_TIMEOUT_S = 24 * 3600
MAX_NAME_LENGTH = 255  # the column width of names in the state store
# Seen: a 10 MB description was stored. Sizes a test may not exceed, each refused with its field.
MAX_DESCRIPTION_LENGTH = 64 * 1024  # characters
MAX_GROUPS = 100
MAX_TEXT_LENGTH = 2048  # an address, URI, path or credential reference

DTMF_DIGITS = frozenset("0123456789*#ABCD")
# A run id (callmeter/state/models.py new_id: uuid4 hex), as TestSpec.baseline may name one.
RUN_ID = re.compile(r"[0-9a-f]{32}")

# What this product's engine (the pjsua2-python 2.15.1 wheel) has, used for any capability that no
# registered worker reports: the codec ids its Endpoint.codecEnum2() lists.
# A spec names a codec by id or by a prefix up to a "/" (callmeter.common.codecs).
ENGINE_CODECS = ("speex/16000/1", "speex/8000/1", "speex/32000/1", "iLBC/8000/1", "GSM/8000/1", "PCMU/8000/1",
                 "PCMA/8000/1", "G722/16000/1", "L16/44100/1", "L16/44100/2")
ENGINE_TRANSPORTS = frozenset({common_pb2.TRANSPORT_UDP, common_pb2.TRANSPORT_TCP, common_pb2.TRANSPORT_TLS})
# The wheel is built without DTLS-SRTP.
ENGINE_SRTP_KEYINGS = frozenset({common_pb2.SRTP_KEYING_SDES})


@dataclass(frozen=True)
class Capabilities:
    """What at least one engine that may run the test can do."""

    codecs: tuple[str, ...]  # codec ids or names, e.g. "PCMU/8000/1"
    transports: frozenset[int]
    srtp_keyings: frozenset[int]
    # Where those engines are, as a problem says it: "... is not available on any worker".
    where: str = "on any worker"


ENGINE = Capabilities(ENGINE_CODECS, ENGINE_TRANSPORTS, ENGINE_SRTP_KEYINGS, "in callmeter's SIP engine")


def capabilities(capacities: Sequence[workers_pb2.WorkerCapacity], where: str = "on any worker") -> Capabilities:
    """The union of the workers' capacities; the engine's own list for what none of them reports."""
    codecs = tuple(dict.fromkeys(codec for capacity in capacities for codec in capacity.codecs))
    transports = frozenset(t for capacity in capacities for t in capacity.transports)
    keyings = frozenset(k for capacity in capacities for k in capacity.srtp_keyings)
    return Capabilities(codecs or ENGINE.codecs, transports or ENGINE.transports, keyings or ENGINE.srtp_keyings,
                        where)


class _Violations:
    def __init__(self) -> None:
        self.found: list[common_pb2.FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.found.append(common_pb2.FieldViolation(field=field, description=description))

    def duration(self, field: str, value: Duration, maximum_s: float | None = None) -> None:
        if value.seconds < 0 or value.nanos < 0:
            self.add(field, "must not be negative")
        elif maximum_s is not None and value.seconds + value.nanos / 1e9 > maximum_s:
            self.add(field, f"must be at most {maximum_s:g} s")


def check_spec(spec: tests_pb2.TestSpec, caps: Capabilities) -> list[common_pb2.FieldViolation]:
    """Every problem of the spec; empty when it may be stored and run."""
    v = _Violations()
    _name(v, "name", spec.name)
    if len(spec.description) > MAX_DESCRIPTION_LENGTH:
        v.add("description", f"must be at most {MAX_DESCRIPTION_LENGTH} characters (got {len(spec.description)})")
    if not spec.groups:
        v.add("groups", "a test needs at least one group")
    elif len(spec.groups) > MAX_GROUPS:
        v.add("groups", f"at most {MAX_GROUPS} groups (got {len(spec.groups)})")
    groups: dict[str, tests_pb2.EndpointGroup] = {}
    for i, group in enumerate(spec.groups):
        path = f"groups[{i}]"
        if group.name in groups:  # the first of that name keeps it: "group:NAME" means that one
            v.add(f"{path}.name", f"{_q(group.name)} is already the name of an earlier group")
        groups.setdefault(group.name, group)
    for i, group in enumerate(spec.groups):
        _group(v, f"groups[{i}]", group, groups, caps)
    for i, gate in enumerate(spec.gates):
        _gate(v, f"gates[{i}]", gate, groups)
    _baseline(v, spec)
    _selector(v, "worker_selector", spec.worker_selector)
    for i, group in enumerate(spec.groups):
        _selector(v, f"groups[{i}].worker_selector", group.worker_selector, spec.worker_selector)
    v.duration("timeout", spec.timeout, MAX_TIMEOUT_S)
    return v.found


def _selector(v: _Violations, path: str, labels: Sequence[common_pb2.Label],
              test_labels: Sequence[common_pb2.Label] = ()) -> None:
    """Each label needs a key; a key asked with two values (here, or here and in the test's
    selector) is a selector no worker matches."""
    wanted: dict[str, str] = {}
    for label in test_labels:
        wanted.setdefault(label.key, label.value)
    for i, label in enumerate(labels):
        if not label.key:
            v.add(f"{path}[{i}].key", "required")
        elif wanted.setdefault(label.key, label.value) != label.value:
            v.add(f"{path}[{i}].value", f"{_q(label.value)} conflicts with {label.key}={_q(wanted[label.key])} "
                                        "asked before: no worker has both")


def _name(v: _Violations, path: str, name: str) -> None:
    if not name.strip():
        v.add(path, "required")
    elif len(name) > MAX_NAME_LENGTH:
        v.add(path, f"must be at most {MAX_NAME_LENGTH} characters")


def _group(v: _Violations, path: str, group: tests_pb2.EndpointGroup,
           groups: dict[str, tests_pb2.EndpointGroup], caps: Capabilities) -> None:
    _name(v, f"{path}.name", group.name)
    if not 1 <= group.count <= MAX_GROUP_ENDPOINTS:
        v.add(f"{path}.count", f"must be between 1 and {MAX_GROUP_ENDPOINTS} (got {group.count})")
    target = group.target
    for field, text in (("target.aor", target.aor), ("target.registrar", target.registrar),
                        ("target.proxy", target.proxy), ("target.call_uri", target.call_uri),
                        ("target.auth_user", target.auth_user), ("credential_ref", group.credential_ref),
                        ("media.wav_path", group.media.wav_path)):
        if len(text) > MAX_TEXT_LENGTH:
            v.add(f"{path}.{field}", f"must be at most {MAX_TEXT_LENGTH} characters (got {len(text)})")
    _known(v, f"{path}.role", common_pb2.EndpointRole, group.role)
    if group.role == common_pb2.ENDPOINT_ROLE_UNSPECIFIED:
        v.add(f"{path}.role", "required: caller, callee or registrar_only")
    elif group.role == common_pb2.ENDPOINT_ROLE_CALLER:
        _call_uri(v, f"{path}.target.call_uri", target.call_uri, groups)
    elif group.role == common_pb2.ENDPOINT_ROLE_CALLEE and not (target.aor or target.registrar):
        v.add(f"{path}.target.aor", "a callee group needs target.aor (where its phones listen) or a registrar")
    elif group.role == common_pb2.ENDPOINT_ROLE_REGISTRAR_ONLY and not target.registrar:
        v.add(f"{path}.target.registrar", "a registrar_only group needs a registrar")
    if target.number_start < 0:
        v.add(f"{path}.target.number_start", "must not be negative")
    transport = group.transport or common_pb2.TRANSPORT_UDP
    if transport not in caps.transports:
        v.add(f"{path}.transport", f"{word(common_pb2.Transport, transport)} is not available {caps.where}")
    for j, codec in enumerate(group.codecs):
        if not codec.strip():
            v.add(f"{path}.codecs[{j}]", "empty codec name")
        elif not any(codec_matches(codec, codec_id) for codec_id in caps.codecs):
            v.add(f"{path}.codecs[{j}]", f"{_q(codec)} is not available {caps.where} "
                                         f"(available: {', '.join(codec_names(list(caps.codecs)))})")
    if group.media.HasField("wav_path") and not group.media.wav_path:
        v.add(f"{path}.media.wav_path", "empty path")
    if group.media.HasField("tone") and not 0 <= group.media.tone.frequency_hz <= 20_000:
        v.add(f"{path}.media.tone.frequency_hz", "must be between 0 (1004 Hz) and 20000")
    _known(v, f"{path}.srtp", common_pb2.SrtpMode, group.srtp)
    if group.srtp_keying and group.srtp_keying not in caps.srtp_keyings:
        v.add(f"{path}.srtp_keying", f"{word(common_pb2.SrtpKeying, group.srtp_keying)} is not available {caps.where}")
    _scenario(v, f"{path}.scenario", group.scenario)


def _call_uri(v: _Violations, path: str, uri: str, groups: dict[str, tests_pb2.EndpointGroup]) -> None:
    if not uri:
        v.add(path, "a caller group needs target.call_uri: a SIP URI or 'group:NAME'")
    elif uri.startswith(GROUP_PREFIX):
        callee = groups.get(uri.removeprefix(GROUP_PREFIX))
        if callee is None or callee.role != common_pb2.ENDPOINT_ROLE_CALLEE:
            callees = [name for name, g in groups.items() if g.role == common_pb2.ENDPOINT_ROLE_CALLEE]
            v.add(path, f"{_q(uri)} names no callee group (callee groups: {', '.join(callees) or 'none'})")
    elif not uri.startswith(("sip:", "sips:")):
        v.add(path, f"{_q(uri)} is neither a sip:/sips: URI nor 'group:NAME'")


def _scenario(v: _Violations, path: str, scenario: tests_pb2.Scenario) -> None:
    for field in ("register_expiry", "reregister_interval", "answer_delay", "call_duration", "ring_timeout",
                  "pause_between_calls"):
        v.duration(f"{path}.{field}", getattr(scenario, field))
    if scenario.reject_code and not 300 <= scenario.reject_code <= 699:
        v.add(f"{path}.reject_code", f"must be 0 (answer) or a final SIP code 300-699 (got {scenario.reject_code})")
    if scenario.repetitions < 0:
        v.add(f"{path}.repetitions", "must not be negative")
    if not (math.isfinite(scenario.ramp_rate_cps) and scenario.ramp_rate_cps >= 0):
        v.add(f"{path}.ramp_rate_cps", "must be a non-negative number")
    v.duration(f"{path}.hold.after", scenario.hold.after)
    v.duration(f"{path}.hold.duration", scenario.hold.duration)
    v.duration(f"{path}.dtmf.after", scenario.dtmf.after)
    _known(v, f"{path}.dtmf.method", common_pb2.DtmfMethod, scenario.dtmf.method)
    if scenario.HasField("dtmf"):
        digits = scenario.dtmf.digits
        if not digits:
            v.add(f"{path}.dtmf.digits", "required when dtmf is set")
        elif bad := sorted(set(digits) - DTMF_DIGITS):
            v.add(f"{path}.dtmf.digits", f"{_q(''.join(bad))}: digits are 0-9, *, # and A-D")


def _gate(v: _Violations, path: str, gate: tests_pb2.QualityGate, groups: dict[str, tests_pb2.EndpointGroup]) -> None:
    if gate.metric not in GATE_METRICS:
        v.add(f"{path}.metric", f"unknown metric {_q(gate.metric)}; one of: {', '.join(sorted(GATE_METRICS))}")
    if is_relative(gate):
        _baseline_limit(v, path, gate)
    else:
        _known(v, f"{path}.comparison", tests_pb2.Comparison, gate.comparison)
        if gate.comparison == tests_pb2.COMPARISON_UNSPECIFIED:
            v.add(f"{path}.comparison", "required: lt, le, gt, ge or eq (or a baseline limit instead)")
    if not math.isfinite(gate.threshold):
        v.add(f"{path}.threshold", "must be a finite number")
    if gate.group and gate.group not in groups:
        v.add(f"{path}.group", f"{_q(gate.group)} names no group of the test")


def _baseline_limit(v: _Violations, path: str, gate: tests_pb2.QualityGate) -> None:
    """A relative gate: one limit, not negative, on the side that is worse for its metric, and no
    comparison or threshold beside it."""
    if gate.comparison or gate.threshold:
        v.add(f"{path}.baseline", "a gate is either absolute (comparison, threshold) or relative to the baseline "
                                  "(baseline), not both")
    kind = gate.baseline.WhichOneof("limit")
    if kind is None:
        v.add(f"{path}.baseline", "needs one of: max_drop, max_drop_pct, max_rise, max_rise_pct")
        return
    limit = getattr(gate.baseline, kind)
    if not (math.isfinite(limit) and limit >= 0):
        v.add(f"{path}.baseline.{kind}", f"must be a number, 0 or more (got {limit:g})")
    if gate.metric in GATE_METRICS:
        better_higher = higher_is_better(gate.metric)
        if kind.startswith("max_rise") == better_higher:
            worse = "drop" if better_higher else "rise"
            v.add(f"{path}.baseline.{kind}", f"{gate.metric} gets worse as it {worse}s: "
                                             f"limit it with max_{worse} or max_{worse}_pct")


def _baseline(v: _Violations, spec: tests_pb2.TestSpec) -> None:
    """TestSpec.baseline: last-pass or a run id, and set when a gate is relative to it."""
    relative = [f"gates[{i}]" for i, gate in enumerate(spec.gates) if is_relative(gate)]
    if spec.baseline and spec.baseline != LAST_PASS and not RUN_ID.fullmatch(spec.baseline):
        v.add("baseline", f"{_q(spec.baseline[:64])} is neither {LAST_PASS} nor a run id (32 hex digits)")
    elif relative and not spec.baseline:
        v.add("baseline", f"required by {', '.join(relative)}, relative to the baseline: {LAST_PASS} or a run id")


def _q(text: str) -> str:
    return json.dumps(text)  # quoted, with control characters escaped


def _known(v: _Violations, path: str, enum: EnumTypeWrapper, value: int) -> None:
    # Proto3 enums are open: a number the contract does not define arrives as is.
    if value not in enum.values():
        v.add(path, f"{value} is not a value of {enum.DESCRIPTOR.name}")
