"""The real `callmeter api` process: authentication, and runs handed to the orchestrator.

The orchestrator belongs to another engineer, and without real workers and SIP peers it can take a
run no further than FAILED. So most tests use a recording stand-in served in this process, which
checks only what the API must do: the run row is there when SubmitRun arrives, the API answers
with the orchestrator's Run, WatchRun follows the states the orchestrator writes, and the run is
failed with UNAVAILABLE when no orchestrator answers. One test uses the real orchestrator.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent import futures
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from sqlalchemy.orm import Session

from callmeter.common.channels import sync_channel
from callmeter.common.tokens import API_TOKEN_PREFIX, hash_secret, new_secret
from callmeter.state.convert import run_to_proto
from callmeter.state.models import ApiToken, Run, User, utcnow
from callmeter.v1 import (
    orchestrator_pb2_grpc,
    results_pb2,
    runs_pb2,
    runs_pb2_grpc,
    tenancy_pb2,
    tenancy_pb2_grpc,
    tests_pb2,
    tests_pb2_grpc,
)
from callmeter.common.stores.nats import EmbeddedNats
from tests.api.conftest import world_on
from tests.api.world import World, valid_spec
from tests.procs import ServiceProcess, run_callmeter, start_service

OWNER = ("owner", "organization")
SUMMARY = results_pb2.RunSummary(groups=[results_pb2.GroupSummary(group="callers", endpoints=2, mos_avg=4.3)],
                                 gates=[results_pb2.GateResult(gate="mos_avg >= 4.0", observed=4.3, passed=True)])


class RecordingOrchestrator(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    """Stand-in for services/orchestrator (see the module docstring). With ``finish`` set, SubmitRun
    ends the run at once with a PASS and SUMMARY, as the real one does at the end of a run."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.submitted: list[runs_pb2.Run] = []
        self.cancelled: list[str] = []
        self.finish = False

    def SubmitRun(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        with Session(self.world.engine) as session, session.begin():
            run = session.get_one(Run, request.run_id)
            self.submitted.append(run_to_proto(run))
            if self.finish:
                run.state, run.verdict = "RUN_STATE_FINISHED", "VERDICT_PASS"
                run.started_at, run.ended_at = utcnow() - timedelta(seconds=2), utcnow()
                run.summary = results_pb2.RunSummary(run_id=run.id, groups=SUMMARY.groups,
                                                      gates=SUMMARY.gates).SerializeToString()
            return run_to_proto(run)

    def CancelRun(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        self.cancelled.append(request.run_id)
        with Session(self.world.engine) as session, session.begin():
            run = session.get_one(Run, request.run_id)
            run.state = "RUN_STATE_CANCELLED"
            return run_to_proto(run)


class Platform:
    def __init__(self, world: World, api: ServiceProcess, orchestrator: RecordingOrchestrator) -> None:
        self.world, self.api, self.orchestrator = world, api, orchestrator

    def metadata(self, who: tuple[str, str] = OWNER) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.world.tokens[who]}")]


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    tmp = tmp_path_factory.mktemp("api")
    url = f"sqlite:///{tmp / 'state.db'}"
    world = world_on(url)
    orchestrator = RecordingOrchestrator(world)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(orchestrator, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    api = start_service("api", tmp, {
        "CALLMETER_DATABASE_URL": url, "CALLMETER_ORCHESTRATOR_ADDRESS": f"127.0.0.1:{port}",
        "CALLMETER_METRICS_ADDRESS": "127.0.0.1:1", "CALLMETER_WATCH_INTERVAL_S": "0.2"})
    try:
        yield Platform(world, api, orchestrator)
    finally:
        code = api.terminate()
        server.stop(0)
        world.engine.dispose()
    assert code == 0, api.log()[-2000:]


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as error:
        call(*args, **kwargs)
    return error.value


def test_every_call_needs_a_valid_token_and_the_role(platform: Platform) -> None:
    world = platform.world
    with Session(world.engine) as session, session.begin():
        user = User(name="expired")
        session.add(user)
        session.flush()
        expired = new_secret(API_TOKEN_PREFIX)
        session.add(ApiToken(user_id=user.id, name="old", secret_hash=hash_secret(expired),
                             expires_at=utcnow() - timedelta(minutes=1)))
    with sync_channel(platform.api.address) as channel:
        tenancy = tenancy_pb2_grpc.TenancyServiceStub(channel)
        missing = rpc_error(tenancy.WhoAmI, tenancy_pb2.WhoAmIRequest(), timeout=10)
        assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
        bad = rpc_error(tenancy.WhoAmI, tenancy_pb2.WhoAmIRequest(), metadata=[("authorization", "Bearer cma_nope")],
                        timeout=10)
        assert bad.code() == grpc.StatusCode.UNAUTHENTICATED
        old = rpc_error(tenancy.WhoAmI, tenancy_pb2.WhoAmIRequest(), metadata=[("authorization", f"Bearer {expired}")],
                        timeout=10)
        assert old.code() == grpc.StatusCode.UNAUTHENTICATED and "expired" in old.details()
        assert tenancy.WhoAmI(tenancy_pb2.WhoAmIRequest(), metadata=platform.metadata(), timeout=10).user.name \
            == "owner-org"

        tests = tests_pb2_grpc.TestServiceStub(channel)
        denied = rpc_error(tests.CreateTest, tests_pb2.CreateTestRequest(spec=valid_spec("viewer's")),
                           metadata=platform.metadata(("viewer", "project")), timeout=10)
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED and "editor" in denied.details()

        spec = valid_spec("bad")
        spec.groups[1].codecs[:] = ["opus"]
        invalid = rpc_error(tests.CreateTest, tests_pb2.CreateTestRequest(spec=spec), metadata=platform.metadata(),
                            timeout=10)
        assert invalid.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert 'groups[1].codecs[0]: "opus" is not available on any worker' in invalid.details()


def test_runs_go_through_the_orchestrator_and_watch_ends_with_the_summary(platform: Platform) -> None:
    world, orchestrator = platform.world, platform.orchestrator
    with sync_channel(platform.api.address) as channel:
        runs = runs_pb2_grpc.RunServiceStub(channel)
        started = runs.StartRun(runs_pb2.StartRunRequest(test_id=world.test), metadata=platform.metadata(), timeout=10)
        assert orchestrator.submitted[-1].id == started.id
        assert orchestrator.submitted[-1].state == runs_pb2.RUN_STATE_QUEUED  # stored before SubmitRun

        watch = runs.WatchRun(runs_pb2.WatchRunRequest(run_id=started.id), metadata=platform.metadata(), timeout=30)
        assert next(watch).state == runs_pb2.RUN_STATE_QUEUED
        with Session(world.engine) as session, session.begin():  # what the orchestrator writes at the end
            run = session.get_one(Run, started.id)
            run.state, run.started_at, run.ended_at = "RUN_STATE_FINISHED", utcnow() - timedelta(seconds=5), utcnow()
            run.summary = SUMMARY.SerializeToString()
        last = list(watch)[-1]
        assert last.state == runs_pb2.RUN_STATE_FINISHED and last.summary == SUMMARY
        assert last.elapsed_s == pytest.approx(5, abs=0.5)

        other = runs.StartRun(runs_pb2.StartRunRequest(test_id=world.test), metadata=platform.metadata(), timeout=10)
        assert runs.CancelRun(runs_pb2.CancelRunRequest(run_id=other.id), metadata=platform.metadata(),
                              timeout=10).state == runs_pb2.RUN_STATE_CANCELLED
        assert orchestrator.cancelled == [other.id]


def test_an_unreachable_orchestrator_fails_the_run(platform: Platform, tmp_path: Path) -> None:
    api = start_service("api", tmp_path, {"CALLMETER_DATABASE_URL": str(platform.world.engine.url),
                                          "CALLMETER_ORCHESTRATOR_ADDRESS": "127.0.0.1:1"})
    try:
        with sync_channel(api.address) as channel:
            runs = runs_pb2_grpc.RunServiceStub(channel)
            down = rpc_error(runs.StartRun, runs_pb2.StartRunRequest(test_id=platform.world.test),
                             metadata=platform.metadata(), timeout=10)
            assert down.code() == grpc.StatusCode.UNAVAILABLE and "orchestrator" in down.details()
            latest = runs.ListRuns(runs_pb2.ListRunsRequest(test_id=platform.world.test),
                                   metadata=platform.metadata(), timeout=10).runs[0]
    finally:
        assert api.terminate() == 0
    assert latest.state == runs_pb2.RUN_STATE_FAILED and latest.verdict == runs_pb2.VERDICT_ERROR
    assert "orchestrator is unreachable" in latest.reasons[0]


@pytest.fixture
def finishing(platform: Platform) -> Iterator[Platform]:
    platform.orchestrator.finish = True
    yield platform
    platform.orchestrator.finish = False


def test_cli_applies_runs_and_reports(finishing: Platform, tmp_path: Path) -> None:
    platform = finishing
    env = {"CALLMETER_API": platform.api.address, "CALLMETER_TOKEN": platform.world.tokens[OWNER],
           "CALLMETER_PROFILE": str(tmp_path / "no-profile.json")}
    test_file = tmp_path / "cli.yaml"
    test_file.write_text("""
name: cli
groups:
  - {name: callees, count: 1, role: callee, target: {aor: "sip:{n}@127.0.0.1:5070"}}
  - {name: callers, count: 1, role: caller, codecs: [PCMA], target: {call_uri: "group:callees"}}
gates:
  - {metric: mos_avg, comparison: ge, threshold: 4}
""")
    applied = run_callmeter("test", "apply", str(test_file), env=env)
    assert applied.returncode == 0 and "'cli' created" in applied.stdout, applied.stderr
    again = run_callmeter("test", "apply", str(test_file), env=env)
    assert "'cli' unchanged" in again.stdout and "version 1" in again.stdout, again.stderr
    test_file.write_text(test_file.read_text().replace("threshold: 4", "threshold: 3.5"))
    updated = run_callmeter("test", "apply", str(test_file), env=env)
    assert "'cli' updated" in updated.stdout and "version 2" in updated.stdout, updated.stderr

    junit = tmp_path / "junit.xml"
    ran = run_callmeter("run", str(test_file), "--wait", "--json", "--junit", str(junit), "--timeout", "30", env=env)
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert (result["state"], result["verdict"]) == ("finished", "pass")
    assert result["groups"][0]["name"] == "callers" and result["groups"][0]["mos_avg"] == 4.3
    assert 'name="mos_avg &gt;= 4.0"' in junit.read_text()

    listed = run_callmeter("runs", "list", "--test", "cli", env=env)
    assert listed.returncode == 0 and result["run_id"] in listed.stdout, listed.stderr
    shown = run_callmeter("runs", "show", result["run_id"], env=env)
    assert shown.returncode == 0 and "verdict PASS" in shown.stdout and "callers" in shown.stdout, shown.stderr


def test_the_real_orchestrator_answers_start_run(platform: Platform, tmp_path: Path,
                                                 nats_server: EmbeddedNats) -> None:
    url = str(platform.world.engine.url)
    orchestrator = start_service("orchestrator", tmp_path, {
        "CALLMETER_DATABASE_URL": url, "CALLMETER_NATS_URL": nats_server.url, "CALLMETER_METRICS_ADDRESS": "127.0.0.1:1"})
    api = start_service("api", tmp_path, {"CALLMETER_DATABASE_URL": url,
                                          "CALLMETER_ORCHESTRATOR_ADDRESS": orchestrator.address})
    try:
        with sync_channel(api.address) as channel:
            run = runs_pb2_grpc.RunServiceStub(channel).StartRun(
                runs_pb2.StartRunRequest(test_id=platform.world.test), metadata=platform.metadata(), timeout=10)
    finally:
        codes = [api.terminate(), orchestrator.terminate()]
    assert codes == [0, 0]
    # The world's workers report no codecs, so the orchestrator cannot place the run and says why.
    assert run.state == runs_pb2.RUN_STATE_FAILED and "capacity" in run.reasons[0]
