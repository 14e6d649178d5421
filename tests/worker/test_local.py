"""`callmeter worker --local FILE.yaml`: the console script run as a user would, real engines on loopback.

Bounded: calls of a few seconds, a ring timeout of 2 s, every process wait has a timeout.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from callmeter.cli.main import SERVICES
from callmeter.common.settings import load_settings
from callmeter.common.testspec import SpecError, load_spec_file
from callmeter.common.verdict import DEFAULT_GATE
from callmeter.v1 import workers_pb2
from services.worker.engines import probe_engine
from services.worker.local import check_spec
from services.worker.settings import WorkerSettings
from services.worker.supervisor import capacity_from
from tests.bad_specs import BAD_FILES, BASE, BadFile, assert_one_line, assert_reported, problem_lines
from tests.procs import ROOT, base_env, eventually
from tests.worker.conftest import free_udp_port

CALLMETER = str(Path(sys.executable).parent / "callmeter")
CALL_SECONDS = 3


def local_env() -> dict[str, str]:
    rtp_min = random.randrange(20000, 50000, 2)  # away from other tests' engines on this machine
    return base_env(CALLMETER_RTP_PORT_MIN=str(rtp_min), CALLMETER_RTP_PORT_MAX=str(rtp_min + 399),
                    CALLMETER_MAX_ENGINES="4")


def self_call_yaml(call_seconds: float, codecs: str = "[PCMU]", gates: str = "") -> str:
    return f"""
name: local-selfcall
groups:
  - name: callees
    count: 1
    role: callee
    transport: udp
    target: {{aor: "sip:callee@127.0.0.1:{free_udp_port()}"}}
    codecs: {codecs}
  - name: callers
    count: 1
    role: caller
    transport: udp
    target: {{call_uri: "group:callees"}}
    codecs: {codecs}
    scenario: {{call_duration: {call_seconds}s}}
{gates}"""

# A real G.711 call scores at most about 4.4 (the E-model's best), so "> 4.8" cannot hold.
GATES_THAT_HOLD = """gates:
  - {metric: mos_avg, comparison: ge, threshold: 3.5}
  - {metric: calls_connected_pct, comparison: eq, threshold: 100}
"""


def run_local(tmp_path: Path, spec_yaml: str, *args: str) -> subprocess.CompletedProcess[str]:
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_yaml)
    return subprocess.run([CALLMETER, "worker", "--local", str(spec), *args], env=local_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


def json_lines(stdout: str) -> list[dict[str, Any]]:
    lines = stdout.splitlines()
    assert lines, "nothing on stdout"
    return [json.loads(line) for line in lines]  # every line is JSON, nothing else is on stdout


def of_type(lines: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["type"] == kind]


def summaries(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {line["group"]: line for line in of_type(lines, "summary")}


def assert_refused(result: subprocess.CompletedProcess[str], file: Path, count: int = 1) -> list[str]:
    """The run did not start; stderr has ``count`` problem lines of the file, which are returned."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stdout == "", "no JSON when the run could not start"
    assert "Traceback" not in result.stderr
    lines = problem_lines(result.stderr, file)
    assert len(lines) == count, result.stderr[-3000:]
    return lines


