"""Writes docs/test-file.md, the reference of the YAML test-file format; tools/gen_protos.py
(``make proto``) runs it after the contracts.

Where each column comes from:
- keys, types, enum words, descriptions: the messages reachable from TestSpec in
  protos/callmeter/v1/tests.proto and its imports, compiled with their comments (protoc
  ``--include_source_info``);
- defaults: what the worker's planner (services/worker/engine/plan.py) makes of groups that set
  nothing, and the API's default run timeout; "required" where the spec check refuses a spec
  without the field (REQUIRED, tested against it); otherwise the zero value, whose meaning the
  description gives;
- limits: worded here (LIMITS), their numbers read from callmeter/common/spec_check.py;
- gate metrics: callmeter/common/verdict.py's METRICS, described here (GATE_METRIC_DESCRIPTIONS).
"""

from __future__ import annotations

import itertools
import re
import sys
import tempfile
from pathlib import Path

import grpc_tools
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
TESTS_PROTO = "callmeter/v1/tests.proto"
DOC = ROOT / "docs" / "test-file.md"
EXAMPLES = ROOT / "examples"
EXAMPLE_IN_FULL = "selfcall.yaml"

sys.path.insert(0, str(ROOT))
from callmeter.common import spec_check  # noqa: E402
from callmeter.common.codecs import codec_names  # noqa: E402
from callmeter.common.enum_words import prefix, word  # noqa: E402
from callmeter.common.settings import env_name  # noqa: E402
from callmeter.common.verdict import COMPLETENESS_MIN_PCT, METRICS  # noqa: E402
from callmeter.v1 import common_pb2, engine_pb2, tests_pb2, workers_pb2  # noqa: E402
from services.api.settings import ApiSettings  # noqa: E402
from services.worker.engine import plan  # noqa: E402

DURATION = "google.protobuf.Duration"
SCALARS = {
    FieldDescriptor.CPPTYPE_STRING: "text",
    FieldDescriptor.CPPTYPE_INT32: "integer",
    FieldDescriptor.CPPTYPE_INT64: "integer",
    FieldDescriptor.CPPTYPE_DOUBLE: "number",
    FieldDescriptor.CPPTYPE_BOOL: "true or false",
}

# Fields the spec check refuses a spec without (tests/test_docs_current.py holds it to that).
REQUIRED = {"TestSpec.name", "TestSpec.groups", "EndpointGroup.name", "EndpointGroup.count", "EndpointGroup.role",
            "QualityGate.metric", "QualityGate.comparison", "DtmfStep.digits", "Label.key"}

_TEXT = f"at most {spec_check.MAX_TEXT_LENGTH} characters"
# What callmeter/common/spec_check.py allows beyond the field's type (every duration: not negative).
LIMITS = {
    "TestSpec.name": f"at most {spec_check.MAX_NAME_LENGTH} characters, not blank",
    "TestSpec.description": f"at most {spec_check.MAX_DESCRIPTION_LENGTH} characters",
    "TestSpec.groups": f"1 to {spec_check.MAX_GROUPS} groups",
    "TestSpec.timeout": f"at most {spec_check.MAX_TIMEOUT_S / 3600:g} h",
    "EndpointGroup.name": f"at most {spec_check.MAX_NAME_LENGTH} characters, unique in the test",
    "EndpointGroup.count": f"1 to {spec_check.MAX_GROUP_ENDPOINTS}",
    "EndpointGroup.credential_ref": _TEXT,
    "EndpointGroup.codecs": f"the workers' codecs; callmeter's engine has "
                            f"{', '.join(codec_names(list(spec_check.ENGINE_CODECS)))}",
    "EndpointGroup.srtp_keying": "callmeter's engine has "
                                 + ", ".join(word(common_pb2.SrtpKeying, k) for k in spec_check.ENGINE_SRTP_KEYINGS),
    "SipTarget.registrar": f"{_TEXT}; required for registrar_only groups, and for callee groups without aor",
    "SipTarget.proxy": _TEXT,
    "SipTarget.aor": f"{_TEXT}; required for callee groups without registrar",
    "SipTarget.call_uri": f"{_TEXT}; required for callers: a sip: or sips: URI, or group:NAME of a callee group",
    "SipTarget.number_start": "0 or more",
    "SipTarget.auth_user": _TEXT,
    "MediaSource.wav_path": f"{_TEXT}, not empty",
    "Tone.frequency_hz": "0 to 20000",
    "Scenario.reject_code": "0, or 300 to 699",
    "Scenario.repetitions": "0 or more",
    "Scenario.ramp_rate_cps": "0 or more",
    "DtmfStep.digits": "characters of " + " ".join(sorted(spec_check.DTMF_DIGITS)),
    "QualityGate.metric": "a [gate metric](#gate-metrics)",
    "QualityGate.threshold": "a finite number",
    "QualityGate.group": "a group of the test",
}

