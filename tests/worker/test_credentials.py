"""Worker credentials with a password per extension: a {n} pattern or a table (inline or CSV),
resolved on the worker into what each engine's phones send (no pjsua2 involved)."""

from __future__ import annotations

from pathlib import Path

import pytest

from callmeter.common.errors import ConfigError
from callmeter.v1 import common_pb2, engine_pb2, tests_pb2
from services.worker import credentials
from services.worker.engine.plan import Limits, plan_start

LIMITS = Limits(max_accounts=8, max_calls=4)
SECRET = "Zq9-never-shown"


def phones(secrets_yaml: str, tmp_path: Path, count: int = 3, number_start: int = 101,
           auth_user: str = "") -> tuple[list[tuple[str, str, str]], list[tuple[int, str]]]:
    """(username, password, realm) of each planned phone of group "phones" (credential "pbx"),
    and (endpoint, reason) of each phone refused, through the secrets file as a worker reads it."""
    path = tmp_path / "secrets.yaml"
    path.write_text(secrets_yaml)
    found, missing = credentials.resolve({"pbx"}, credentials.load_secrets_file(path))
    assert missing == []
    spec = tests_pb2.TestSpec(name="t")
    group = spec.groups.add(name="phones", count=count, role=common_pb2.ENDPOINT_ROLE_REGISTRAR_ONLY,
                            credential_ref="pbx")
    group.target.registrar = "pbx.example.com"
    group.target.number_start = number_start
    group.target.auth_user = auth_user
    start = engine_pb2.EngineStart(run_id="r", spec=spec, credentials=found)
    start.slices.add(group="phones", first_index=0, count=count)
    plan = plan_start(start, ["PCMU/8000/1"], LIMITS, "127.0.0.1")
    auths = [(p.auth.username, p.auth.password, p.auth.realm) for p in plan.phones]
    return auths, [(e.endpoint, e.reason) for e in plan.errors]


def test_a_password_pattern_gives_each_phone_its_number(tmp_path: Path) -> None:
    auths, errors = phones('pbx: {password: "pw-{n}-x", realm: pbx.example.com}\n', tmp_path)
    assert errors == []
    assert auths == [(str(n), f"pw-{n}-x", "pbx.example.com") for n in (101, 102, 103)]  # user: the AOR's


def test_a_username_pattern_and_the_specs_auth_user(tmp_path: Path) -> None:
    secrets_yaml = 'pbx: {username: "ext{n}", password: "pw{n}"}\n'
    assert phones(secrets_yaml, tmp_path, count=1)[0] == [("ext101", "pw101", "*")]
    assert phones(secrets_yaml, tmp_path, count=1, auth_user="u{n}")[0] == [("u101", "pw101", "*")]


@pytest.mark.parametrize("form", ["inline", "csv"])
def test_a_table_gives_each_number_its_password_and_username(tmp_path: Path, form: str) -> None:
    if form == "inline":
        secrets_yaml = """pbx:
  realm: pbx.example.com
  passwords:
    101: first
    "102": {username: alice, password: "0123"}
    103: third
"""
    else:
        (tmp_path / "pbx.csv").write_text("number,password,username\n101,first,\n102,0123,alice\n\n103,third,\n")
        secrets_yaml = "pbx: {realm: pbx.example.com, passwords_file: pbx.csv}\n"  # beside the secrets file
    auths, errors = phones(secrets_yaml, tmp_path)
    assert errors == []
    assert auths == [("101", "first", "pbx.example.com"), ("alice", "0123", "pbx.example.com"),
                     ("103", "third", "pbx.example.com")]


def test_a_number_missing_from_the_table_fails_that_phone_alone(tmp_path: Path) -> None:
    auths, errors = phones("pbx: {passwords: {101: first, 103: third}}\n", tmp_path)
    assert auths == [("101", "first", "*"), ("103", "third", "*")]
    assert errors == [(1, "credential 'pbx' of group 'phones' has no password for number 102 on this worker")]


def test_a_pattern_covers_the_numbers_the_table_lacks(tmp_path: Path) -> None:
    auths, errors = phones('pbx: {password: "pw{n}", passwords: {102: special}}\n', tmp_path)
    assert errors == []
    assert [password for _, password, _ in auths] == ["pw101", "special", "pw103"]