def test_self_call_prints_a_sample_per_endpoint_second_and_a_summary(tmp_path: Path) -> None:
    result = run_local(tmp_path, self_call_yaml(CALL_SECONDS, gates=GATES_THAT_HOLD))
    assert result.returncode == 0, result.stderr[-4000:]
    lines = json_lines(result.stdout)
    assert {line["type"] for line in lines} == {"sample", "summary"}, of_type(lines, "error")
    assert [line["type"] for line in lines[-3:]] == ["summary"] * 3, "the summaries come last"

    samples = of_type(lines, "sample")
    assert {(s["group"], s["endpoint"]) for s in samples} == {("callees", 0), ("callers", 0)}
    for group in ("callees", "callers"):
        mine = [s for s in samples if s["group"] == group]
        seconds = [s["second"] for s in mine]
        assert seconds == list(range(seconds[0], seconds[0] + len(seconds))), "one line per second, no gaps"
        assert CALL_SECONDS <= len(seconds) <= CALL_SECONDS + 4, seconds
        in_call = [s["metrics"] for s in mine if s["metrics"]["rx_packets"] > 0]
        assert len(in_call) >= CALL_SECONDS, mine
        assert sum(m["rx_packets"] for m in in_call) >= 50 * (CALL_SECONDS - 1)  # PCMU, 20 ms
        # In the catalog's units (seen: "mos": 438, "clock_rate_khz": 80), zeros included where measured.
        scored = [m["mos"] for m in in_call if "mos" in m]
        assert len(scored) >= CALL_SECONDS - 1 and all(3.5 <= mos <= 4.5 for mos in scored), scored
        connected = [m for m in in_call if m["call_active"]]
        assert all(m["clock_rate_khz"] == 8.0 and m["rx_lost"] == 0 and "rx_jitter_us" in m for m in connected)
        assert all(s["metrics"]["calls_failed"] == 0 for s in mine), "a counter's 0 is measured"
        ended = mine[-1]["metrics"]
        assert not ended["call_active"] and "clock_rate_khz" not in ended, "no call: no codec measured"
        assert len([s for s in mine if "setup_time_ms" in s["metrics"]]) == 1, "only in the second the call connected"
        assert all(isinstance(s["second"], int) and abs(s["second"] - seconds[0]) < 60 for s in mine)

    by_group = summaries(lines)
    assert set(by_group) == {"callees", "callers", ""}
    callers, run = by_group["callers"], by_group[""]
    assert (callers["calls_attempted"], callers["calls_connected"], callers["calls_failed"]) == (1, 1, 0)
    assert by_group["callees"]["calls_connected"] == 1
    for summary in by_group.values():
        assert 3.5 <= summary["mos_avg"] <= 4.5 and 3.5 <= summary["mos_min"] <= summary["mos_avg"], summary
        assert summary["loss_pct"] < 1 and 0 <= summary["jitter_ms_p95"] < 20, summary
        assert 0 < summary["setup_ms_p50"] <= summary["setup_ms_p95"] < 2000, summary
        assert summary["endpoints_failed"] == summary["errors"] == 0
    assert callers["outcomes"] == by_group["callees"]["outcomes"] == [{"outcome": "success", "sip_code": None,
                                                                       "endpoints": 1}]
    assert (run["state"], run["exit_code"], run["endpoints"]) == ("done", 0, 2)
    # The call is counted at both ends, by its group each; the run counts it once.
    assert (run["calls_attempted"], run["calls_connected"], by_group["callees"]["calls_attempted"]) == (1, 1, 1)
    # A loaded machine may slow the generator itself: that is said, and is the only reason allowed.
    assert run["verdict"] == "pass" and all(" was overloaded for " in r for r in run["reasons"]), run
    [load] = run["workers"]  # the generator's own load, measured every second
    assert load["worker"] == "local" and load["engine_cpu_pct_max"] > 0 and run["overloaded_s"] == load["overloaded_s"]
    assert [(g["gate"], g["passed"]) for g in run["gates"]] == [("mos_avg >= 3.5", True),
                                                               ("calls_connected_pct == 100", True)]
    assert run["gates"][0]["observed"] == run["mos_avg"] and run["gates"][1]["observed"] == 100
    assert any(line.startswith("{") for line in result.stderr.splitlines()), "the logs are on stderr"


