"""`callmeter runs compare RUN_A RUN_B` against the real `callmeter api`, on a state store holding
the test world and runs stored with their summaries as the orchestrator stores them at collection
(tests/orchestrator/test_runs.py drives that part)."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from callmeter.cli.compare import add_compare_command
from callmeter.common import outcomes
from callmeter.state.models import Run, utcnow
from callmeter.v1 import results_pb2
from tests.api.conftest import api_alone
from tests.api.world import World
from tests.cli_commands import Result, environment
from tests.procs import ServiceProcess

VIEWER = ("viewer", "project")


def summary(mos_avg: float, setup_ms_p95: float, failed: int) -> results_pb2.RunSummary:
    """A run of the world's test "smoke": callers with MOS and setup times, callees that measured
    no MOS of their own (not measured: never 0), and the outcomes counted for the run."""
    callers = results_pb2.GroupSummary(group="callers", endpoints=2, calls_attempted=2, calls_connected=2 - failed,
                                       calls_failed=failed, mos_avg=mos_avg, mos_min=mos_avg - 0.2, jitter_ms_p95=3.5,
                                       loss_pct=0.0, rtt_ms_p95=12.0, setup_ms_p95=setup_ms_p95, completeness_pct=100.0)
    callees = results_pb2.GroupSummary(group="callees", endpoints=2, completeness_pct=100.0)
    total = results_pb2.GroupSummary(endpoints=4, calls_attempted=2, calls_connected=2 - failed, calls_failed=failed,
                                     mos_avg=mos_avg, setup_ms_p95=setup_ms_p95, loss_pct=0.0, completeness_pct=100.0)
    counts = Counter({(outcomes.SUCCESS, 0): 4 - failed})
    if failed:
        counts[(outcomes.CALL_FAILED, 486)] = failed
    outcomes.set_outcomes(total, counts)
    return results_pb2.RunSummary(total=total, groups=[callers, callees])


def store_run(world: World, state: str, verdict: str = "VERDICT_UNSPECIFIED",
              stored: results_pb2.RunSummary | None = None, reasons: list[str] | None = None) -> str:
    """A run of the world's test in this state, with its summary stored as runs.finish stores it."""
    with Session(world.engine) as session, session.begin():
        now = utcnow()
        run = Run(test_id=world.test, test_version=1, project_id=world.project, state=state, verdict=verdict,
                  reasons=reasons or [], started_at=now - timedelta(seconds=30),
                  ended_at=now if state != "RUN_STATE_RUNNING" else None)
        session.add(run)
        session.flush()
        if stored is not None:
            stored.run_id = run.id
            run.summary = stored.SerializeToString()
        return run.id


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, ServiceProcess]]:
    # No orchestrator and no metrics-ingest: comparing reads only what the state store holds.
    with api_alone(tmp_path_factory.mktemp("compare")) as started:
        yield started


@pytest.fixture
def world(platform: tuple[World, ServiceProcess]) -> World:
    return platform[0]


@pytest.fixture
def compare(platform: tuple[World, ServiceProcess], capsys: pytest.CaptureFixture[str],
            tmp_path: Path) -> Callable[..., Result]:
    """``compare(*argv)``: `callmeter runs compare ARGV` in this process as a viewer of the project,
    through the parser `callmeter runs` adds the command to."""
    world, api = platform
    parser = argparse.ArgumentParser(prog="callmeter runs")
    add_compare_command(parser.add_subparsers(dest="runs_command", required=True))

    def run(*argv: str) -> Result:
        capsys.readouterr()
        with environment({"CALLMETER_API": api.address, "CALLMETER_TOKEN": world.tokens[VIEWER],
                          "CALLMETER_PROFILE": str(tmp_path / "none.json"), "CALLMETER_API_CA_FILE": ""}):
            try:
                args = parser.parse_args(["compare", *argv])
                code = int(args.handler(args))
            except SystemExit as stopped:  # argparse: usage and one error line
                code = int(stopped.code or 0)
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def error_line(result: Result) -> str:
    assert (result.code, result.out) == (2, ""), result
    [line] = result.err.splitlines()
    assert line.startswith("callmeter: error: "), line
    return line.removeprefix("callmeter: error: ")


