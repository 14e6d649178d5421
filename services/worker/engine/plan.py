"""What each phone of an EngineStart does: the TestSpec resolved into plain per-phone plans.

Pure functions (no pjsua2), so that every rule of the spec's interpretation is testable alone.
A phone whose plan cannot be made gets a PlanError instead, sent as an EndpointError; the
other phones run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from google.protobuf.duration_pb2 import Duration

from callmeter.common.start_waves import GROUP_PREFIX
from callmeter.v1 import common_pb2, engine_pb2, tests_pb2

DEFAULT_REGISTER_EXPIRY_S = 300
DEFAULT_RING_TIMEOUT_S = 32.0  # SIP Timer B
DEFAULT_TONE_HZ = 1004
# How long a caller's REGISTER may take before its first call (SIP Timer F), and slack for
# signalling, when working out by when a callee can expect its last call.
REGISTER_ALLOWANCE_S = 32.0
SCHEDULE_SLACK_S = 5.0
# SRTP keyings this wheel can do: it is built without PJMEDIA_SRTP_HAS_DTLS (docs/engine.md).
SRTP_KEYINGS = {common_pb2.SRTP_KEYING_SDES}


@dataclass(frozen=True)
class Limits:
    max_accounts: int
    max_calls: int


@dataclass(frozen=True)
class Media:
    tone_hz: int = 0
    wav_path: str = ""


@dataclass(frozen=True)
class Auth:
    username: str
    password: str
    realm: str


@dataclass(frozen=True)
class Hold:
    after_s: float
    duration_s: float


@dataclass(frozen=True)
class Dtmf:
    after_s: float
    digits: str
    method: int  # common_pb2.DtmfMethod


@dataclass(frozen=True)
class PhonePlan:
    group: str
    index: int
    role: int  # common_pb2.EndpointRole
    transport: int  # common_pb2.Transport
    # SIP port to listen on: the AOR's port for a callee group reached without a registrar,
    # else 0 (any free port).
    local_port: int
    aor: str
    registrar: str  # registrar URI, empty when the group does not register
    proxy: str  # outbound proxy URI, may be empty
    auth: Auth | None
    register_expiry_s: int
    # pjsua refreshes a registration this long before the granted expiry ends.
    refresh_before_s: int
    unregister_at_end: bool
    media: Media
    srtp: int  # common_pb2.SrtpMode
    srtp_keying: int  # common_pb2.SrtpKeying
    # Callers.
    call_uri: str = ""
    start_offset_s: float = 0.0
    call_duration_s: float = 0.0
    ring_timeout_s: float = DEFAULT_RING_TIMEOUT_S
    repetitions: int = 1
    pause_s: float = 0.0
    hold: Hold | None = None
    dtmf: Dtmf | None = None
    # Callees.
    answer_delay_s: float = 0.0
    reject_code: int = 0
    # Calls this callee will receive from caller groups of the spec, and by when (seconds
    # after the start) the callers' schedule has placed them all; None when unknown.
    expected_calls: int | None = None
    calls_due_s: float | None = None
    # Phones with no natural end (callees of unknown callers, registrar-only) stop after this.
    run_for_s: float | None = None


@dataclass(frozen=True)
class PlanError:
    group: str
    endpoint: int
    reason: str


@dataclass(frozen=True)
class Plan:
    phones: list[PhonePlan]
    # Codec ids in order of preference for the whole engine; empty keeps the wheel's order.
    codec_order: list[str]
    errors: list[PlanError]


def seconds(duration: Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def fill(pattern: str, n: int) -> str:
    return pattern.replace("{n}", str(n))


def credential_key(ref: str, n: int) -> str:
    """The EngineStart.credentials key of number n of credential ref's table (names have no "#")."""
    return f"{ref}#{n}"


def codec_names(codec_ids: list[str]) -> list[str]:
    """The names a spec may use, from the wheel's codec ids ("speex/16000/1" -> "speex")."""
    return list(dict.fromkeys(codec_id.split("/", 1)[0] for codec_id in codec_ids))


