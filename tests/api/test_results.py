"""Results through the public API: the real `callmeter api` process reading a real metrics-ingest
process (chDB), which ingested the known data set over NATS for two runs of a test, one still
running (results live from metrics-ingest) and one ended (its stored summary). Every answer is
checked against metrics-ingest's own, and that against NumPy where tests/metrics does not already;
then the refusals (token, role, project, bad input, metrics-ingest down) and the CLI's output."""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import nats
import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.orm import Session

from callmeter.catalog import METRICS
from callmeter.common import outcomes
from callmeter.common.channels import sync_channel
from callmeter.common.stores.metrics_stream import publish_run_started
from callmeter.common.stores.nats import EmbeddedNats
from callmeter.common.tokens import API_TOKEN_PREFIX, hash_secret, new_secret
from callmeter.state.models import ApiToken, RoleBinding, Run, User
from callmeter.v1 import results_pb2, results_pb2_grpc, runs_pb2, runs_pb2_grpc
from services.api.handlers.results import EXPORT_PAGE
from tests.api.conftest import world_on
from tests.api.world import World
from tests.metrics.helpers import BASE_SECOND, as_dict, dataset, dataset_batches, expected_summary, publish
from tests.metrics.test_queries import expected_series
from tests.procs import ServiceProcess, create_metrics_streams, eventually, start_service
from tests.cli_commands import api_runner as runner

pytestmark = pytest.mark.timeout(300)