def test_two_ended_runs_side_by_side_with_the_change_and_its_direction(compare: Callable[..., Result],
                                                                        world: World) -> None:
    a = store_run(world, "RUN_STATE_FINISHED", "VERDICT_PASS", summary(mos_avg=4.3, setup_ms_p95=180, failed=0))
    b = store_run(world, "RUN_STATE_FINISHED", "VERDICT_FAIL", summary(mos_avg=4.12, setup_ms_p95=150, failed=1))
    result = compare(a, b)
    assert (result.code, result.err) == (0, ""), result
    head, body = result.out.split("\n\n")
    first, second = head.splitlines()
    assert first.startswith(f"A  run {a}: smoke version 1, finished, verdict PASS, created ")
    assert second.startswith(f"B  run {b}: smoke version 1, finished, verdict FAIL, created ")
    rows = [line.split("  ") for line in body.splitlines()]
    cells = [[cell.strip() for cell in row if cell.strip()] for row in rows]
    assert cells[0] == ["group", "figure", "A", "B", "B - A"]
    assert cells[1] == ["callers", "MOS avg", "4.30", "4.12", "-0.18", "worse"]
    assert ["setup p95 ms", "180", "150", "-30", "better"] in cells, "a delay is better lower"
    assert ["jitter p95 ms", "3.5", "3.5", "0.0", "same"] in cells
    callees = body.split("\ncallees")[1].split("\ntotal")[0]
    assert "MOS avg  " in callees and callees.count("not measured") >= 3 and "0.00" not in callees, \
        "what the callees did not measure is not measured in both, never 0"
    total = cells[next(i for i, row in enumerate(cells) if row[0] == "total"):]
    assert ["endpoints failed", "0", "1", "+1", "worse"] in total
    assert ["outcome success", "4", "3", "-1", "worse"] in total
    assert ["outcome call failed (SIP 486)", "0", "1", "+1", "worse"] in total
    assert ["loss %", "0.00", "0.00", "0.00", "same"] in total
    assert ["MOS min", "not measured", "not measured", "not measured"] in total

    data = json.loads(compare(a, b, "--json").out)
    assert list(data) == ["a", "b", "groups", "total"]
    assert data["a"] == {"run_id": a, "test": "smoke", "test_version": 1, "state": "finished", "verdict": "pass"}
    assert data["b"]["verdict"] == "fail"
    assert [g["name"] for g in data["groups"]] == ["callers", "callees"]
    callers = {f["metric"]: f for f in data["groups"][0]["figures"]}
    assert callers["mos_avg"] == {"metric": "mos_avg", "a": 4.3, "b": 4.12, "change": -0.18, "direction": "worse"}
    assert callers["setup_ms_p95"]["direction"] == "better"
    assert [f["metric"] for f in data["groups"][0]["figures"]] == [
        "mos_avg", "mos_min", "jitter_ms_p95", "loss_pct", "rtt_ms_p95", "setup_ms_p95", "completeness_pct",
        "endpoints_failed"]
    assert {f["metric"]: f for f in data["groups"][1]["figures"]}["mos_avg"] == {
        "metric": "mos_avg", "a": None, "b": None, "change": None, "direction": None}, "not measured is null"
    assert data["total"]["outcomes"] == [
        {"outcome": "success", "sip_code": None, "a": 4, "b": 3, "change": -1, "direction": "worse"},
        {"outcome": "call_failed", "sip_code": 486, "a": 0, "b": 1, "change": 1, "direction": "worse"}]
    # The other way round, the same change is better.
    back = json.loads(compare(b, a, "--json").out)
    assert {f["metric"]: f for f in back["groups"][0]["figures"]}["mos_avg"]["direction"] == "better"


def test_only_ended_runs_with_a_stored_summary_are_compared(compare: Callable[..., Result], world: World) -> None:
    ended = store_run(world, "RUN_STATE_FINISHED", "VERDICT_PASS", summary(mos_avg=4.3, setup_ms_p95=180, failed=0))
    running = store_run(world, "RUN_STATE_RUNNING")
    assert error_line(compare(ended, running)) == (
        f"run {running} has not ended (running): only an ended run has a stored summary to compare")
    assert error_line(compare(world.run, ended)) == (
        f"run {world.run} has not ended (queued): only an ended run has a stored summary to compare")
    collecting = store_run(world, "RUN_STATE_CANCELLED", "VERDICT_ERROR", reasons=["cancelled"])
    assert error_line(compare(ended, collecting)) == (
        f"run {collecting} has ended (cancelled) but its summary is still being collected; try again in a moment")
    failed = store_run(world, "RUN_STATE_FAILED", "VERDICT_ERROR", reasons=["not enough capacity for group 'callers'"])
    assert error_line(compare(failed, ended)) == (
        f"run {failed} ended (failed) with no summary, nothing was measured: not enough capacity for group 'callers'")
    assert error_line(compare(ended, "nope")) == "not_found: no run 'nope'"