def resolve_codecs(names: list[str], codec_ids: list[str]) -> tuple[list[str], list[str]]:
    """Codec ids for the names, in the names' order, and the names that match none.

    A name matches an id exactly or as its prefix up to a "/": "PCMU" matches "PCMU/8000/1",
    "speex" every speex rate, "speex/16000" only that one. Case does not matter.
    """
    order: list[str] = []
    unknown: list[str] = []
    for name in names:
        wanted = name.strip().lower()
        matches = [cid for cid in codec_ids if cid.lower() == wanted or cid.lower().startswith(wanted + "/")]
        if not matches:
            unknown.append(name)
        order += [cid for cid in matches if cid not in order]
    return order, unknown


def sip_uri(host_or_uri: str, transport: int, loose_route: bool = False) -> str:
    """A SIP URI for "host[:port]" or a URI, with the group's transport and ;lr when asked."""
    uri = host_or_uri if host_or_uri.startswith(("sip:", "sips:")) else f"sip:{host_or_uri}"
    if loose_route and ";lr" not in uri:
        uri += ";lr"
    return with_transport(uri, transport)


def with_transport(uri: str, transport: int) -> str:
    """Adds ;transport=tcp|tls to a plain SIP URI so requests use the group's transport."""
    name = {common_pb2.TRANSPORT_TCP: "tcp", common_pb2.TRANSPORT_TLS: "tls"}.get(transport)
    if name is None or "transport=" in uri or "<" in uri:
        return uri
    head, sep, headers = uri.partition("?")
    return f"{head};transport={name}{sep}{headers}"


