"""Spec validation: every problem with its field path; random specs never crash it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from google.protobuf.descriptor import Descriptor
from google.protobuf.duration_pb2 import Duration
from hypothesis import given
from hypothesis import strategies as st

from callmeter.common.spec_check import ENGINE_CODECS, MAX_GROUP_ENDPOINTS
from callmeter.common.testspec import load_spec_file, parse_spec_yaml
from callmeter.v1 import common_pb2, tests_pb2, workers_pb2
from services.api.handlers.tests import validate_test
from callmeter.common.spec_check import capabilities, check_spec
from tests.api.world import World, valid_spec
from tests.bad_specs import BASE, REFUSED, BadFile, assert_reported
from tests.procs import ROOT

ENGINE = capabilities([])


def fields(spec: tests_pb2.TestSpec) -> dict[str, str]:
    return {v.field: v.description for v in check_spec(spec, ENGINE)}


def resolves(path: str, descriptor: Descriptor = tests_pb2.TestSpec.DESCRIPTOR) -> bool:
    """The path names a real field: each dotted segment down the messages, [index] only on lists."""
    for segment in path.split("."):
        match = re.fullmatch(r"(\w+)(\[\d+\])?", segment)
        field = descriptor.fields_by_name.get(match.group(1)) if match else None
        if field is None or (match.group(2) and not field.is_repeated):  # type: ignore[union-attr]
            return False
        descriptor = field.message_type
        if descriptor is None or descriptor.full_name == "google.protobuf.Duration":
            return segment == path.split(".")[-1]
    return True


def test_a_good_spec_has_no_violations() -> None:
    assert fields(valid_spec()) == {}


def test_every_problem_is_reported_with_its_path() -> None:
    spec = parse_spec_yaml("""
name: ""
groups:
  - {name: a, count: 0, role: callee}
  - {name: a, count: 1, role: caller, codecs: [PCMU, opus], transport: tls, srtp: mandatory, srtp_keying: dtls,
     target: {call_uri: "group:nobody"}, scenario: {call_duration: -1, dtmf: {digits: "12x"}, reject_code: 42}}
  - {name: r, count: 1}
gates:
  - {metric: mos_average, threshold: 4}
  - {metric: loss_pct, comparison: lt, threshold: 1, group: ghosts}