# What each of callmeter/common/verdict.py's METRICS means (tests/test_docs_current.py: every one).
GATE_METRIC_DESCRIPTIONS = {
    "mos_avg": "Mean MOS (conversational, from the E-model: 1 to 4.5) over the endpoint-seconds with a call "
               "active and a MOS computed.",
    "mos_min": "Lowest MOS of those endpoint-seconds.",
    "loss_pct": "Received RTP packets lost, in percent of those expected (lost ÷ (received + lost)).",
    "jitter_ms_p95": "95th percentile of received RTP's interarrival jitter, in ms, over the endpoint-seconds with "
                     "a call active.",
    "rtt_ms_p95": "95th percentile of the RTCP round-trip time, in ms, over the endpoint-seconds with a call active "
                  "and an RTT.",
    "setup_ms_p95": "95th percentile of call setup time (INVITE to 200 OK), in ms; each connected call counts once.",
    "completeness_pct": f"Endpoint-seconds stored, in percent of those expected; below {COMPLETENESS_MIN_PCT:g} % the "
                        "run is not judged (ERROR), so a gate can only ask more.",
    "overloaded_s": "Seconds in which a worker of the run was overloaded (docs/verdict.md); the run's total only, "
                    "not measured for a group.",
    "calls_failed_pct": "Failed calls, in percent of the calls attempted.",
    "calls_connected_pct": "Connected calls, in percent of the calls attempted.",
    "registered_pct": "Endpoints that held a registration at some second, in percent of the endpoints that "
                      "reported.",
    "endpoints_failed": "Endpoints whose outcome is a failure: every outcome but success, warnings and not_called "
                        "(docs/verdict.md).",
    "endpoints_failed_pct": "endpoints_failed in percent of the planned endpoints.",
}


