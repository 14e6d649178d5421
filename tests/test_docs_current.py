"""docs/test-file.md is what tools/gen_docs.py makes of the contracts, and covers every field a test file has."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from callmeter.common.spec_check import ENGINE, check_spec
from callmeter.common.testspec import parse_spec_yaml
from callmeter.common.verdict import GATE_METRICS
from callmeter.v1 import tests_pb2

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "tools" / "gen_docs.py")
assert _spec is not None and _spec.loader is not None
gen_docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen_docs)

# A valid spec holding every message that has a required field; callers first, so that
# groups[0] is the group whose call_uri and DTMF matter.
BASE = """
name: t
groups:
  - name: callers
    count: 1
    role: caller
    target: {call_uri: "group:callees"}
    scenario: {dtmf: {digits: "1", method: rfc2833}}
  - name: callees
    count: 1
    role: callee
    target: {aor: "sip:b@127.0.0.1:5070"}
gates: [{metric: mos_avg, comparison: ge, threshold: 4}]
worker_selector: [{key: region, value: eu}]
"""
# Where BASE holds each of those messages: its path in problems, and how to reach it.
INSTANCES: dict[str, tuple[str, Callable[[tests_pb2.TestSpec], Message]]] = {
    "TestSpec": ("", lambda spec: spec),
    "EndpointGroup": ("groups[0].", lambda spec: spec.groups[0]),
    "DtmfStep": ("groups[0].scenario.dtmf.", lambda spec: spec.groups[0].scenario.dtmf),
    "QualityGate": ("gates[0].", lambda spec: spec.gates[0]),
    "Label": ("worker_selector[0].", lambda spec: spec.worker_selector[0]),
}


def messages(descriptor: Descriptor) -> Iterator[Descriptor]:
    """Every message under descriptor, itself included (repeats and Duration too)."""
    yield descriptor
    for field in descriptor.fields:
        if field.message_type is not None:
            yield from messages(field.message_type)


def test_test_file_doc_is_current() -> None:
    assert (ROOT / "docs" / "test-file.md").read_text() == gen_docs.test_file_doc_text(), \
        "docs/test-file.md is stale; run `make proto`"


def test_every_field_of_a_test_file_has_a_row_in_its_section() -> None:
    sections = {part.split("\n", 1)[0]: part for part in (ROOT / "docs" / "test-file.md").read_text().split("\n## ")}
    for message in messages(tests_pb2.TestSpec.DESCRIPTOR):
        if message.full_name == "google.protobuf.Duration":
            continue
        assert message.name in sections, message.name
        for field in message.fields:
            assert f"\n| `{field.name}` |" in sections[message.name], f"{message.name}.{field.name}"


def test_every_gate_metric_is_described() -> None:
    assert set(gen_docs.GATE_METRIC_DESCRIPTIONS) == GATE_METRICS


def test_fields_documented_as_required_are_refused_when_left_out() -> None:
    assert check_spec(parse_spec_yaml(BASE), ENGINE) == []
    for key in sorted(gen_docs.REQUIRED):
        message, field = key.split(".")
        path, reach = INSTANCES[message]
        spec = parse_spec_yaml(BASE)
        reach(spec).ClearField(field)
        assert f"{path}{field}" in {v.field for v in check_spec(spec, ENGINE)}, key
