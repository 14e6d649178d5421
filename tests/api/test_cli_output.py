"""`callmeter run` output: --json, --junit, the summary table and progress, from a fabricated summary."""

from __future__ import annotations

import io
import json
from collections import Counter
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from callmeter.cli.run import exit_code, follow, format_result, junit_xml, progress_line, run_json
from callmeter.common import outcomes
from callmeter.common.exit_codes import ExitCode
from callmeter.v1 import results_pb2, runs_pb2


def fabricated() -> tuple[runs_pb2.Run, results_pb2.RunSummary]:
    callers = results_pb2.GroupSummary(group="callers", endpoints=10, registered=10, calls_attempted=20,
                                       calls_connected=19, calls_failed=1, mos_avg=4.21, mos_min=3.5,
                                       jitter_ms_p95=4.5, loss_pct=0.25, rtt_ms_p95=12.0, setup_ms_p95=180.0,
                                       endpoint_seconds=600, completeness_pct=100.0)
    callees = results_pb2.GroupSummary(group="callees", endpoints=10, registered=9)
    summary = results_pb2.RunSummary(run_id="r1", groups=[callers, callees], gates=[
        results_pb2.GateResult(gate="mos_avg >= 4.0", observed=4.21, passed=True),
        results_pb2.GateResult(gate="group callers: calls_failed_pct == 0", observed=5.0, passed=False),
    ])
    run = runs_pb2.Run(id="r1", state=runs_pb2.RUN_STATE_FINISHED, verdict=runs_pb2.VERDICT_FAIL,
                       reasons=["group callers: calls_failed_pct == 0 (observed 5)"])
    return run, summary


def test_json_has_exactly_the_documented_shape() -> None:
    run, summary = fabricated()
    data = json.loads(json.dumps(run_json(run, summary)))
    assert list(data) == ["run_id", "state", "verdict", "reasons", "total", "groups", "gates", "workers"]
    assert (data["run_id"], data["state"], data["verdict"]) == ("r1", "finished", "fail")
    assert data["reasons"] == ["group callers: calls_failed_pct == 0 (observed 5)"]
    assert data["total"] is None, "no total in the summary"
    assert data["gates"] == [{"gate": "mos_avg >= 4.0", "observed": 4.21, "baseline": None, "passed": True},
                             {"gate": "group callers: calls_failed_pct == 0", "observed": 5.0, "baseline": None,
                              "passed": False}]
    assert data["groups"][0] == {
        "name": "callers", "endpoints": 10, "registered": 10, "register_attempted": 0, "calls_attempted": 20,
        "calls_connected": 19, "calls_failed": 1, "mos_avg": 4.21, "mos_min": 3.5, "jitter_ms_p95": 4.5, "loss_pct": 0.25, "rtt_ms_p95": 12.0,
        "setup_ms_p95": 180.0, "endpoint_seconds": 600, "completeness_pct": 100.0, "overloaded_s": None,
        "endpoints_failed": 0, "outcomes": [],
    }
    assert [g["name"] for g in data["groups"]] == ["callers", "callees"]
    not_measured = ("mos_avg", "mos_min", "jitter_ms_p95", "loss_pct", "rtt_ms_p95", "setup_ms_p95", "completeness_pct",
                    "overloaded_s")
    assert all(data["groups"][1][field] is None for field in not_measured), "not measured is null, not 0"
    summary.total.CopyFrom(summary.groups[0])
    assert run_json(run, summary)["total"] == {k: v for k, v in data["groups"][0].items() if k != "name"}
    assert (run_json(run, None)["groups"], run_json(run, None)["gates"], run_json(run, None)["total"]) == ([], [], None)
    summary.workers.add(worker="w1", overloaded_s=42, engine_lag_ms_max=2300.5, worker_lag_ms_max=12, engine_cpu_pct_max=97)
    assert run_json(run, summary)["workers"] == [{"worker": "w1", "overloaded_s": 42, "engine_lag_ms_max": 2300.5,
                                                  "worker_lag_ms_max": 12.0, "engine_cpu_pct_max": 97.0,
                                                  "endpoint_seconds": 0, "completeness_pct": None}]


