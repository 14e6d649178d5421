"""YAML test files map 1:1 onto TestSpec, with every problem reported by field path."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_round_trip_through_yaml() -> None:
    spec = tests_pb2.TestSpec(name="t", groups=[tests_pb2.EndpointGroup(name="a", count=3, codecs=["PCMA", "PCMU"])])
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
