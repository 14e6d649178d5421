"""The `callmeter` CLI on arbitrary arguments, environment and files: it exits 0, 1 or 2 and says
what went wrong in at most one error line, never with a traceback (issue item 14).

In-process through `main(argv)` for the fuzzing, with stdout strict UTF-8 (as on an en_US.UTF-8
terminal), Python's stderr, and file descriptor 2 captured too (where gRPC's core logs); as a
subprocess for a closed stdout, bytes on a real command line and Ctrl-C. Nothing reaches a live
API: every address is a closed loopback port, a socket that never answers, or one the CLI must
refuse; what would start the platform, a service or a local run is not run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from callmeter.cli.main import SERVICES, build_parser, main
from callmeter.common.testspec import SpecError, load_spec_file
from callmeter.common.tls import ensure_dev_pki
from tests.procs import ROOT, callmeter_command

EXAMPLE = ROOT / "examples" / "selfcall.yaml"
# "callmeter: error: …", or argparse's "callmeter runs list: error: …".
ERROR_LINE = re.compile(r"^callmeter( [\w-]+)*: error: ")
# What must never reach the user: a traceback, Python's last-ditch messages, gRPC core's log lines.
NOT_FOR_THE_USER = re.compile(r"Traceback|Exception ignored|^[EWIF]\d{4} \d\d:\d\d:\d\d|absl::|\w+Warning: ", re.M)
TOO_LONG = "a" * 300  # a file name longer than any file system takes (ENAMETOOLONG)
FAKE_PEM = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"


# A loopback port bound and never listened on: a connection is refused at once, and no other
# process can take the port while these tests run.
_closed = socket.socket()
_closed.bind(("127.0.0.1", 0))
CLOSED = f"127.0.0.1:{_closed.getsockname()[1]}"


def commands(parser: argparse.ArgumentParser,
             path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command of the real parser with its parser: the top level, `runs`, `runs list`, …"""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


COMMANDS = list(commands(build_parser()))
# The commands that can do something here, fast: the others are argparse's alone, or start a service.
DOING = [(path, parser) for path, parser in COMMANDS
         if parser.get_default("handler") and path[0] not in ("up", "api", "orchestrator", "gateway", "metrics")]


def without_nul(data: bytes) -> bytes:
    return data.replace(b"\0", b"")  # a process's arguments and environment cannot hold NUL


# Bytes that are not UTF-8 reach Python's argv and environment as surrogates (surrogateescape).
raw_text = st.binary(max_size=12).map(lambda data: os.fsdecode(without_nul(data)))
plain_text = st.text(max_size=12).map(lambda text: text.replace("\0", ""))
numbers = st.one_of(st.integers(min_value=-10**30, max_value=10**30).map(str), st.floats().map(str),
                    st.sampled_from(["0", "-0", "-1", "1e308", "nan", "inf", "-inf", "", " 5 ", "1_0", "0x10",
                                     "2147483648", "9" * 5000]))
# Addresses that refuse a connection at once, or that the CLI must refuse (never a name to look up).
api_values = st.sampled_from([CLOSED, "unix:/nonexistent/api.sock",
                              " ", "a b:1", "\udcff:1", "caf\u00e9:1", "x\x01:1", "\n"])
junk = st.one_of(raw_text, plain_text, st.sampled_from(["--nope", "-x", "--", "-", "--api", "--limit=-1"]))


def mostly(usual: st.SearchStrategy, unusual: st.SearchStrategy) -> st.SearchStrategy:  # type: ignore[type-arg]
    """``usual`` three times in four, so that most examples get past the first check (and
    shrinking, which goes to 0, ends on the usual)."""
    return st.integers(0, 3).flatmap(lambda n: unusual if n == 3 else usual)


words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=8)


def path_values(work: Path) -> st.SearchStrategy[str]:
    """Mostly valid test files (one named in bytes that are not UTF-8) and a report that can be
    written; else missing, in a missing directory, a directory, random bytes, too long, odd."""
    usual = [work / "valid.yaml", work / os.fsdecode(b"caf\xe9.yaml"), work / "report.xml"]
    unusual = [work / "missing.yaml", work / "missing" / "report.xml", work / "random.bin",
               work / os.fsdecode(b"\xff") / "nope.yaml", work / "locked" / "report.xml", work]
    return mostly(st.sampled_from([str(path) for path in usual]),
                  st.sampled_from([str(path) for path in unusual] + ["", "/", "/dev/null", TOO_LONG, "-"]))


