"""End to end: one real self-call on the embedded platform (the five services as processes, real
RTP), then its results through the CLI's result commands — series, worst, codes, export, trend —
checked against the run's own summary and against one another. One run serves every check."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from callmeter.catalog import METRICS
from tests.e2e.test_selfcall import SPEC, Platform, assert_good_call_result, embedded, free_port  # noqa: F401
from tests.cli_commands import api_runner as runner

pytestmark = pytest.mark.timeout(600)


def test_results_of_a_real_selfcall_through_the_cli(embedded: Platform, capsys: pytest.CaptureFixture[str],  # noqa: F811
                                                    tmp_path: Path) -> None:
    summary = assert_good_call_result(embedded.run(SPEC.format(port=free_port(), duration=5)))
    run_id = summary["run_id"]
    run = runner(capsys, embedded.services["api"].address, embedded.owner_token)

    def json_of(*argv: str) -> dict:  # type: ignore[type-arg]
        result = run(*argv, "--json")
        assert result.code == 0, result.err
        return json.loads(result.out)

    # Each second of caller 0's call has the MOS of a clean PCMU call; the others none (0).
    series = json_of("runs", "series", run_id, "--metric", "mos", "--group", "callers", "--endpoint", "0")
    in_call = [point["value"] for point in series["points"] if point["value"] > 0]
    assert len(in_call) >= 3 and all(3.5 <= value <= 4.5 for value in in_call), series
    stepped = json_of("runs", "series", run_id, "--metric", "calls_connected", "--step", "5s", "--aggregate", "sum")
    assert sum(point["value"] for point in stepped["points"]) == 4, "each call connected once at each end"

    worst = json_of("runs", "worst", run_id, "--by", "mos", "-n", "10")
    assert worst["lowest_first"] is True and len(worst["endpoints"]) == 4, worst
    values = [endpoint["value"] for endpoint in worst["endpoints"]]
    assert values == sorted(values) and all(3.5 <= value <= 4.5 for value in values), worst
    jitter = json_of("runs", "worst", run_id, "--by", "rx_jitter_us", "-n", "2")
    assert jitter["lowest_first"] is False and jitter["unit"] == "ms" and len(jitter["endpoints"]) == 2

    codes = json_of("runs", "codes", run_id)
    assert codes["total"]["outcomes"] == [{"outcome": "success", "sip_code": None, "endpoints": 4}], codes
    assert codes["total"]["failures_by_code"] == {} and codes["total"]["calls_failed"] == 0
    assert {g["name"]: g["outcomes"] for g in codes["groups"]} == {
        name: [{"outcome": "success", "sip_code": None, "endpoints": 2}] for name in ("callees", "callers")}
    table = run("runs", "codes", run_id)
    assert table.code == 0 and "total            4  success" in table.out and "no call failed" in table.out, table.out

    target = tmp_path / "selfcall.csv"
    exported = run("runs", "export", run_id, "--csv", str(target))
    assert exported.code == 0, exported.err
    with target.open(newline="") as rows_file:
        rows = list(csv.DictReader(rows_file))
    assert len(rows) == summary["total"]["endpoint_seconds"], exported.out
    assert list(rows[0]) == ["group", "endpoint", "second", *(m.name for m in METRICS)]
    assert {(row["group"], row["endpoint"]) for row in rows} == {(g, e) for g in ("callees", "callers") for e in "01"}
    # Not measured is an empty cell, never a 0: a setup time only in the second its call connected,
    # an RTT only once RTCP gave one; a counter's 0 is measured and written.
    connected = [row for row in rows if row["calls_connected"] == "1"]
    assert len(connected) == 4 and [row for row in rows if row["setup_time_ms"]] == connected
    assert all(float(row["setup_time_ms"]) > 0 for row in connected)
    assert "0" not in {row["rtt_us"] for row in rows} and all(row["calls_failed"] == "0" for row in rows)
    # The worst endpoints' values are the mean MOS of their seconds in a call, as exported.
    for endpoint in worst["endpoints"]:
        mine = [float(row["mos"]) for row in rows if (row["group"], row["endpoint"]) == (
            endpoint["group"], str(endpoint["endpoint"])) and row["call_active"] == "1" and row["mos"]]
        assert endpoint["value"] == pytest.approx(sum(mine) / len(mine), rel=1e-9), endpoint

    trend = json_of("tests", "trend", "e2e-selfcall", "--metric", "mos_avg")
    assert [point["run_id"] for point in trend["points"]] == [run_id]
    assert trend["points"][0]["value"] == pytest.approx(summary["total"]["mos_avg"], rel=1e-9)