def proto_comments() -> dict[str, str]:
    """Leading comment of each message, field, enum and enum value of tests.proto and its imports,
    by full name (an enum value's is its enum's full name, a dot and its own)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tests.pb"
        well_known = Path(grpc_tools.__file__).parent / "_proto"
        status = protoc.main(["protoc", f"-I{PROTOS}", f"-I{well_known}", "--include_source_info",
                              "--include_imports", f"--descriptor_set_out={out}", TESTS_PROTO])
        if status != 0:
            raise SystemExit(f"protoc failed with status {status}")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    comments: dict[str, str] = {}
    for file in files:
        # Paths are field numbers of descriptor.proto: file 4 message_type, 5 enum_type; message
        # 2 field; enum 2 value. (No message of these files nests another.)
        by_path = {tuple(loc.path): " ".join(loc.leading_comments.split())
                   for loc in file.source_code_info.location if loc.leading_comments}
        for i, message in enumerate(file.message_type):
            name = f"{file.package}.{message.name}"
            comments[name] = by_path.get((4, i), "")
            for j, field in enumerate(message.field):
                comments[f"{name}.{field.name}"] = by_path.get((4, i, 2, j), "")
        for i, enum in enumerate(file.enum_type):
            name = f"{file.package}.{enum.name}"
            comments[name] = by_path.get((5, i), "")
            for j, value in enumerate(enum.value):
                comments[f"{name}.{value.name}"] = by_path.get((5, i, 2, j), "")
    return comments


def reachable() -> list[tuple[Descriptor, str]]:
    """Each message a test file can hold, with the YAML paths where it appears ("`a`, `b`"), depth
    first from TestSpec."""
    found: dict[str, tuple[Descriptor, list[str]]] = {}

    def visit(message: Descriptor, where: str) -> None:
        if message.full_name == DURATION:
            return
        if message.full_name in found:
            found[message.full_name][1].append(where)
            return
        found[message.full_name] = (message, [where] if where else [])
        for field in message.fields:
            if field.message_type is not None:
                key = f"{where}.{field.name}" if where else field.name
                visit(field.message_type, key + ("[]" if field.is_repeated else ""))

    visit(tests_pb2.TestSpec.DESCRIPTOR, "")
    return [(message, ", ".join(f"`{path}`" for path in paths)) for message, paths in found.values()]


def enums_used(messages: list[Descriptor]) -> list[EnumDescriptor]:
    return list({f.enum_type.full_name: f.enum_type for m in messages for f in m.fields if f.enum_type}.values())


def enum_words(enum: EnumDescriptor) -> list[str]:
    """The words a test file writes, as callmeter/common/testspec.py reads them (UNSPECIFIED is no word)."""
    return [value.name.removeprefix(prefix(enum)).lower() for value in enum.values[1:]]


def engine_defaults() -> dict[str, str]:
    """Defaults of fields a test leaves out, by "Message.field": the worker's plan of a caller and a
    callee group that set only what they must, and the API's run timeout."""
    callee = tests_pb2.EndpointGroup(name="b", count=1, role=common_pb2.ENDPOINT_ROLE_CALLEE,
                                     target=tests_pb2.SipTarget(aor="sip:b@127.0.0.1:5070"))
    caller = tests_pb2.EndpointGroup(name="a", count=1, role=common_pb2.ENDPOINT_ROLE_CALLER,
                                     target=tests_pb2.SipTarget(call_uri="group:b"),
                                     scenario=tests_pb2.Scenario(dtmf=tests_pb2.DtmfStep(digits="1")))
    start = engine_pb2.EngineStart(spec=tests_pb2.TestSpec(groups=[callee, caller]),
                                   slices=[workers_pb2.EndpointSlice(group=g.name, count=1) for g in (callee, caller)])
    planned = plan.plan_start(start, [], plan.Limits(max_accounts=2, max_calls=2), "127.0.0.1")
    if planned.errors:
        raise SystemExit(f"the planner refused the default groups: {planned.errors}")
    [phone] = [p for p in planned.phones if p.role == common_pb2.ENDPOINT_ROLE_CALLER]
    timeout = "default_run_timeout_s"
    return {
        "TestSpec.timeout": f"{ApiSettings.model_fields[timeout].default:g}s (the API's "
                            f"{env_name(ApiSettings, timeout)})",
        "EndpointGroup.transport": word(common_pb2.Transport, phone.transport),
        "EndpointGroup.media": f"a {phone.media.tone_hz} Hz tone",
        "EndpointGroup.srtp": word(common_pb2.SrtpMode, phone.srtp),
        "EndpointGroup.srtp_keying": word(common_pb2.SrtpKeying, phone.srtp_keying),
        "Tone.frequency_hz": str(phone.media.tone_hz),
        "Scenario.register_expiry": f"{phone.register_expiry_s}s",
        "Scenario.ring_timeout": f"{phone.ring_timeout_s:g}s",
        "Scenario.repetitions": str(phone.repetitions),
        "DtmfStep.method": word(common_pb2.DtmfMethod, phone.dtmf.method),
    }


def _key(field: FieldDescriptor) -> str:
    return f"{field.containing_type.name}.{field.name}"