timeout: -5
""")
    found = fields(spec)
    assert set(found) == {
        "name", "groups[0].count", "groups[0].target.aor", "groups[1].name", "groups[1].codecs[1]",
        "groups[1].srtp_keying", "groups[1].target.call_uri", "groups[1].scenario.call_duration",
        "groups[1].scenario.dtmf.digits", "groups[1].scenario.reject_code", "groups[2].role",
        "gates[0].metric", "gates[0].comparison", "gates[1].group", "timeout",
    }
    assert found["groups[1].codecs[1]"].startswith('"opus" is not available on any worker')
    assert '"x"' in found["groups[1].scenario.dtmf.digits"]


def test_codecs_transports_and_keyings_come_from_the_workers() -> None:
    worker = workers_pb2.WorkerCapacity(codecs=["PCMU/8000/1", "speex/16000/1", "opus/48000/2"],
                                        transports=[common_pb2.TRANSPORT_UDP],
                                        srtp_keyings=[common_pb2.SRTP_KEYING_SDES, common_pb2.SRTP_KEYING_DTLS])
    caps = capabilities([worker])
    spec = valid_spec()
    spec.groups[1].codecs[:] = ["opus", "speex", "speex/16000", "PCMA"]
    spec.groups[1].srtp_keying = common_pb2.SRTP_KEYING_DTLS
    spec.groups[0].transport = common_pb2.TRANSPORT_TLS
    assert {v.field for v in check_spec(spec, caps)} == {"groups[1].codecs[3]", "groups[0].transport"}


def test_without_workers_the_engine_codecs_are_assumed() -> None:
    spec = valid_spec()
    spec.groups[1].codecs[:] = [*ENGINE_CODECS, "speex", "ilbc", "speex/16000", "opus"]
    assert set(fields(spec)) == {f"groups[1].codecs[{len(ENGINE_CODECS) + 3}]"}


# Random specs: small alphabets so that names collide and references sometimes resolve.
_text = st.text(alphabet="ab:{}@ ", max_size=4)


def _enum(enum) -> st.SearchStrategy[int]:  # type: ignore[no-untyped-def]
    return st.sampled_from([*enum.values(), 99])


_durations = st.builds(Duration, seconds=st.integers(-3, 10**6), nanos=st.integers(-5, 5))
_targets = st.builds(tests_pb2.SipTarget, registrar=_text, aor=_text, number_start=st.integers(-2, 2),
                     call_uri=st.one_of(_text, st.sampled_from(["group:a", "group:b", "sip:1@x", "sips:{n}@y"])))
_media = st.one_of(st.none(), st.builds(tests_pb2.MediaSource, wav_path=_text),
                   st.builds(tests_pb2.MediaSource,
                             tone=st.builds(tests_pb2.Tone, frequency_hz=st.integers(-5, 30_000))))
_scenarios = st.builds(
    tests_pb2.Scenario, register_expiry=_durations, call_duration=_durations, ring_timeout=_durations,
    reject_code=st.integers(-1, 800), repetitions=st.integers(-2, 3), ramp_rate_cps=st.floats(),
    hold=st.one_of(st.none(), st.builds(tests_pb2.HoldStep, after=_durations, duration=_durations)),
    dtmf=st.one_of(st.none(), st.builds(tests_pb2.DtmfStep, after=_durations, method=_enum(common_pb2.DtmfMethod),
                                        digits=st.text(alphabet="019*#ADax ", max_size=4))))
_groups = st.builds(
    tests_pb2.EndpointGroup, name=st.sampled_from(["a", "b", "", " "]), count=st.integers(-1, MAX_GROUP_ENDPOINTS + 1),
    role=_enum(common_pb2.EndpointRole), target=_targets, transport=_enum(common_pb2.Transport),
    codecs=st.lists(st.sampled_from(["PCMU", "opus", "", "speex", "g722", "speex/16000"]), max_size=3),
    media=_media, srtp=_enum(common_pb2.SrtpMode), srtp_keying=_enum(common_pb2.SrtpKeying), scenario=_scenarios)
_gates = st.builds(tests_pb2.QualityGate, metric=st.sampled_from(["mos_avg", "loss_pct", "mos", ""]),
                   comparison=_enum(tests_pb2.Comparison), threshold=st.floats(), group=st.sampled_from(["", "a", "z"]))
_specs = st.builds(tests_pb2.TestSpec, name=_text, groups=st.lists(_groups, max_size=4),
                   gates=st.lists(_gates, max_size=3), timeout=_durations,
                   worker_selector=st.lists(st.builds(common_pb2.Label, key=_text, value=_text), max_size=2))


@given(_specs)
def test_random_specs_never_crash_and_every_violation_names_a_real_field(spec: tests_pb2.TestSpec) -> None:
    violations = check_spec(spec, ENGINE)
    for v in violations:
        assert v.field and v.description
        assert resolves(v.field), v.field
    # Problems the generator can plant must each be reported where they are.
    found = {v.field for v in violations}
    for i, group in enumerate(spec.groups):
        if not 1 <= group.count <= MAX_GROUP_ENDPOINTS:
            assert f"groups[{i}].count" in found
        if group.role not in (common_pb2.ENDPOINT_ROLE_CALLER, common_pb2.ENDPOINT_ROLE_CALLEE,
                              common_pb2.ENDPOINT_ROLE_REGISTRAR_ONLY):
            assert f"groups[{i}].role" in found
        for j, codec in enumerate(group.codecs):
            if codec in ("opus", ""):
                assert f"groups[{i}].codecs[{j}]" in found
    for i, gate in enumerate(spec.gates):
        if gate.metric in ("mos", ""):
            assert f"gates[{i}].metric" in found
    if not spec.groups or not spec.name.strip():
        assert violations


@given(st.lists(st.tuples(st.integers(1, 50), st.sampled_from(["PCMU", "PCMA", "G722", "speex"])),
                min_size=1, max_size=4))
def test_generated_valid_specs_pass(groups: list[tuple[int, str]]) -> None:
    spec = tests_pb2.TestSpec(name="ok", timeout=Duration(seconds=30))
    for i, (count, codec) in enumerate(groups):
        spec.groups.add(name=f"callees{i}", count=count, role=common_pb2.ENDPOINT_ROLE_CALLEE, codecs=[codec],
                        target=tests_pb2.SipTarget(aor="sip:{n}@127.0.0.1:5070"))
        spec.groups.add(name=f"callers{i}", count=count, role=common_pb2.ENDPOINT_ROLE_CALLER, codecs=[codec],
                        target=tests_pb2.SipTarget(call_uri=f"group:callees{i}"))
    assert check_spec(spec, ENGINE) == []


def test_sizes_beyond_the_limits_are_refused_with_their_field() -> None:
    """Seen: a 10 MB description was stored."""
    spec = valid_spec()
    spec.description = "x" * (64 * 1024 + 1)
    spec.groups[0].target.aor = "sip:" + "a" * 3000 + "@127.0.0.1"
    found = fields(spec)
    assert found["description"] == "must be at most 65536 characters (got 65537)"
    assert found["groups[0].target.aor"] == "must be at most 2048 characters (got 3014)"
    assert all(resolves(path) for path in found)
    many = valid_spec()
    for i in range(101 - len(many.groups)):
        many.groups.append(tests_pb2.EndpointGroup(name=f"extra{i}", count=1, role=common_pb2.ENDPOINT_ROLE_REGISTRAR_ONLY,
                                                   target=tests_pb2.SipTarget(registrar="sip:127.0.0.1")))
    assert fields(many)["groups"] == "at most 100 groups (got 101)"


GOOD_FILES = sorted((ROOT / "examples").glob("*.yaml"))
VIEWER = ("viewer", "project")


def api_violations(world: World, path: Path) -> list[common_pb2.FieldViolation]:
    """ValidateTest's answer for the file, as the API handler gives it (the project's workers)."""
    request = tests_pb2.ValidateTestRequest(spec=load_spec_file(path))
    return list(world.call(VIEWER, validate_test, request).violations)


@pytest.mark.parametrize("bad", REFUSED, ids=lambda bad: bad.id)
def test_each_bad_file_is_refused_by_the_api_naming_its_field(bad: BadFile, world: World, tmp_path: Path) -> None:
    """The same table as `callmeter test validate` (tests/unit/test_testspec.py) and `worker
    --local` (tests/worker/test_local.py)."""
    [problem] = api_violations(world, bad.write(tmp_path))
    assert_reported(bad, problem.field, problem.description)


@pytest.mark.parametrize("good", GOOD_FILES, ids=lambda path: path.name)
def test_the_examples_are_valid_for_the_api(good: Path, world: World) -> None:
    assert api_violations(world, good) == []


def test_the_table_s_base_file_is_valid_for_the_api(world: World, tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(BASE))
    assert api_violations(world, base) == []