def test_outcomes_per_group_and_code_in_the_table_json_and_junit() -> None:
    run, summary = fabricated()
    outcomes.set_outcomes(summary.groups[0], Counter({(outcomes.SUCCESS, 0): 8, (outcomes.CALL_FAILED, 486): 1,
                                                      (outcomes.TIMEOUT, 0): 1}))
    outcomes.set_outcomes(summary.groups[1], Counter({(outcomes.SUCCESS, 0): 9, (outcomes.REGISTRATION_FAILED, 401): 1}))
    outcomes.set_outcomes(summary.total, Counter({(outcomes.SUCCESS, 0): 17, (outcomes.CALL_FAILED, 486): 1,
                                                  (outcomes.TIMEOUT, 0): 1, (outcomes.REGISTRATION_FAILED, 401): 1}))
    text = format_result(run, summary)
    assert "outcomes  callers: 8 success, 1 call failed (SIP 486), 1 timeout (no final response)" in text
    assert "          callees: 9 success, 1 registration failed (SIP 401)" in text
    data = run_json(run, summary)
    assert data["groups"][0]["outcomes"] == [{"outcome": "success", "sip_code": None, "endpoints": 8},
                                             {"outcome": "call_failed", "sip_code": 486, "endpoints": 1},
                                             {"outcome": "timeout", "sip_code": None, "endpoints": 1}]
    assert (data["groups"][0]["endpoints_failed"], data["total"]["endpoints_failed"]) == (2, 3)
    suite = ET.fromstring(junit_xml("smoke", run, summary)).find("testsuite")
    assert suite is not None
    properties = {p.get("name"): p.get("value") for p in suite.findall("properties/property")}
    assert {k: v for k, v in properties.items() if k.startswith("outcome.")} == {
        "outcome.success": "17", "outcome.call_failed.486": "1", "outcome.timeout": "1",
        "outcome.registration_failed.401": "1"}


def test_junit_has_a_case_per_gate_and_a_failure_where_it_did_not_hold() -> None:
    run, summary = fabricated()
    suite = ET.fromstring(junit_xml("smoke", run, summary)).find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "1", "0")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["mos_avg >= 4.0", "group callers: calls_failed_pct == 0"]
    assert cases[0].find("failure") is None
    failure = cases[1].find("failure")
    assert failure is not None and failure.get("message") == "observed 5"
    assert suite.find("properties/property[@name='completeness_pct']") is None, "not known: not shown"
    summary.total.completeness_pct = 97.25
    suite = ET.fromstring(junit_xml("smoke", run, summary)).find("testsuite")
    assert suite is not None and suite.find("properties/property[@name='completeness_pct']").get("value") == "97.2"


def test_junit_reports_a_run_that_did_not_finish_as_an_error() -> None:
    run = runs_pb2.Run(id="r2", state=runs_pb2.RUN_STATE_FAILED, verdict=runs_pb2.VERDICT_ERROR,
                       reasons=["no worker has free capacity"])
    suite = ET.fromstring(junit_xml("smoke", run, results_pb2.RunSummary())).find("testsuite")
    assert suite is not None and suite.get("errors") == "1"
    error = suite.find("testcase/error")
    assert error is not None and error.text == "no worker has free capacity"


def test_result_table_gates_and_verdict() -> None:
    run, summary = fabricated()
    text = format_result(run, summary)
    header, callers, callees = text.splitlines()[:3]
    assert header.split()[:3] == ["group", "endpoints", "registered"]
    assert callers.split() == ["callers", "10", "10", "20", "19", "1", "4.21", "3.50", "4.5", "0.25", "12.0", "180",
                               "100.0"]
    assert header.split()[-2:] == ["complete", "%"]
    assert callees.split()[:3] == ["callees", "10", "9"]
    assert "PASS  mos_avg >= 4.0  (observed 4.21)" in text
    assert "FAIL  group callers: calls_failed_pct == 0  (observed 5)" in text
    assert "verdict FAIL" in text


@pytest.mark.parametrize(("state", "verdict", "code"), [
    (runs_pb2.RUN_STATE_FINISHED, runs_pb2.VERDICT_PASS, ExitCode.OK),
    (runs_pb2.RUN_STATE_FINISHED, runs_pb2.VERDICT_FAIL, ExitCode.RUN_FAILED),
    (runs_pb2.RUN_STATE_FAILED, runs_pb2.VERDICT_ERROR, ExitCode.ERROR),
    (runs_pb2.RUN_STATE_CANCELLED, runs_pb2.VERDICT_ERROR, ExitCode.ERROR),
])
def test_exit_code_follows_the_verdict(state: int, verdict: int, code: ExitCode) -> None:
    assert exit_code(runs_pb2.Run(state=state, verdict=verdict)) == code