VIEWER = ("viewer", "project")
GROUPS = ["callees", "callers"]  # the world's test, tests/api/world.py
ROWS = 7 * 60  # endpoint-seconds of the data set
#: Its 60 seconds in 10-second buckets (BASE_SECOND is not a multiple of 10).
BUCKETS_10 = len({second // 10 for second in range(BASE_SECOND, BASE_SECOND + 60)})


def stored_summary(run_id: str) -> results_pb2.RunSummary:
    """What the orchestrator stored when it judged the ended run: unlike anything live."""
    success, failed = outcomes.SUCCESS, outcomes.CALL_FAILED
    callers = results_pb2.GroupSummary(group="callers", endpoints=4, calls_attempted=9, calls_failed=2,
                                       failures_by_code={486: 2}, endpoints_failed=1, outcomes=[
                                           results_pb2.OutcomeCount(outcome=success, endpoints=3),
                                           results_pb2.OutcomeCount(outcome=failed, sip_code=486, endpoints=1)])
    callees = results_pb2.GroupSummary(group="callees", endpoints=3, outcomes=[
        results_pb2.OutcomeCount(outcome=success, endpoints=3)])
    total = results_pb2.GroupSummary(endpoints=7, calls_attempted=9, calls_failed=2, failures_by_code={486: 2},
                                     completeness_pct=100.0, endpoints_failed=1, outcomes=[
                                         results_pb2.OutcomeCount(outcome=success, endpoints=6),
                                         results_pb2.OutcomeCount(outcome=failed, sip_code=486, endpoints=1)])
    return results_pb2.RunSummary(run_id=run_id, total=total, groups=[callees, callers], gates=[
        results_pb2.GateResult(gate="mos_avg >= 4.0", observed=4.1, passed=True)])


@dataclass
class Platform:
    world: World
    api: ServiceProcess
    metrics: ServiceProcess
    running: str
    finished: str
    #: A viewer of the other project, who may see nothing of this one.
    outsider: str
    data: dict[str, np.ndarray]

    def metadata(self, who: tuple[str, str] = VIEWER) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.world.tokens[who]}")]


def add_runs(world: World) -> tuple[str, str, str]:
    """The world's run made RUNNING, an ended run with its stored summary, and an outsider's token."""
    now = datetime.now(UTC)
    with Session(world.engine) as session, session.begin():
        running = session.get_one(Run, world.run)
        running.state, running.started_at = "RUN_STATE_RUNNING", now
        finished = Run(test_id=world.test, test_version=1, project_id=world.project, state="RUN_STATE_FINISHED",
                       verdict="VERDICT_PASS", started_at=now - timedelta(minutes=5), ended_at=now - timedelta(minutes=4))
        session.add(finished)
        session.flush()
        finished.summary = stored_summary(finished.id).SerializeToString()
        user = User(name="outsider")
        session.add(user)
        session.flush()
        session.add(RoleBinding(user_id=user.id, role="ROLE_VIEWER", project_id=world.other_project))
        secret = new_secret(API_TOKEN_PREFIX)
        session.add(ApiToken(user_id=user.id, name="outsider", secret_hash=hash_secret(secret)))
        return running.id, finished.id, secret


async def feed(nats_url: str, test_id: str, data: dict[str, np.ndarray], runs: list[tuple[str, int]]) -> None:
    """As the orchestrator and the gateway publish: each run's start notice, then its samples."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for run_id, started in runs:
            await publish_run_started(js, runs_pb2.Run(id=run_id, test_id=test_id, started_at=Timestamp(seconds=started)))
            for batch in dataset_batches(data, run_id):
                await publish(js, batch)
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    tmp = tmp_path_factory.mktemp("results")
    with ExitStack() as stack:
        server = EmbeddedNats(tmp / "nats")
        server.start()
        stack.callback(server.stop)
        create_metrics_streams(server.url)
        url = f"sqlite:///{tmp / 'state.db'}"
        world = world_on(url)
        stack.callback(world.engine.dispose)
        running, finished, outsider = add_runs(world)
        metrics = start_service("metrics", tmp, {"CALLMETER_NATS_URL": server.url,
                                                 "CALLMETER_CLICKHOUSE_URL": f"chdb://{tmp / 'metrics'}"})
        stack.callback(lambda: _stopped(metrics))
        api = start_service("api", tmp, {"CALLMETER_DATABASE_URL": url, "CALLMETER_ORCHESTRATOR_ADDRESS": "127.0.0.1:1",
                                         "CALLMETER_METRICS_ADDRESS": metrics.address})
        stack.callback(lambda: _stopped(api))
        data = dataset()
        asyncio.run(feed(server.url, world.test, data, [(finished, BASE_SECOND), (running, BASE_SECOND + 60)]))
        with sync_channel(metrics.address) as channel:
            direct = results_pb2_grpc.MetricsQueryServiceStub(channel)
            for run_id in (running, finished):
                eventually(lambda r=run_id: direct.GetRunSummary(results_pb2.RunSummaryRequest(
                    run_id=r)).total.endpoint_seconds == ROWS, timeout_s=60, message=f"run {run_id} stored")
            eventually(lambda: len(direct.GetTrend(results_pb2.TrendRequest(test_id=world.test, metric="mos_avg"),
                                                   timeout=10).points) == 2, message="both run notices stored")
        yield Platform(world, api, metrics, running, finished, outsider, data)


def _stopped(service: ServiceProcess) -> None:
    assert service.terminate() == 0, service.log()[-2000:]


Stubs = tuple[runs_pb2_grpc.RunServiceStub, results_pb2_grpc.MetricsQueryServiceStub]


@pytest.fixture
def stubs(platform: Platform) -> Iterator[Stubs]:
    """The API's RunService and, to compare with, metrics-ingest's own queries."""
    with sync_channel(platform.api.address) as api, sync_channel(platform.metrics.address) as metrics:
        yield runs_pb2_grpc.RunServiceStub(api), results_pb2_grpc.MetricsQueryServiceStub(metrics)


def test_a_viewer_reads_the_summary_stored_once_ended_and_a_live_one_before(platform: Platform, stubs: Stubs) -> None:
    runs, direct = stubs
    ended = runs.GetRunSummary(runs_pb2.GetRunSummaryRequest(run_id=platform.finished), metadata=platform.metadata())
    assert ended == stored_summary(platform.finished)
    live = runs.GetRunSummary(runs_pb2.GetRunSummaryRequest(run_id=platform.running), metadata=platform.metadata())
    assert live == direct.GetRunSummary(results_pb2.RunSummaryRequest(run_id=platform.running, groups=GROUPS))
    assert [g.group for g in live.groups] == GROUPS
    assert as_dict(live.total) == expected_summary(platform.data, np.ones(ROWS, dtype=bool))

    codes = runs.GetRunCodes(runs_pb2.GetRunCodesRequest(run_id=platform.finished), metadata=platform.metadata())
    callers = codes.groups[1]
    assert (codes.run_id, [g.group for g in codes.groups]) == (platform.finished, GROUPS)
    assert [(c.outcome, c.sip_code, c.endpoints) for c in callers.outcomes] == [
        (outcomes.SUCCESS, 0, 3), (outcomes.CALL_FAILED, 486, 1)]
    assert (callers.calls_attempted, callers.calls_failed, dict(callers.failures_by_code)) == (9, 2, {486: 2})
    assert dict(codes.total.failures_by_code) == {486: 2} and codes.total.outcomes == stored_summary("").total.outcomes
    live_codes = runs.GetRunCodes(runs_pb2.GetRunCodesRequest(run_id=platform.running), metadata=platform.metadata())
    for group in live_codes.groups:
        expected = expected_summary(platform.data, platform.data["group"] == group.group)
        assert dict(group.failures_by_code) == expected["failures_by_code"], group.group
        assert group.calls_failed == expected["calls_failed"]
        assert sum(c.endpoints for c in group.outcomes) == expected["endpoints"]


def test_series_worst_trend_and_export_are_metrics_ingests_for_the_run(platform: Platform, stubs: Stubs) -> None:
    runs, direct = stubs
    run_id, data, metadata = platform.running, platform.data, platform.metadata()
    for group, endpoint in (("", None), ("callers", None), ("callers", 2)):
        request = runs_pb2.GetRunSeriesRequest(run_id=run_id, metric="rx_jitter_us", group=group, step_s=10,
                                               aggregate="p95")
        if endpoint is not None:
            request.endpoint = endpoint
        reply = runs.GetRunSeries(request, metadata=metadata)
        assert len(reply.points) == BUCKETS_10
        assert reply == direct.GetSeries(results_pb2.SeriesRequest(
            run_id=run_id, metric="rx_jitter_us", group=group, endpoint=-1 if endpoint is None else endpoint,
            step_s=10, aggregate="p95")), (group, endpoint)
    one = (data["group"] == "callers") & (data["endpoint"] == 2)
    mos = runs.GetRunSeries(runs_pb2.GetRunSeriesRequest(run_id=run_id, metric="mos", group="callers", endpoint=2),
                            metadata=metadata)
    assert [(p.second, p.value) for p in mos.points] == expected_series(data["mos"][one] / 100, data["second"][one],
                                                                        1, "avg")

    for metric, lowest_first in (("mos", True), ("rx_jitter_us", False)):
        worst = runs.GetWorstEndpoints(runs_pb2.GetWorstEndpointsRequest(run_id=run_id, metric=metric, limit=3),
                                       metadata=metadata)
        assert worst.lowest_first is lowest_first
        assert list(worst.endpoints) == list(direct.GetTopEndpoints(results_pb2.TopEndpointsRequest(
            run_id=run_id, metric=metric, ascending=lowest_first, limit=3)).endpoints)
        values = [e.value for e in worst.endpoints]
        assert len(values) == 3 and values == sorted(values, reverse=not lowest_first), metric

    trend = runs.GetTestTrend(results_pb2.TrendRequest(test_id=platform.world.test, metric="mos_avg"), metadata=metadata)
    assert [p.run_id for p in trend.points] == [platform.running, platform.finished]  # newest first
    assert trend == direct.GetTrend(results_pb2.TrendRequest(test_id=platform.world.test, metric="mos_avg"))

    pages = list(runs.ExportRunSamples(runs_pb2.ExportRunSamplesRequest(run_id=run_id), metadata=metadata))
    samples = [s for page in pages for s in page.samples]
    assert len(samples) == ROWS and all(len(page.samples) <= EXPORT_PAGE for page in pages)
    assert samples == [s for page in direct.ExportSamples(results_pb2.ExportSamplesRequest(run_id=run_id))
                       for s in page.samples]


def rpc_error(call, request, **kwargs) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as error:
        reply = call(request, timeout=10, **kwargs)
        if not hasattr(reply, "DESCRIPTOR"):  # a stream: the error comes as it is read
            list(reply)
    return error.value


def every_rpc(platform: Platform, runs: runs_pb2_grpc.RunServiceStub) -> list[tuple[object, object]]:
    run_id = platform.finished
    return [(runs.GetRunSummary, runs_pb2.GetRunSummaryRequest(run_id=run_id)),
            (runs.GetRunCodes, runs_pb2.GetRunCodesRequest(run_id=run_id)),
            (runs.GetRunSeries, runs_pb2.GetRunSeriesRequest(run_id=run_id, metric="mos")),
            (runs.GetWorstEndpoints, runs_pb2.GetWorstEndpointsRequest(run_id=run_id, metric="mos")),
            (runs.GetTestTrend, results_pb2.TrendRequest(test_id=platform.world.test, metric="mos_avg")),
            (runs.ExportRunSamples, runs_pb2.ExportRunSamplesRequest(run_id=run_id))]


def test_only_a_viewer_of_the_project_reads_and_bad_requests_name_their_field(platform: Platform, stubs: Stubs) -> None:
    runs, _ = stubs
    for call, request in every_rpc(platform, runs):
        assert rpc_error(call, request).code() == grpc.StatusCode.UNAUTHENTICATED
        denied = rpc_error(call, request, metadata=[("authorization", f"Bearer {platform.outsider}")])
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED and "viewer role" in denied.details(), request
        nobody = rpc_error(call, request, metadata=platform.metadata(("none", "")))
        assert nobody.code() == grpc.StatusCode.PERMISSION_DENIED, request
        missing = type(request)()
        missing.MergeFrom(request)
        setattr(missing, "test_id" if hasattr(missing, "test_id") else "run_id", "no-such-id")
        assert rpc_error(call, missing, metadata=platform.metadata()).code() == grpc.StatusCode.NOT_FOUND, request

    run_id, metadata = platform.finished, platform.metadata()
    for request, field in (
            (runs_pb2.GetRunSeriesRequest(run_id=run_id, metric="moss"), "metric: unknown metric 'moss'"),
            (runs_pb2.GetRunSeriesRequest(run_id=run_id, metric="mos", group="nope"), "group: the run's test has no"),
            (runs_pb2.GetRunSeriesRequest(run_id=run_id, metric="mos", group="callers", endpoint=-1), "endpoint: "),
            (runs_pb2.GetRunSeriesRequest(run_id=run_id, metric="mos", endpoint=1), "endpoint: an endpoint index needs"),
            (runs_pb2.GetRunSeriesRequest(run_id=run_id, metric="mos", aggregate="median"), "aggregate: "),
            (runs_pb2.GetRunSeriesRequest(run_id=run_id, metric="mos", step_s=-5), "step_s: ")):
        error = rpc_error(runs.GetRunSeries, request, metadata=metadata)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith(field), error.details()
    for call, request, field in (
            (runs.GetWorstEndpoints, runs_pb2.GetWorstEndpointsRequest(run_id=run_id, metric="x"), "metric: "),
            (runs.GetWorstEndpoints, runs_pb2.GetWorstEndpointsRequest(run_id=run_id, metric="mos", limit=-1), "limit: "),
            (runs.GetTestTrend, results_pb2.TrendRequest(test_id=platform.world.test, metric="mos"), "metric: ")):
        error = rpc_error(call, request, metadata=metadata)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith(field), error.details()


def test_without_metrics_ingest_the_stored_summary_still_answers(platform: Platform, tmp_path: Path) -> None:
    api = start_service("api", tmp_path, {"CALLMETER_DATABASE_URL": str(platform.world.engine.url),
                                          "CALLMETER_ORCHESTRATOR_ADDRESS": "127.0.0.1:1",
                                          "CALLMETER_METRICS_ADDRESS": "127.0.0.1:1", "CALLMETER_CALL_TIMEOUT_S": "2"})
    try:
        with sync_channel(api.address) as channel:
            runs = runs_pb2_grpc.RunServiceStub(channel)
            for call, request in every_rpc(platform, runs):
                if call is runs.GetRunSummary or call is runs.GetRunCodes:  # the run has ended: nothing to ask
                    assert call(request, metadata=platform.metadata(), timeout=10).run_id == platform.finished
                    continue
                down = rpc_error(call, request, metadata=platform.metadata())
                assert down.code() == grpc.StatusCode.UNAVAILABLE, request
                assert down.details().startswith("metrics-ingest is unavailable"), down.details()
    finally:
        assert api.terminate() == 0, api.log()[-2000:]


# ---------------------------------------------------------------------------------------------
# The CLI


def test_cli_tables_and_json(platform: Platform, capsys: pytest.CaptureFixture[str]) -> None:
    run = runner(capsys, platform.api.address, platform.world.tokens[VIEWER])
    series = run("runs", "series", platform.running, "--metric", "mos", "--group", "callers", "--step", "10s")
    assert series.code == 0, series.err
    lines = series.out.splitlines()
    assert lines[0] == f"mos: avg per 10 s over group callers of run {platform.running}"
    assert lines[1].split() == ["time", "(UTC)", "mos"] and len(lines) == 2 + BUCKETS_10
    as_json = json.loads(run("runs", "series", platform.running, "--metric", "rx_jitter_us", "--step", "30",
                             "--aggregate", "max", "--json").out)
    assert {k: v for k, v in as_json.items() if k != "points"} == {
        "run_id": platform.running, "metric": "rx_jitter_us", "unit": "ms", "group": None, "endpoint": None,
        "step_s": 30, "aggregate": "max"}
    buckets = (platform.data["second"] // 30) * 30
    assert as_json["points"] == [{"second": int(b), "value": float(platform.data["rx_jitter_us"][buckets == b].max()) / 1000}
                                 for b in np.unique(buckets)]

    worst = run("runs", "worst", platform.running, "--by", "mos", "-n", "2")
    assert worst.code == 0 and worst.out.startswith(f"the 2 worst endpoints of run {platform.running} by mos, lowest "
                                                    "first\ngroup"), worst.out
    worst_json = json.loads(run("runs", "worst", platform.running, "--by", "setup_time_ms", "--json").out)
    assert (worst_json["unit"], worst_json["lowest_first"], len(worst_json["endpoints"])) == ("ms", False, 7)

    codes = run("runs", "codes", platform.finished)
    assert codes.code == 0, codes.err
    assert codes.out.splitlines() == [
        f"run {platform.finished}: endpoints by outcome",
        "group    endpoints  outcome",
        "callees          3  success",
        "callers          3  success",
        "callers          1  call failed (SIP 486)",
        "total            6  success",
        "total            1  call failed (SIP 486)",
        "",
        "failed calls by final SIP code",
        "group    SIP code  calls",
        "callers       486      2",
        "total         486      2"]
    codes_json = json.loads(run("runs", "codes", platform.finished, "--json").out)
    assert codes_json["total"] == {"outcomes": [{"outcome": "success", "sip_code": None, "endpoints": 6},
                                                {"outcome": "call_failed", "sip_code": 486, "endpoints": 1}],
                                   "calls_attempted": 9, "calls_failed": 2, "failures_by_code": {"486": 2}}
    assert [g["name"] for g in codes_json["groups"]] == GROUPS

    trend = json.loads(run("tests", "trend", "smoke", "--metric", "mos_avg", "--json").out)
    assert [p["run_id"] for p in trend["points"]] == [platform.running, platform.finished]
    assert (trend["test_id"], trend["test"]) == (platform.world.test, "smoke")
    table = run("tests", "trend", platform.world.test, "--metric", "mos_avg", "-n", "1")
    assert table.code == 0 and table.out.splitlines()[2].startswith(platform.running), table.out


def test_cli_export_writes_every_endpoint_second_in_units(platform: Platform, capsys: pytest.CaptureFixture[str],
                                                          tmp_path: Path) -> None:
    run = runner(capsys, platform.api.address, platform.world.tokens[VIEWER])
    target = tmp_path / "run.csv"
    done = run("runs", "export", platform.running, "--csv", str(target))
    assert done.code == 0 and done.out == f"wrote {ROWS} endpoint-seconds of run {platform.running} to {target}\n"
    with target.open(newline="") as rows_file:
        rows = list(csv.reader(rows_file))
    assert rows[0] == ["group", "endpoint", "second", *(m.name for m in METRICS)]
    assert len(rows) == 1 + ROWS and list(tmp_path.iterdir()) == [target], "no partial file left"
    lines = [json.loads(line) for line in run("runs", "export", platform.running, "--json").out.splitlines()]
    assert len(lines) == ROWS
    for row, line in zip(rows[1:], lines, strict=True):
        assert row[:3] == [line["group"], str(line["endpoint"]), str(line["second"])]
        cells = dict(zip(rows[0][3:], row[3:], strict=True))
        assert {name: cell for name, cell in cells.items() if cell} == {
            name: str(int(value) if isinstance(value, bool) else value) for name, value in line["metrics"].items()}
    # A known row: the data set's, in units, not measured left empty.
    data = platform.data
    first = dict(zip(rows[0], rows[1], strict=True))
    assert (first["group"], first["endpoint"], first["second"]) == ("callees", "0", str(BASE_SECOND))
    index = np.flatnonzero((data["group"] == "callees") & (data["endpoint"] == 0) & (data["second"] == BASE_SECOND))[0]
    assert first["rx_jitter_us"] == str(data["rx_jitter_us"][index] / 1000)
    assert first["registered"] == str(int(data["registered"][index]))
    assert first["tx_mos"] == "", "never measured: an empty cell, not 0"
    assert first["rx_packets"] == str(data["rx_packets"][index]), "a counter's 0 is measured"


def test_cli_refuses_bad_input_in_one_line_with_exit_2(platform: Platform, capsys: pytest.CaptureFixture[str],
                                                       tmp_path: Path) -> None:
    run = runner(capsys, platform.api.address, platform.world.tokens[VIEWER])
    step = run("runs", "series", platform.running, "--metric", "mos", "--step", "2.5s")
    assert step.code == 2 and step.err.splitlines()[-1].endswith(
        "argument --step: must be a whole number of seconds from 1s to 86400s (got 2.5s)"), step.err
    assert run("runs", "series", platform.running, "--metric", "mos", "--step", "soon").code == 2
    unknown = run("runs", "worst", platform.running, "--by", "moss")
    assert (unknown.code, unknown.err) == (2, "callmeter: error: invalid_argument: metric: unknown metric 'moss'; "
                                              "see docs/metrics.md for the catalog\n")
    denied = runner(capsys, platform.api.address, platform.outsider)("runs", "codes", platform.running)
    assert denied.code == 2 and denied.err.startswith("callmeter: error: permission_denied: reading a run's results "
                                                      "needs the viewer role"), denied.err
    # An unwritable file is refused before the API is called (there is none at this address).
    nowhere = tmp_path / "missing" / "run.csv"
    refused = run("runs", "export", platform.running, "--csv", str(nowhere), "--api", "127.0.0.1:1")
    assert (refused.code, refused.err) == (2, f"callmeter: error: --csv {nowhere}: its directory {nowhere.parent} "
                                              "does not exist\n")
    failed = run("runs", "export", "no-such-run", "--csv", str(tmp_path / "x.csv"))
    assert failed.code == 2 and "not_found" in failed.err and list(tmp_path.iterdir()) == []
    assert run("runs", "export", platform.running).code == 2, "--csv FILE or --json is required"