def value_for(action: argparse.Action, paths: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    if action.dest == "api":
        return mostly(st.just(CLOSED), api_values | raw_text)
    if action.dest in ("limit", "timeout", "duration"):
        return mostly(st.integers(1, 100).map(str), numbers)
    if action.type is Path:
        return mostly(paths, raw_text)
    if action.choices:
        return mostly(st.sampled_from(sorted(action.choices)), plain_text)
    return mostly(words, st.one_of(plain_text, raw_text, numbers))


@st.composite
def argvs(draw: st.DrawFn, paths: st.SearchStrategy[str]) -> list[str]:
    """A real command, its positionals and options (real names; values of the kind each takes, or
    not; now and then a value missing), and now and then a stray token."""
    path, parser = draw(mostly(st.sampled_from(DOING), st.sampled_from(COMMANDS)))
    argv = list(path)
    actions = [action for action in parser._actions
               if not isinstance(action, (argparse._SubParsersAction, argparse._HelpAction))]
    for action in actions:
        if not action.option_strings and draw(st.integers(0, 19)) < 19:  # a positional, mostly given
            argv.append(draw(value_for(action, paths)))
    options = [action for action in actions if action.option_strings]
    for action in draw(st.lists(st.sampled_from(options), max_size=4)) if options else []:
        argv.append(draw(st.sampled_from(action.option_strings)))
        if action.nargs != 0 and draw(st.integers(0, 19)) < 19:
            argv.append(draw(value_for(action, paths)))
    if draw(st.integers(0, 7)) == 7:
        argv.append(draw(junk))
    return argv


def parsed(argv: list[str]) -> argparse.Namespace | None:
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            return build_parser().parse_args(argv)
    except SystemExit:
        return None


def starts_something_long(args: argparse.Namespace) -> bool:
    """Whether this would start the platform, a service or a real local run (not in a unit test)."""
    if args.command == "up":
        return True
    if args.command == "demo":
        return os.path.isfile(args.file)
    if args.command in SERVICES:
        if getattr(args, "local", None) is None:  # only `worker` has --local, --duration, --summary-only
            return getattr(args, "duration", None) is None and not getattr(args, "summary_only", False)
        try:
            load_spec_file(args.local)
        except (SpecError, OSError, ValueError):
            return False
        return True
    return False


@st.composite
def profiles(draw: st.DrawFn, work: Path) -> bytes | str | None:
    """A CLI profile: its bytes, None for no file, or a path where there cannot be one. None, a
    good one, a good one with a field of any kind added or replaced (most often), JSON of another
    shape, random bytes, JSON nested too deep, a directory, a name too long."""
    good = {"api": CLOSED, "token": "t0k3n"}
    value = st.one_of(st.none(), st.integers(), st.booleans(), plain_text, raw_text, api_values,
                      st.lists(st.integers(), max_size=2),
                      st.sampled_from([str(work / "missing.pem"), str(work / "fake.pem"), "a\u0000b"]))
    kind = draw(st.sampled_from(["none", "good", "field", "field", "field", "shape", "bytes", "deep", "place"]))
    if kind in ("none", "good"):
        return None if kind == "none" else json.dumps(good).encode()
    if kind == "field":
        field = draw(st.sampled_from(["api", "token", "ca_file", "other"]))
        return json.dumps({**good, field: draw(value)}).encode()
    if kind == "shape":
        return json.dumps(draw(st.dictionaries(st.sampled_from(["api", "token", "ca_file"]), value) | value)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    return b"[" * 100_000 if kind == "deep" else draw(st.sampled_from(["directory", TOO_LONG]))


def environments(work: Path) -> st.SearchStrategy[dict[str, str | None]]:
    """CALLMETER_* as a user might leave them: unset, fine, empty, or not usable."""
    return st.fixed_dictionaries({
        "CALLMETER_API": mostly(st.sampled_from([CLOSED, None]), api_values | raw_text),
        "CALLMETER_TOKEN": mostly(st.just("t0k3n"),
                                  st.sampled_from([None, "", "caf\u00e9", "a\tb", "\x7f"]) | raw_text),
        "CALLMETER_API_CA_FILE": mostly(st.sampled_from([None, str(work / "tls" / "ca.pem")]), st.sampled_from(
            ["", str(work / "missing.pem"), str(work), str(work / "random.bin"), str(work / "fake.pem"), TOO_LONG])),
    })


@contextmanager
def environment(values: dict[str, str | None]) -> Iterator[None]:
    saved = dict(os.environ)
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_in_process(argv: list[str]) -> tuple[int, str]:
    """main(argv): its exit code, and what Python's stderr and file descriptor 2 got. stdout is
    strict UTF-8, as on an en_US.UTF-8 terminal. An exception other than argparse's SystemExit
    escapes, to fail the test."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace")
    with tempfile.TemporaryFile() as native, redirect_stdout(out), redirect_stderr(err):
        fd2 = os.dup(2)
        os.dup2(native.fileno(), 2)
        try:
            code = main(argv)
        except SystemExit as stopped:  # argparse: usage and error, or --help / --version
            code = stopped.code if isinstance(stopped.code, int) else 2
        finally:
            os.dup2(fd2, 2)
            os.close(fd2)
        out.flush()
        err.flush()
        native.seek(0)
        said = err.buffer.getvalue().decode()  # type: ignore[attr-defined]
        return code, said + native.read().decode(errors="replace")


def assert_one_error_line_at_most(argv: object, code: int, err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code in (0, 1, 2), (argv, code, err)
    assert not NOT_FOR_THE_USER.search(err), (argv, err)
    assert len([line for line in lines if ERROR_LINE.match(line)]) <= 1, (argv, err)
    assert code != 2 or lines, (argv, "exit 2 without saying why")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Files the arguments and environment point at: valid test files, a CA and a fake one, a dir
    where a profile should be, a directory not writable (to all but root)."""
    work = tmp_path_factory.mktemp("cli-fuzz")
    shutil.copy(EXAMPLE, work / "valid.yaml")
    shutil.copy(EXAMPLE, work / os.fsdecode(b"caf\xe9.yaml"))
    (work / "fake.pem").write_bytes(FAKE_PEM)
    ensure_dev_pki(work / "tls")
    (work / "locked").mkdir(mode=0o500)
    (work / "profile-dir").mkdir()
    return work


FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(data=st.data())
def test_any_arguments_end_in_an_exit_code_and_one_line_at_most(work: Path, data: st.DataObject) -> None:
    """Arguments of every kind, the files they name of every kind; the environment usable."""
    argv = data.draw(argvs(path_values(work)), label="argv")
    args = parsed(argv)
    assume(args is None or not starts_something_long(args))
    (work / "random.bin").write_bytes(data.draw(st.binary(max_size=300), label="random.bin"))
    env = {"CALLMETER_API": data.draw(st.sampled_from([CLOSED, None]), label="CALLMETER_API"),
           "CALLMETER_TOKEN": "t", "CALLMETER_API_CA_FILE": None, "CALLMETER_PROFILE": str(work / "no-profile.json"),
           "CALLMETER_DATABASE_URL": None}  # `bootstrap` must not find a database of the developer's
    with environment(env):
        code, err = run_in_process(argv)
    assert_one_error_line_at_most(argv, code, err)


def usual_commands(work: Path) -> list[list[str]]:
    valid, report = str(work / "valid.yaml"), str(work / "report.xml")
    return [["runs", "list"], ["runs", "list", "--api", CLOSED], ["runs", "show", "r1"], ["runs", "cancel", "r1"],
            ["workers", "list"], ["test", "validate", valid], ["test", "apply", valid], ["run", valid],
            ["run", valid, "--wait", "--junit", report]]


@FUZZ
@given(data=st.data())
def test_any_environment_and_profile_end_in_an_exit_code_and_one_line_at_most(work: Path, data: st.DataObject) -> None:
    """CALLMETER_* and the CLI profile of every kind (files they name too), under usual commands."""
    argv = data.draw(st.sampled_from(usual_commands(work)), label="argv")
    (work / "random.bin").write_bytes(data.draw(st.binary(max_size=300), label="random.bin"))
    profile = data.draw(profiles(work), label="profile")
    if isinstance(profile, bytes):
        (work / "profile.json").write_bytes(profile)
    where = {None: work / "no-profile.json", "directory": work / "profile-dir"}.get(profile, work / "profile.json")
    env = {**data.draw(environments(work), label="env"), "XDG_CONFIG_HOME": str(work / "config"), "HOME": str(work),
           "CALLMETER_PROFILE": profile if profile == TOO_LONG else str(where)}
    with environment(env):
        code, err = run_in_process(argv)
    assert_one_error_line_at_most(argv, code, err)


@pytest.mark.parametrize("path", [path for path, _ in COMMANDS], ids=lambda path: " ".join(path) or "callmeter")
def test_help_of_every_command(path: tuple[str, ...]) -> None:
    code, err = run_in_process([*path, "--help"])
    assert (code, err) == (0, "")


# Found by the fuzzing above, kept as plain cases: each was a traceback, or lines of gRPC's own.
@pytest.mark.parametrize("argv, env", [
    (["runs", "show", os.fsdecode(b"\xff")], {}),                          # UnicodeEncodeError in the request
    (["runs", "list", "--project", os.fsdecode(b"\xff")], {}),
    (["workers", "list", "--api", os.fsdecode(b"\xff:1")], {}),            # UnicodeEncodeError in grpc
    (["runs", "list"], {"CALLMETER_API": os.fsdecode(b"\xff:1")}),
    (["runs", "list"], {"CALLMETER_TOKEN": os.fsdecode(b"\xff")}),         # UnicodeEncodeError in the metadata
    (["runs", "list"], {"CALLMETER_TOKEN": "caf\u00e9"}),                  # gRPC core's log lines
    (["runs", "list"], {"CALLMETER_API_CA_FILE": "{missing}"}),            # ConfigError from the channel
    (["workers", "list"], {"CALLMETER_API_CA_FILE": "{random}"}),
    (["runs", "cancel", "r"], {"CALLMETER_API_CA_FILE": "{fake}"}),        # gRPC core's log lines
    (["runs", "cancel", "r"], {"CALLMETER_PROFILE": "{long}"}),            # OSError: file name too long
])
def test_found_by_fuzzing(argv: list[str], env: dict[str, str], work: Path) -> None:
    (work / "random.bin").write_bytes(b"\x00\xffnot a certificate")
    places = {"{missing}": str(work / "missing.pem"), "{random}": str(work / "random.bin"),
              "{fake}": str(work / "fake.pem"), "{long}": TOO_LONG}
    env = {"CALLMETER_API": CLOSED, "CALLMETER_TOKEN": "t", "CALLMETER_PROFILE": str(work / "no-profile.json"),
           "CALLMETER_API_CA_FILE": None, **{name: places.get(value, value) for name, value in env.items()}}
    with environment(env):
        code, err = run_in_process(argv)
    assert code == 2 and len(err.splitlines()) == 1 and ERROR_LINE.match(err), (code, err)


@pytest.mark.parametrize("content", [b'{"api": "x", "token": "t", "ca_file": 5}',
                                     b'{"api": "x", "token": "t", "ca_file": "a\\u0000b"}',
                                     b'{"api": null, "token": "t"}', b"[" * 100_000])
def test_a_profile_of_the_wrong_shape_is_one_line_naming_it(content: bytes, work: Path) -> None:
    """Seen: TypeError from Path(5), ValueError (embedded null byte), RecursionError."""
    profile = work / "odd-profile.json"
    profile.write_bytes(content)
    with environment({"CALLMETER_PROFILE": str(profile), "CALLMETER_API": CLOSED, "CALLMETER_TOKEN": "t",
                      "CALLMETER_API_CA_FILE": None}):
        code, err = run_in_process(["runs", "list"])
    assert code == 2 and len(err.splitlines()) == 1 and str(profile) in err and "CALLMETER_PROFILE" in err, err


@pytest.mark.parametrize("argv", [
    ["test", "validate", os.fsdecode(b"\xff.yaml")],  # was UnicodeEncodeError: FieldViolation(field=str(path))
    ["worker", "--local", os.fsdecode(b"\xff.yaml")],
    ["run", str(EXAMPLE), "--wait", "--junit", TOO_LONG],  # was OSError from Path.is_dir in run.unwritable
    ["demo", "--file", TOO_LONG],  # was OSError from Path.is_file in demo.handle
])
def test_found_by_fuzzing_outside_the_cli_files(argv: list[str], work: Path) -> None:
    with environment({"CALLMETER_API": CLOSED, "CALLMETER_TOKEN": "t", "CALLMETER_API_CA_FILE": None,
                      "CALLMETER_PROFILE": str(work / "no-profile.json")}):
        code, err = run_in_process(argv)
    assert code == 2 and len(err.splitlines()) == 1, err


def test_a_timeout_grpc_cannot_hold_is_refused(work: Path) -> None:
    """gRPC turns a deadline beyond ~7.5e9 s into an immediate DEADLINE_EXCEEDED: the run would end at once."""
    with environment({"CALLMETER_API": CLOSED, "CALLMETER_TOKEN": "t", "CALLMETER_API_CA_FILE": None,
                      "CALLMETER_PROFILE": str(work / "no-profile.json")}):
        code, err = run_in_process(["run", str(EXAMPLE), "--wait", "--timeout", "1e10"])
    assert code == 2 and err.splitlines()[-1].endswith("argument --timeout: must be at most 1e+09 seconds (got 1e10)"), err


def test_a_good_ca_and_profile_reach_the_api(work: Path) -> None:
    """The checks refuse only what cannot be used: a dev CA and a profile `up` writes get as far
    as the (closed) port."""
    profile = work / "good-profile.json"
    profile.write_text(json.dumps({"api": CLOSED, "token": "t0k3n", "ca_file": str(work / "tls" / "ca.pem")}))
    with environment({"CALLMETER_PROFILE": str(profile), "CALLMETER_API": None, "CALLMETER_TOKEN": None,
                      "CALLMETER_API_CA_FILE": None}):
        code, err = run_in_process(["workers", "list"])
    assert code == 2 and err.startswith("callmeter: error: unavailable: ") and len(err.splitlines()) == 1, err


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("CALLMETER_")}
    env.pop("PYTHONUNBUFFERED", None)  # as a user has it: stdout buffered, written at exit
    return {**env, "CALLMETER_PROFILE": "/nonexistent/profile.json", **extra}


@pytest.mark.parametrize("argv, unbuffered", [
    (["--help"], False), (["--version"], False), (["api", "--help"], False), (["api", "--help"], True),
    (["test", "validate", str(EXAMPLE)], False),
])
def test_a_closed_stdout_is_one_line_and_exit_2(argv: list[str], unbuffered: bool) -> None:
    """`callmeter … | head` with the reader gone before anything is written. Seen: "Exception
    ignored … BrokenPipeError" and exit 120 (stdout buffered), a traceback for `api --help`."""
    env = subprocess_env(**({"PYTHONUNBUFFERED": "1"} if unbuffered else {}))
    with subprocess.Popen(callmeter_command(*argv), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()
        err = process.stderr.read().decode()
    assert (process.returncode, err) == (2, "callmeter: error: the output was closed before everything was written\n")


def test_arguments_not_in_utf8_on_a_real_command_line(tmp_path: Path) -> None:
    """Bytes on a real command line, stdout strict as under en_US.UTF-8: a valid file whose name is
    not UTF-8 is printed (seen: UnicodeEncodeError); a run id that is not is one line."""
    weird = tmp_path / os.fsdecode(b"caf\xe9.yaml")
    shutil.copy(EXAMPLE, weird)
    env = subprocess_env(PYTHONIOENCODING="utf-8:strict")
    shown = subprocess.run([*callmeter_command("test", "validate"), os.fsencode(weird)], env=env,
                           capture_output=True, timeout=60)
    refused = subprocess.run([*callmeter_command("runs", "show"), b"\xff"], capture_output=True, timeout=60,
                             env={**env, "CALLMETER_API": CLOSED, "CALLMETER_TOKEN": "t"})
    assert shown.returncode == 0 and b"caf\\udce9.yaml: valid" in shown.stdout, shown.stderr
    assert (refused.returncode, refused.stderr) == (
        2, b"callmeter: error: argument run_id: '\\udcff' is not UTF-8 text\n")


@pytest.mark.parametrize("argv", [["runs", "list"], ["run", str(EXAMPLE), "--wait"]])
def test_ctrl_c_while_the_api_does_not_answer_is_one_line_and_exit_130(argv: list[str]) -> None:
    """SIGINT once the CLI is connected to an API that accepts and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(30)
        env = subprocess_env(CALLMETER_API=f"127.0.0.1:{listener.getsockname()[1]}", CALLMETER_TOKEN="t")
        with subprocess.Popen(callmeter_command(*argv), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) as process:
            connection, _ = listener.accept()  # the CLI is in its first call now
            with connection:
                process.send_signal(signal.SIGINT)
                out, err = process.communicate(timeout=30)
    lines = [line for line in err.decode().splitlines() if line.strip()]
    assert (process.returncode, lines, out) == (130, ["callmeter: interrupted"], b""), err