def test_a_pattern_from_the_environment_needs_no_username(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLMETER_CREDENTIAL_PBX_MAIN_PASSWORD", "pw{n}")
    found, missing = credentials.resolve({"pbx-main", "other"}, {})
    assert (found["pbx-main"].username, found["pbx-main"].password, missing) == ("", "pw{n}", ["other"])


def test_a_name_with_a_hash_is_never_resolved(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """"#" separates a table's numbers in what the engines get: "pbx#101" must not stand for one."""
    monkeypatch.setenv("CALLMETER_CREDENTIAL_PBX_101_PASSWORD", "other")
    path = tmp_path / "secrets.yaml"
    path.write_text("pbx: {passwords: {101: first}}\n")
    found, missing = credentials.resolve({"pbx", "pbx#101"}, credentials.load_secrets_file(path))
    assert (found["pbx#101"].password, missing) == ("first", ["pbx#101"])


def bad_csv(tmp_path: Path, data: str | bytes) -> str:
    (tmp_path / "pbx.csv").write_bytes(data if isinstance(data, bytes) else data.encode())
    return "pbx: {passwords_file: pbx.csv}\n"


BAD_FILES = {
    "a hash in a name": (lambda p: f"'pbx#2': {{password: {SECRET}}}\n", "credential 'pbx#2'", "'#'"),
    "an unknown key": (lambda p: f"pbx: {{pasword: {SECRET}}}\n", "credential 'pbx'", "unknown key 'pasword'"),
    "no password at all": (lambda p: "pbx: {username: u}\n", "credential 'pbx'", "needs a password"),
    "both tables": (lambda p: f"pbx: {{passwords: {{1: {SECRET}}}, passwords_file: x.csv}}\n", "credential 'pbx'",
                    "not both"),
    "a table that is a list": (lambda p: f"pbx: {{passwords: [{SECRET}]}}\n", "credential 'pbx'",
                               "passwords must map"),
    "a key that is no number": (lambda p: f"pbx: {{passwords: {{{SECRET}: x}}}}\n", "credential 'pbx'",
                                "not a whole number"),
    "an unquoted number": (lambda p: "pbx: {passwords: {101: 0123}}\n", "number 101", "quote it"),
    "an unquoted number as the pattern": (lambda p: "pbx: {password: 0123}\n", "credential 'pbx'", "quote it"),
    "an empty password": (lambda p: "pbx: {passwords: {101: ''}}\n", "number 101", "empty"),
    "a number twice": (lambda p: f"pbx: {{passwords: {{101: {SECRET}, '101': {SECRET}}}}}\n", "number 101",
                       "twice"),
    "a missing CSV": (lambda p: "pbx: {passwords_file: nowhere.csv}\n", "nowhere.csv", "cannot read"),
    "a CSV without its header": (lambda p: bad_csv(p, f"101,{SECRET}\n"), "pbx.csv", "number,password"),
    "a CSV with an unknown column": (lambda p: bad_csv(p, f"number,password,name\n101,{SECRET},x\n"), "pbx.csv",
                                     "number,password"),
    "a CSV row short of a column": (lambda p: bad_csv(p, f"number,password\n101,{SECRET}\n102\n"), "line 3",
                                    "2 columns"),
    "a CSV number that is not one": (lambda p: bad_csv(p, f"number,password\n{SECRET},x\n"), "line 2",
                                  "not a whole number"),
    "a CSV number twice": (lambda p: bad_csv(p, f"number,password\n7,{SECRET}\n7,{SECRET}\n"), "line 3", "twice"),
    "a CSV empty password": (lambda p: bad_csv(p, "number,password\n7,\n"), "line 2", "empty"),
    "an empty CSV": (lambda p: bad_csv(p, "number,password\n"), "pbx.csv", "no numbers"),
    "a CSV that is not text": (lambda p: bad_csv(p, b"number,password\n7,\xff\n"), "pbx.csv", "cannot read"),
    "too many numbers": (lambda p: bad_csv(p, "number,password\n" + "".join(
        f"{n},{SECRET}\n" for n in range(credentials.MAX_TABLE_NUMBERS + 1))), "at most 100,000", "numbers"),
    "YAML that does not parse": (lambda p: f'pbx: {{password: "{SECRET}\n', "not YAML", "line"),
    "not a mapping": (lambda p: f"- {SECRET}\n", "secrets.yaml", "must map"),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_a_bad_secrets_file_is_one_line_naming_the_problem_never_the_secret(tmp_path: Path, case: str) -> None:
    make, *words = BAD_FILES[case]
    path = tmp_path / "secrets.yaml"
    path.write_text(make(tmp_path))
    with pytest.raises(ConfigError) as raised:
        credentials.load_secrets_file(path)
    message = raised.value.detail
    assert message.startswith("CALLMETER_SECRETS_FILE: ") and "\n" not in message, message
    assert all(word in message for word in words), message
    assert SECRET not in message and "0123" not in message, message