def test_a_gate_the_call_cannot_meet_fails_the_run_with_its_reason(tmp_path: Path) -> None:
    gates = GATES_THAT_HOLD + "  - {metric: mos_avg, comparison: gt, threshold: 4.8, group: callers}\n"
    result = run_local(tmp_path, self_call_yaml(CALL_SECONDS, gates=gates), "--summary-only")
    assert result.returncode == 1, result.stderr[-4000:]
    by_group = summaries(json_lines(result.stdout))
    run, callers = by_group[""], by_group["callers"]
    assert callers["calls_connected"] == 1 and callers["endpoints_failed"] == 0, "the call itself went well"
    assert (run["verdict"], run["exit_code"]) == ("fail", 1), run
    (reason,) = run["reasons"]  # only the gate that failed
    assert reason.startswith("group callers: mos_avg > 4.8: observed "), reason
    assert abs(float(reason.rsplit(" ", 1)[1]) - callers["mos_avg"]) < 0.006, (reason, callers)  # 3 digits
    assert [g["passed"] for g in run["gates"]] == [True, True, False]
    assert "verdict" not in callers, "the verdict is the whole run's"


def test_sigterm_stops_the_run_and_still_prints_the_summary(tmp_path: Path) -> None:
    spec, log = tmp_path / "spec.yaml", tmp_path / "worker.log"
    spec.write_text(self_call_yaml(60))
    with log.open("w") as stderr:
        process = subprocess.Popen([CALLMETER, "worker", "--local", str(spec), "--summary-only"], env=local_env(),
                                   cwd=tmp_path, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        # --summary-only prints no samples: the engine's log says when the phones start.
        eventually(lambda: "run begins" in log.read_text(), timeout_s=30, message="the engine began the run")
        time.sleep(CALL_SECONDS)  # into the call
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 2, log.read_text()[-4000:]
    lines = json_lines(stdout)
    assert {line["type"] for line in lines} == {"summary"}, "--summary-only prints no samples"
    by_group = summaries(lines)
    assert by_group["callers"]["calls_connected"] == 1, by_group
    assert by_group["callers"]["mos_avg"] > 3.5
    assert (by_group[""]["state"], by_group[""]["exit_code"], by_group[""]["verdict"]) == ("cancelled", 2, "error")
    assert by_group[""]["reasons"] == ["stopped by a signal; not judged"]


def test_unreachable_target_is_an_error_line_and_exit_1(tmp_path: Path) -> None:
    result = run_local(tmp_path, f"""
name: unreachable
groups:
  - name: callers
    count: 1
    role: caller
    target: {{call_uri: "sip:nobody@127.0.0.1:{free_udp_port()}"}}
    scenario: {{call_duration: 1s, ring_timeout: 2s}}
""")
    assert result.returncode == 1, result.stderr[-4000:]
    lines = json_lines(result.stdout)
    (error,) = of_type(lines, "error")
    assert (error["group"], error["endpoint"]) == ("callers", 0)
    assert "no response at all within the ring timeout" in error["reason"], error
    assert error["sip_code"] == 0, "a local give-up is no 487: no final response was received"
    assert error["outcome"] == "timeout"
    by_group = summaries(lines)
    assert by_group["callers"]["outcomes"] == [{"outcome": "timeout", "sip_code": None, "endpoints": 1}]
    assert (by_group["callers"]["calls_failed"], by_group["callers"]["endpoints_failed"]) == (1, 1)
    assert by_group["callers"]["failures_by_code"] == {"0": 1}, by_group["callers"]
    assert (by_group[""]["exit_code"], by_group[""]["state"], by_group[""]["verdict"]) == (1, "done", "fail")
    assert by_group[""]["gates"] == [{"gate": DEFAULT_GATE, "observed": 1.0, "passed": False}]
    assert by_group[""]["mos_avg"] is None and by_group[""]["setup_ms_p95"] is None, "not measured is null, not 0"


def test_malformed_yaml_names_the_problem(tmp_path: Path) -> None:
    result = run_local(tmp_path, "name: x\ngroups:\n  - name: a\n    count: [1\n")
    [line] = assert_refused(result, tmp_path / "spec.yaml")
    assert "not valid YAML at line 5" in line, line


def test_unknown_field_and_enum_are_named_each_on_its_line(tmp_path: Path) -> None:
    result = run_local(tmp_path, "name: x\ngroups:\n  - name: a\n    cont: 1\n    role: calller\n")
    cont, role = assert_refused(result, tmp_path / "spec.yaml", count=2)
    assert ": groups[0].cont: unknown field" in cont and ": groups[0].role: 'calller'" in role, (cont, role)


@pytest.fixture(scope="module")
def capacity() -> workers_pb2.WorkerCapacity:
    """What this machine's SIP engine has, as `worker --local` learns it: a real probe engine."""
    return capacity_from(asyncio.run(probe_engine()), load_settings(WorkerSettings, worker_token=SecretStr("x")))


def local_problems(file: Path, capacity: workers_pb2.WorkerCapacity) -> list[tuple[str, str]]:
    """What `worker --local` refuses in the file, before any engine of the run starts."""
    try:
        violations = check_spec(load_spec_file(file), capacity)
    except SpecError as error:
        violations = error.violations
    return [(v.field, v.description) for v in violations]


WAV_UNREADABLE = BadFile("wav-unreadable", "groups[0].media", {"wav_path": "/nonexistent/tone.wav"},
                         "groups[0].media.wav_path", ("cannot read",))


@pytest.mark.parametrize("bad", [*BAD_FILES, WAV_UNREADABLE], ids=lambda bad: bad.id)
def test_each_bad_file_is_refused_naming_its_field(bad: BadFile, tmp_path: Path,
                                                  capacity: workers_pb2.WorkerCapacity) -> None:
    """The same table as the API's (tests/api/test_validation.py) and `validate`'s
    (tests/unit/test_testspec.py), checked here against a real engine's capacity: the check
    `worker --local` runs; a few of them through the console script below."""
    [(field, description)] = local_problems(bad.write(tmp_path), capacity)
    assert_reported(bad, field, description)


@pytest.mark.parametrize("bad", [bad for bad in BAD_FILES if bad.id in (
    "unknown-codec", "count-million", "gate-metric-unknown", "timeout-negative", "call-uri-no-group", "count-text")],
    ids=lambda bad: bad.id)
def test_the_console_script_refuses_a_bad_file_on_one_line(bad: BadFile, tmp_path: Path) -> None:
    """Seen: a count of 1,000,000, an unknown gate metric and a negative timeout were run."""
    file = bad.write(tmp_path)
    result = subprocess.run([CALLMETER, "worker", "--local", str(file)], env=local_env(), cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert_one_line(bad, file, assert_refused(result, file))


def test_the_examples_and_the_table_s_base_can_run_here(tmp_path: Path, capacity: workers_pb2.WorkerCapacity) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(BASE))
    for good in [base, *sorted((ROOT / "examples").glob("*.yaml"))]:
        assert local_problems(good, capacity) == [], good


def test_help_lists_local_mode_and_the_environment() -> None:
    result = subprocess.run([CALLMETER, "worker", "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "--local FILE.yaml" in result.stdout and "CALLMETER_WORKER_TOKEN" in result.stdout
    assert re.search(r"CALLMETER_WORKER_TOKEN +required\n", result.stdout), result.stdout
    assert re.search(r"CALLMETER_MAX_ENGINES +default sized at start from this machine's CPUs and memory\n",
                     result.stdout), result.stdout
    for service in SERVICES:
        shown = subprocess.run([CALLMETER, service, "--help"], capture_output=True, text=True, timeout=30)
        assert shown.returncode == 0 and "environment:" in shown.stdout, shown.stderr
        assert "Undefined" not in shown.stdout, shown.stdout
    result = subprocess.run([CALLMETER, "worker", "--duration", "5"], capture_output=True, text=True, timeout=30,
                            env=base_env())
    assert result.returncode == 2 and "need --local" in result.stderr