def test_progress_without_a_terminal_is_plain_lines_at_state_changes() -> None:
    run, summary = fabricated()
    live = [runs_pb2.RunProgress(state=runs_pb2.RUN_STATE_QUEUED),
            runs_pb2.RunProgress(state=runs_pb2.RUN_STATE_RUNNING, elapsed_s=1, groups=summary.groups[:1]),
            runs_pb2.RunProgress(state=runs_pb2.RUN_STATE_RUNNING, elapsed_s=2, groups=summary.groups[:1]),
            runs_pb2.RunProgress(state=runs_pb2.RUN_STATE_FINISHED, elapsed_s=3, summary=summary)]
    out = io.StringIO()
    assert follow(live, out) == summary
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["queued", "running", "finished"]
    assert "\r" not in out.getvalue()
    assert progress_line(live[1]).split()[1:] == ["running", "callers:", "10", "ep", "10", "reg", "19", "conn",
                                                  "MOS", "4.21"]


def test_a_figure_or_gate_never_measured_says_so_everywhere_never_0() -> None:
    run, summary = fabricated()
    summary.gates[1].ClearField("observed")
    table = format_result(run, summary)
    callees = next(line for line in table.splitlines() if line.startswith("callees"))
    assert callees.count("not measured") == 7 and "0.00" not in callees
    assert "FAIL  group callers: calls_failed_pct == 0  (not measured)" in table
    assert run_json(run, summary)["gates"][1]["observed"] is None
    failure = ET.fromstring(junit_xml("smoke", run, summary)).find("testsuite/testcase[2]/failure")
    assert failure is not None and failure.get("message") == "not measured"


def test_a_run_that_could_not_be_judged_is_an_error_in_junit_and_exit_code() -> None:
    run, summary = fabricated()
    run.state, run.verdict = runs_pb2.RUN_STATE_TIMED_OUT, runs_pb2.VERDICT_ERROR
    run.reasons[:] = ["the run reached its timeout (60 s) with 4 endpoints still running; not judged"]
    suite = ET.fromstring(junit_xml("smoke", run, summary)).find("testsuite")
    assert suite is not None and suite.get("errors") == "1"
    assert exit_code(run) == ExitCode.ERROR
    run.state = runs_pb2.RUN_STATE_FAILED
    assert exit_code(run) == ExitCode.ERROR


@pytest.mark.parametrize("argv", [["run", "t.yaml", "--wait", "--timeout", "0"],
                                  ["run", "t.yaml", "--wait", "--timeout", "-5"],
                                  ["run", "t.yaml", "--wait", "--timeout", "nan"],
                                  ["runs", "list", "--limit", "-1"], ["runs", "list", "--limit", "x"]])
def test_a_bad_number_is_one_line_naming_the_option_and_exit_2(argv: list[str],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from callmeter.cli.main import build_parser

    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert argv[-2] in err and "Traceback" not in err


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00binary", b"[1, 2]", b'{"api": "x"}'])
def test_a_corrupt_cli_profile_is_one_line_and_exit_2(content: bytes, tmp_path, monkeypatch,  # type: ignore[no-untyped-def]
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from callmeter.cli.main import main

    profile = tmp_path / "profile.json"
    profile.write_bytes(content)
    monkeypatch.setenv("CALLMETER_PROFILE", str(profile))
    monkeypatch.delenv("CALLMETER_API", raising=False)
    assert main(["runs", "list"]) == ExitCode.ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(profile) in err[0] and "CALLMETER_PROFILE" in err[0], err


def test_a_closed_output_is_one_line_and_exit_2() -> None:
    import subprocess
    import sys

    # `callmeter … | head`: the reader is gone before the output is written.
    example = Path(__file__).parents[2] / "examples" / "selfcall.yaml"
    with subprocess.Popen([sys.executable, "-m", "callmeter.cli.main", "test", "validate", str(example)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()
        err = process.stderr.read().decode()
    assert process.returncode == 2 and err == "callmeter: error: the output was closed before everything was written\n", err


@pytest.mark.parametrize("where, problem", [("missing/report.xml", "does not exist"), (".", "is a directory"),
                                            ("locked/report.xml", "is not writable")])
def test_an_unwritable_junit_path_is_refused_before_the_run_starts(where: str, problem: str, tmp_path, monkeypatch,  # type: ignore[no-untyped-def]
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Seen: the run went to its end, then the report could not be written (a traceback)."""
    import os

    from callmeter.cli.main import main

    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):  # root writes anywhere: a file in its place stands for the lock
        locked.rmdir()
        locked.write_text("")
        where, problem = "locked/report.xml", "is not a directory"
    monkeypatch.setenv("CALLMETER_API", "127.0.0.1:9")  # nothing listens: a run started would fail otherwise
    example = Path(__file__).parents[2] / "examples" / "selfcall.yaml"
    assert main(["run", str(example), "--wait", "--junit", str(tmp_path / where)]) == ExitCode.ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("callmeter: error: --junit ") and problem in err[0], err