def _is_duration(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.full_name == DURATION


def type_text(field: FieldDescriptor) -> str:
    if _is_duration(field):
        kind = "duration"
    elif field.message_type is not None or field.enum_type is not None:
        name = (field.message_type or field.enum_type).name
        kind = f"[{name}](#{name.lower()})"
    else:
        kind = SCALARS[field.cpp_type]
    return f"list of {kind}" if field.is_repeated else kind


def default_text(field: FieldDescriptor, defaults: dict[str, str]) -> str:
    if _key(field) in REQUIRED:
        return "required"
    if _key(field) in defaults:
        return defaults[_key(field)]
    if field.is_repeated:
        return "none"
    if _is_duration(field):
        return "0s"
    if field.message_type is not None:
        return "not set"
    return {"text": "empty", "true or false": "false"}.get(SCALARS[field.cpp_type], "0")


def allowed_text(field: FieldDescriptor) -> str:
    parts = []
    if field.enum_type is not None:
        parts.append(", ".join(enum_words(field.enum_type)))
    if _is_duration(field):
        parts.append("not negative")
    if field.containing_oneof is not None:
        parts.append("only one of " + ", ".join(f.name for f in field.containing_oneof.fields))
    if _key(field) in LIMITS:
        parts.append(LIMITS[_key(field)])
    return "; ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def message_section(message: Descriptor, where: str, comments: dict[str, str], defaults: dict[str, str]) -> list[str]:
    lines = [f"## {message.name}", "", comments[message.full_name], ""]
    lines += [f"At {where}.", ""] if where else []
    lines += ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    for field in message.fields:
        lines.append(f"| `{field.name}` | {type_text(field)} | {_cell(default_text(field, defaults))} | "
                     f"{_cell(allowed_text(field))} | {_cell(comments[field.full_name])} |")
    return lines + [""]


def enum_section(enum: EnumDescriptor, comments: dict[str, str]) -> list[str]:
    lines = [f"### {enum.name}", "", comments[enum.full_name], "", "| word | meaning |", "|---|---|"]
    for value, text in zip(enum.values[1:], enum_words(enum), strict=True):
        lines.append(f"| `{text}` | {_cell(comments[f'{enum.full_name}.{value.name}'])} |")
    return lines + [""]


def first_sentence(example: Path) -> str:
    """The first sentence of the comment an example file starts with."""
    comment = itertools.takewhile(lambda line: line.startswith("#"), example.read_text().splitlines())
    text = " ".join(line.removeprefix("#").strip() for line in comment)
    return re.split(r"(?<=\.)\s", text, maxsplit=1)[0]


def examples_section() -> list[str]:
    lines = ["## Examples", ""]
    for path in sorted(EXAMPLES.glob("*.yaml")):
        lines.append(f"- [`examples/{path.name}`](../examples/{path.name}): {first_sentence(path)}")
    text = (EXAMPLES / EXAMPLE_IN_FULL).read_text()
    return lines + ["", f"`examples/{EXAMPLE_IN_FULL}` in full:", "", "```yaml", text.rstrip("\n"), "```", ""]


def test_file_doc_text() -> str:
    comments, defaults = proto_comments(), engine_defaults()
    messages = reachable()
    lines = [
        "<!-- Generated from protos/callmeter/v1/tests.proto and the code that reads it by tools/gen_docs.py "
        "(make proto). Do not edit. -->",
        "# Test files",
        "",
        "A test file is YAML: a mapping of the fields of the message `TestSpec`",
        "(protos/callmeter/v1/tests.proto), read by `callmeter/common/testspec.py` and checked by",
        "`callmeter/common/spec_check.py` (`callmeter test validate FILE`), each problem one line",
        "`FILE: FIELD: PROBLEM`.",
        "",
        "- **key**: the field's name; a key a message does not have is refused.",
        "- **type**: an enum is written as one of its words, in any case (`transport: tls`); its full",
        "  name works too (`TRANSPORT_TLS`). A duration is a number of seconds (`0.5`) or a protobuf",
        "  duration (`20s`, `1.5s`). A list is a YAML list, a message a YAML mapping.",
        "- **default**: what a field left out means, as callmeter's worker (its planner) and API take it.",
        "  A 0, an empty text or an empty list is the same as leaving the field out, but in a oneof.",
        "- **allowed**: what the check accepts beyond the type.",
        "",
    ]
    for message, where in messages:
        lines += message_section(message, where, comments, defaults)
    lines += ["## Enumerations", ""]
    for enum in enums_used([message for message, _ in messages]):
        lines += enum_section(enum, comments)
    lines += [
        "## Gate metrics",
        "",
        "A quality gate compares one of these figures, of the whole run or of one group (`group`), with",
        "its threshold. A figure that was never measured (a MOS without a connected call) fails its gate",
        "as \"not measured\", never as 0. A test without gates is judged by the default gate",
        "`endpoints_failed == 0`. docs/verdict.md has the whole rule.",
        "",
        "| metric | meaning |",
        "|---|---|",
    ]
    lines += [f"| `{name}` | {_cell(GATE_METRIC_DESCRIPTIONS[name])} |" for name in METRICS]
    lines += [""] + examples_section()
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> int:
    DOC.write_text(test_file_doc_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