def uri_host_port(uri: str) -> tuple[str, int]:
    """Host and port (0 if absent) of a SIP URI such as sip:{n}@127.0.0.1:5070;transport=tcp."""
    rest = re.sub(r"^<?sips?:", "", uri.strip())
    hostport = re.split(r"[;?>]", rest.split("@", 1)[-1], maxsplit=1)[0]
    if hostport.startswith("["):  # IPv6 reference
        host, _, port = hostport[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = hostport.partition(":")
    return host, int(port) if port.isdigit() else 0


def plan_start(start: engine_pb2.EngineStart, codec_ids: list[str], limits: Limits, local_host: str) -> Plan:
    """Plans every phone of the start's slices; local_host names this engine in default AORs."""
    spec = start.spec
    groups = {group.name: group for group in spec.groups}
    errors: list[PlanError] = []
    phones: list[PhonePlan] = []
    codec_order: list[str] = []
    codec_owner = ""
    expected = _expected_calls(spec)
    accounts = calling = 0
    for piece in start.slices:
        indexes = range(piece.first_index, piece.first_index + piece.count)
        group = groups.get(piece.group)
        if group is None:
            errors += [PlanError(piece.group, i, f"the spec has no group named {piece.group!r}") for i in indexes]
            continue
        problem = _group_problem(group, groups)
        if problem is None and group.codecs:
            order, unknown = resolve_codecs(list(group.codecs), codec_ids)
            if unknown:
                problem = (f"unknown codec {', '.join(map(repr, unknown))} in group {group.name!r}; this engine has "
                           f"{', '.join(codec_names(codec_ids))}")
            elif codec_order and order != codec_order:
                problem = (f"group {group.name!r} prefers codecs {list(group.codecs)} but group {codec_owner!r} in the "
                           "same engine prefers others; codec priority is per engine process")
            else:
                codec_order, codec_owner = order, group.name
        if problem is not None:
            errors += [PlanError(group.name, i, problem) for i in indexes]
            continue
        for index in indexes:
            n = index + group.target.number_start
            credential = _credential(start, group.credential_ref, n) if group.credential_ref else None
            if group.credential_ref and credential is None:
                errors.append(PlanError(group.name, index, f"credential {group.credential_ref!r} of group "
                                        f"{group.name!r} has no password for number {n} on this worker"))
                continue
            takes_calls = group.role != common_pb2.ENDPOINT_ROLE_REGISTRAR_ONLY
            if accounts >= limits.max_accounts:
                errors.append(PlanError(group.name, index, f"engine limit: at most {limits.max_accounts} endpoints "
                                        "(accounts) per engine process; the supervisor must spread them"))
                continue
            if takes_calls and calling >= limits.max_calls:
                errors.append(PlanError(group.name, index, f"engine limit: at most {limits.max_calls} concurrent "
                                        "calls per engine process; the supervisor must spread calling endpoints"))
                continue
            accounts += 1
            calling += takes_calls
            phones.append(_phone(group, index, groups, start, credential, expected.get((group.name, index)),
                                 local_host))
    return Plan(phones, codec_order, errors)


def _group_problem(group: tests_pb2.EndpointGroup, groups: dict[str, tests_pb2.EndpointGroup]) -> str | None:
    target = group.target
    if group.role == common_pb2.ENDPOINT_ROLE_UNSPECIFIED:
        return f"group {group.name!r} has no role"
    if group.srtp not in (common_pb2.SRTP_MODE_UNSPECIFIED, common_pb2.SRTP_MODE_OFF) and \
            (group.srtp_keying or common_pb2.SRTP_KEYING_SDES) not in SRTP_KEYINGS:
        return (f"group {group.name!r} asks for {common_pb2.SrtpKeying.Name(group.srtp_keying)}, which this engine's "
                "pjsua2 lacks (built without PJMEDIA_SRTP_HAS_DTLS); SDES keying works")
    if group.media.HasField("wav_path") and not group.media.wav_path:
        return f"group {group.name!r} has an empty wav_path"
    if group.role == common_pb2.ENDPOINT_ROLE_REGISTRAR_ONLY and not target.registrar:
        return f"registrar-only group {group.name!r} has no registrar"
    if group.role == common_pb2.ENDPOINT_ROLE_CALLEE and not target.registrar and not target.aor:
        return (f"callee group {group.name!r} needs target.aor (e.g. sip:{{n}}@127.0.0.1:5070: the engine listens on "
                "its port) or a registrar")
    if group.role == common_pb2.ENDPOINT_ROLE_CALLER:
        if not target.call_uri:
            return f"caller group {group.name!r} has no call_uri"
        if target.call_uri.startswith(GROUP_PREFIX):
            callee = groups.get(target.call_uri[len(GROUP_PREFIX):])
            if callee is None:
                return f"call_uri {target.call_uri!r} of group {group.name!r} names no group of the spec"
            if callee.count <= 0:
                return f"call_uri {target.call_uri!r} of group {group.name!r} names a group without phones"
            if not callee.target.aor and not callee.target.registrar:
                return (f"call_uri {target.call_uri!r}: group {callee.name!r} has neither target.aor nor a registrar, "
                        "so its phones have no address")
    return None


def _expected_calls(spec: tests_pb2.TestSpec) -> dict[tuple[str, int], tuple[int, float]]:
    """Calls each callee phone receives from "group:NAME" callers (caller i calls phone i mod
    count), and the latest time after the start by which the callers' schedule has placed them."""
    counts = {group.name: group.count for group in spec.groups}
    expected: dict[tuple[str, int], tuple[int, float]] = {}
    for group in spec.groups:
        uri, scenario = group.target.call_uri, group.scenario
        if group.role != common_pb2.ENDPOINT_ROLE_CALLER or not uri.startswith(GROUP_PREFIX):
            continue
        name = uri[len(GROUP_PREFIX):]
        if counts.get(name, 0) <= 0:
            continue
        repetitions = max(scenario.repetitions, 1)
        per_call = (seconds(scenario.ring_timeout) or DEFAULT_RING_TIMEOUT_S) + seconds(scenario.call_duration)
        span = repetitions * per_call + (repetitions - 1) * seconds(scenario.pause_between_calls) + SCHEDULE_SLACK_S
        span += REGISTER_ALLOWANCE_S if group.target.registrar else 0.0
        for caller in range(group.count):
            offset = caller / scenario.ramp_rate_cps if scenario.ramp_rate_cps > 0 else 0.0
            count, due = expected.get((name, caller % counts[name]), (0, 0.0))
            expected[(name, caller % counts[name])] = (count + repetitions, max(due, offset + span))
    return expected


def _phone(group: tests_pb2.EndpointGroup, index: int, groups: dict[str, tests_pb2.EndpointGroup],
           start: engine_pb2.EngineStart, credential: engine_pb2.Credential | None,
           expected: tuple[int, float] | None, local_host: str) -> PhonePlan:
    target, scenario = group.target, group.scenario
    transport = group.transport or common_pb2.TRANSPORT_UDP
    n = index + target.number_start
    registrar = sip_uri(target.registrar, transport) if target.registrar else ""
    aor_pattern = target.aor or (f"sip:{{n}}@{uri_host_port(registrar)[0]}" if registrar else f"sip:{{n}}@{local_host}")
    aor = fill(aor_pattern, n)
    local_port = 0
    if group.role == common_pb2.ENDPOINT_ROLE_CALLEE and not registrar:
        local_port = uri_host_port(aor)[1] or (5061 if transport == common_pb2.TRANSPORT_TLS else 5060)
    expiry = int(seconds(scenario.register_expiry)) or DEFAULT_REGISTER_EXPIRY_S
    interval = seconds(scenario.reregister_interval)
    refresh_before = max(1, math.ceil(expiry - interval)) if 0 < interval < expiry else max(1, math.ceil(expiry * 0.1))
    media = Media(wav_path=group.media.wav_path) if group.media.HasField("wav_path") else Media(
        tone_hz=group.media.tone.frequency_hz or DEFAULT_TONE_HZ)
    common = dict(
        group=group.name, index=index, role=group.role, transport=transport, local_port=local_port,
        aor=with_transport(aor, transport), registrar=registrar,
        proxy=sip_uri(target.proxy, transport, loose_route=True) if target.proxy else "",
        auth=_auth(group, credential, aor, n), register_expiry_s=expiry, refresh_before_s=refresh_before,
        unregister_at_end=scenario.unregister_at_end, media=media,
        srtp=group.srtp or common_pb2.SRTP_MODE_OFF, srtp_keying=group.srtp_keying or common_pb2.SRTP_KEYING_SDES,
        run_for_s=seconds(start.spec.timeout) or None,
    )
    if group.role == common_pb2.ENDPOINT_ROLE_CALLER:
        cps = scenario.ramp_rate_cps
        return PhonePlan(
            **common, call_uri=with_transport(_call_uri(group, index, groups), transport),
            start_offset_s=index / cps if cps > 0 else 0.0,
            call_duration_s=seconds(scenario.call_duration),
            ring_timeout_s=seconds(scenario.ring_timeout) or DEFAULT_RING_TIMEOUT_S,
            repetitions=max(scenario.repetitions, 1), pause_s=seconds(scenario.pause_between_calls),
            hold=Hold(seconds(scenario.hold.after), seconds(scenario.hold.duration))
            if scenario.HasField("hold") and seconds(scenario.hold.duration) > 0 else None,
            dtmf=Dtmf(seconds(scenario.dtmf.after), scenario.dtmf.digits,
                      scenario.dtmf.method or common_pb2.DTMF_METHOD_RFC2833)
            if scenario.dtmf.digits else None,
        )
    if group.role == common_pb2.ENDPOINT_ROLE_CALLEE:
        return PhonePlan(**common, answer_delay_s=seconds(scenario.answer_delay), reject_code=scenario.reject_code,
                         expected_calls=expected[0] if expected else None, calls_due_s=expected[1] if expected else None)
    return PhonePlan(**common)


def _call_uri(group: tests_pb2.EndpointGroup, index: int, groups: dict[str, tests_pb2.EndpointGroup]) -> str:
    uri = group.target.call_uri
    if not uri.startswith(GROUP_PREFIX):
        return fill(uri, index + group.target.number_start)
    callee = groups[uri[len(GROUP_PREFIX):]]
    pattern = callee.target.aor or f"sip:{{n}}@{callee.target.registrar}"
    return fill(pattern, index % callee.count + callee.target.number_start)


def _credential(start: engine_pb2.EngineStart, ref: str, n: int) -> engine_pb2.Credential | None:
    """Number n's entry of the credential's table, else the credential itself (a {n} pattern)."""
    for key in (credential_key(ref, n), ref):
        if key in start.credentials:
            return start.credentials[key]
    return None


def _auth(group: tests_pb2.EndpointGroup, credential: engine_pb2.Credential | None, aor: str,
          n: int) -> Auth | None:
    if credential is None:
        return None
    user = fill(group.target.auth_user or credential.username, n)
    if not user:
        user = re.sub(r"^sips?:", "", aor).split("@", 1)[0]
    return Auth(username=user, password=fill(credential.password, n), realm=credential.realm or "*")
