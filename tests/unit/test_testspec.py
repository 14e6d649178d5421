"""YAML test files map 1:1 onto TestSpec, with every problem reported by field path."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from google.protobuf.descriptor import Descriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from callmeter.cli.main import main
from callmeter.common.testspec import SpecError, load_spec_file, parse_spec_yaml, spec_to_yaml
from callmeter.v1 import common_pb2, tests_pb2
from tests.bad_specs import BAD_FILES, BASE, BadFile, assert_one_line, problem_lines
from tests.procs import ROOT, run_callmeter


def test_short_enums_and_numeric_durations() -> None:
    spec = parse_spec_yaml("""
name: t
groups:
  - {name: a, count: 2, role: caller, transport: TLS, srtp: mandatory, srtp_keying: sdes,
     scenario: {call_duration: 20, ring_timeout: 1.5s, dtmf: {digits: "12#", method: sip_info}}}
""")
    group = spec.groups[0]
    assert group.role == common_pb2.ENDPOINT_ROLE_CALLER
    assert group.transport == common_pb2.TRANSPORT_TLS
    assert group.srtp == common_pb2.SRTP_MODE_MANDATORY
    assert group.scenario.call_duration.seconds == 20
    assert group.scenario.ring_timeout.ToMilliseconds() == 1500
    assert group.scenario.dtmf.method == common_pb2.DTMF_METHOD_SIP_INFO


def test_off_is_an_enum_word_though_yaml_reads_it_as_false() -> None:
    spec = parse_spec_yaml("name: t\ngroups: [{name: a, srtp: off}, {name: b, srtp: no}]\n")
    assert spec.groups[0].srtp == common_pb2.SRTP_MODE_OFF
    with pytest.raises(SpecError) as error:
        parse_spec_yaml("name: t\ngroups: [{name: a, transport: off}]\n")
    assert [v.field for v in error.value.violations] == ["groups[0].transport"]


def test_every_problem_is_reported_with_its_path() -> None:
    with pytest.raises(SpecError) as error:
        parse_spec_yaml("name: t\ngroups:\n  - {name: a, transport: sctp}\n  - {name: b, colour: red}\n")
    fields = [v.field for v in error.value.violations]
    assert fields == ["groups[0].transport", "groups[1].colour"]
    assert "udp, tcp, tls" in error.value.violations[0].description


@pytest.mark.parametrize("text", ["[1, 2]", "name: [unclosed", "groups: 3"])
def test_malformed_files_are_refused(text: str) -> None:
    with pytest.raises(SpecError):
        parse_spec_yaml(text)


DURATION = "google.protobuf.Duration"
# Every field of a test file set (both members of MediaSource's oneof, in two groups), some to
# what a writer may get wrong: a word YAML reads as false (srtp off), a fraction of a second, an
# int64 (which protobuf JSON writes as text), a message set but empty, text YAML would read as a
# number or a boolean.
FULL = tests_pb2.TestSpec(
    name="full", description="two lines:\nyes, really", timeout=Duration(seconds=90), baseline="last-pass",
    worker_selector=[common_pb2.Label(key="region", value="eu")],
    gates=[tests_pb2.QualityGate(metric="mos_avg", comparison=tests_pb2.COMPARISON_GE, threshold=4.2, group="a"),
           tests_pb2.QualityGate(metric="calls_failed_pct", comparison=tests_pb2.COMPARISON_EQ),
           tests_pb2.QualityGate(metric="mos_avg", baseline=tests_pb2.BaselineLimit(max_drop=0.1)),
           tests_pb2.QualityGate(metric="mos_min", group="a", baseline=tests_pb2.BaselineLimit(max_drop_pct=5)),
           tests_pb2.QualityGate(metric="setup_ms_p95", baseline=tests_pb2.BaselineLimit(max_rise_pct=20)),
           tests_pb2.QualityGate(metric="loss_pct", baseline=tests_pb2.BaselineLimit(max_rise=0))],
    groups=[
        tests_pb2.EndpointGroup(
            name="a", count=3, role=common_pb2.ENDPOINT_ROLE_CALLER, transport=common_pb2.TRANSPORT_TLS,
            credential_ref="pbx", codecs=["PCMA", "PCMU"], srtp=common_pb2.SRTP_MODE_OFF,
            srtp_keying=common_pb2.SRTP_KEYING_SDES, media=tests_pb2.MediaSource(tone=tests_pb2.Tone(frequency_hz=440)),
            worker_selector=[common_pb2.Label(key="site", value="1")],
            target=tests_pb2.SipTarget(registrar="pbx.example.com:5061", proxy="sbc.example.com", aor="sip:{n}@pbx",
                                       call_uri="group:b", number_start=2**40, auth_user="u{n}"),
            scenario=tests_pb2.Scenario(
                register_expiry=Duration(seconds=120), reregister_interval=Duration(seconds=60), unregister_at_end=True,
                answer_delay=Duration(nanos=500_000_000), reject_code=486, call_duration=Duration(seconds=20),
                ring_timeout=Duration(seconds=1, nanos=250_000_000), repetitions=2,
                pause_between_calls=Duration(nanos=1000), ramp_rate_cps=0.5,
                hold=tests_pb2.HoldStep(after=Duration(seconds=2), duration=Duration(seconds=3)),
                dtmf=tests_pb2.DtmfStep(after=Duration(seconds=1), digits="12#", method=common_pb2.DTMF_METHOD_SIP_INFO))),
        tests_pb2.EndpointGroup(name="b", count=1, role=common_pb2.ENDPOINT_ROLE_CALLEE, scenario=tests_pb2.Scenario(),
                                media=tests_pb2.MediaSource(wav_path="/media/tone.wav"),
                                target=tests_pb2.SipTarget(aor="sip:b@127.0.0.1:5070")),
    ])


def fields_set(message: Message) -> set[str]:
    """The full names of the fields set in the message and in the messages in it."""
    found = set()
    for field, value in message.ListFields():
        found.add(field.full_name)
        if field.message_type is not None and field.message_type.full_name != DURATION:
            for item in value if field.is_repeated else [value]:
                found |= fields_set(item)
    return found


def every_field(descriptor: Descriptor) -> set[str]:
    """The full names of the fields of the message and of the messages it holds (Duration's aside)."""
    found = set()
    for field in descriptor.fields:
        found.add(field.full_name)
        if field.message_type is not None and field.message_type.full_name != DURATION:
            found |= every_field(field.message_type)
    return found


def test_the_full_spec_sets_every_field() -> None:
    """So that the round trip below covers a field added to the contract."""
    assert every_field(tests_pb2.TestSpec.DESCRIPTOR) - fields_set(FULL) == set()


def test_a_spec_written_as_yaml_reads_back_the_same() -> None:
    text = spec_to_yaml(FULL)
    assert parse_spec_yaml(text) == FULL
    data = yaml.safe_load(text)
    caller = data["groups"][0]
    assert (caller["role"], caller["transport"], caller["srtp"]) == ("caller", "tls", "off"), "enum words"
    assert caller["scenario"]["ring_timeout"] == "1.25s" and caller["scenario"]["answer_delay"] == "0.5s"
    assert caller["scenario"]["pause_between_calls"] == "0.000001s" and data["timeout"] == "90s"
    assert caller["target"]["number_start"] == 2**40, "an integer, not text"
    assert data["groups"][1]["scenario"] == {}, "set though empty"
    assert list(data) == ["name", "description", "groups", "gates", "worker_selector", "timeout",
                          "baseline"], "the proto's order"
    assert "codecs: [PCMA, PCMU]" in text


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_each_example_round_trips(example: Path) -> None:
    spec = load_spec_file(example)
    assert parse_spec_yaml(spec_to_yaml(spec)) == spec


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid(example: Path) -> None:
    result = run_callmeter("test", "validate", str(example))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_validate_command_reports_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\ngroups: [{name: a, role: dancer}]\n")
    result = run_callmeter("test", "validate", str(bad))
    assert result.returncode == 2
    assert "groups[0].role: 'dancer' is not one of" in result.stderr


@pytest.fixture
def no_platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`validate` in-process with no platform configured: no profile, no CALLMETER_API."""
    monkeypatch.setenv("CALLMETER_PROFILE", str(tmp_path / "no-profile.json"))
    for name in ("CALLMETER_API", "CALLMETER_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("bad", BAD_FILES, ids=lambda bad: bad.id)
def test_validate_refuses_each_bad_file_on_one_line_naming_its_field(
        bad: BadFile, tmp_path: Path, no_platform: None, capsys: pytest.CaptureFixture[str]) -> None:
    """Seen: `validate` said "valid" for 16 of 35 bad files. The same table as the API's
    (tests/api/test_validation.py) and `worker --local`'s (tests/worker/test_local.py)."""
    file = bad.write(tmp_path)
    assert main(["test", "validate", str(file)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert problem_lines(err, file) == err.splitlines(), "nothing but the problem lines"
    assert_one_line(bad, file, problem_lines(err, file))


SITE_A, SITE_B = {"key": "site", "value": "a"}, {"key": "site", "value": "b"}


@pytest.mark.parametrize("test_labels, group_labels, problem", [
    ([], [{"value": "a"}], "groups[1].worker_selector[0].key: required"),
    ([], [SITE_A, SITE_B], 'groups[1].worker_selector[1].value: "b" conflicts with site="a" asked before: '
                           "no worker has both"),
    ([SITE_B], [SITE_A], 'groups[1].worker_selector[0].value: "a" conflicts with site="b" asked before: '
                         "no worker has both"),
], ids=["without-key", "two-values", "against-the-test-s"])
def test_a_group_s_selector_is_checked_as_the_test_s(test_labels: list[dict[str, str]], group_labels: list[dict[str, str]],
                                                      problem: str, tmp_path: Path, no_platform: None,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    data = {**BASE, "worker_selector": test_labels}
    data["groups"] = [BASE["groups"][0], {**BASE["groups"][1], "worker_selector": group_labels}]
    file = tmp_path / "sites.yaml"
    file.write_text(yaml.safe_dump(data))
    assert main(["tests", "validate", str(file)]) == 2
    assert capsys.readouterr().err == f"{file}: {problem}\n"


def test_validate_without_a_platform_says_what_it_checked_against(
        tmp_path: Path, no_platform: None, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(BASE))
    assert main(["test", "validate", str(base)]) == 0
    assert capsys.readouterr().out == (f"{base}: valid: test 'table', 2 groups, 4 endpoints "
                                       "(checked against callmeter's own SIP engine; no platform configured)\n")


@pytest.mark.parametrize("content, problem", [
    (b"\xff\xfe\x00\x01binary", "not UTF-8 text: byte 0xff at line 1 (a test file is YAML in UTF-8)"),
    (b"name: t\ndescription: caf\xe9\n", "not UTF-8 text: byte 0xe9 at line 2 (a test file is YAML in UTF-8)"),
    (b"name: t\x00\n", "not valid YAML at line 1: special characters are not allowed (#x0000)"),
])
def test_a_binary_or_non_utf8_file_is_one_line_naming_it(content: bytes, problem: str, tmp_path: Path) -> None:
    """Seen: a Python traceback (UnicodeDecodeError)."""
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    result = run_callmeter("test", "validate", str(bad))
    assert result.returncode == 2 and result.stderr == f"{bad}: {problem}\n", result.stderr


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=400),
                 st.text(max_size=300).map(str.encode),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                              lambda children: st.lists(children, max_size=4)
                              | st.dictionaries(st.sampled_from(["name", "groups", "count", "role", "target", "gates",
                                                                 "scenario", "timeout", "codecs", "x"]) | st.text(max_size=8),
                                                children, max_size=5),
                              max_leaves=20).map(lambda data: yaml.safe_dump(data).encode())))
def test_any_bytes_give_a_spec_or_a_spec_error_never_a_crash(content: bytes) -> None:
    """The file reader on arbitrary bytes, text and YAML-shaped data: a TestSpec, or SpecError with
    one-line problems; no other exception."""
    with tempfile.NamedTemporaryFile(suffix=".yaml") as file:
        file.write(content)
        file.flush()
        try:
            load_spec_file(Path(file.name))
        except SpecError as error:
            assert error.violations and all("\n" not in v.description for v in error.violations), error.violations
