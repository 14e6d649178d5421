"""TestService and RunService handlers: versions, names, paging, archive, validation, QUEUED runs."""

from __future__ import annotations

import functools
from datetime import timedelta

import pytest
import sqlalchemy as sa
from google.protobuf.duration_pb2 import Duration
from sqlalchemy.orm import Session

from callmeter.common.errors import CallmeterError, ErrorCode
from callmeter.state.models import Project, Run, Test, Worker, utcnow
from callmeter.v1 import common_pb2, results_pb2, runs_pb2, tests_pb2, workers_pb2
from services.api.handlers import runs, tests
from tests.api.world import World, valid_spec

EDITOR = ("editor", "project")
start_run = functools.partial(runs.start_run, default_timeout_s=600)


def error_of(call, handler, request) -> CallmeterError:  # type: ignore[no-untyped-def]
    with pytest.raises(CallmeterError) as error:
        call(handler, request)
    return error.value


def test_create_goes_to_the_only_project_and_names_are_unique(world: World) -> None:
    with world.acting(EDITOR) as call:
        created = call(tests.create_test, tests_pb2.CreateTestRequest(spec=valid_spec("new")))
        assert (created.project_id, created.version, created.spec.name) == (world.project, 1, "new")
        clash = error_of(call, tests.create_test, tests_pb2.CreateTestRequest(spec=valid_spec("new")))
        assert clash.code == ErrorCode.ALREADY_EXISTS
    with world.acting(("editor", "organization")) as call:
        # The organization's editor sees the organization's every project: it must say which.
        call(lambda session, _p, _r: session.add(Project(organization_id=world.organization, name="second")), None)
        ambiguous = error_of(call, tests.create_test, tests_pb2.CreateTestRequest(spec=valid_spec("new")))
        assert ambiguous.code == ErrorCode.INVALID_ARGUMENT and "project_id" in ambiguous.detail


def test_updates_make_versions_and_runs_pin_them(world: World) -> None:
    with world.acting(EDITOR) as call:
        changed = valid_spec()
        changed.description = "v2"
        updated = call(tests.update_test, tests_pb2.UpdateTestRequest(test_id=world.test, spec=changed))
        assert updated.version == 2
        assert call(tests.get_test, tests_pb2.GetTestRequest(test_id=world.test)).spec.description == "v2"
        assert call(tests.get_test, tests_pb2.GetTestRequest(test_id=world.test, version=1)).spec.description == ""
        assert error_of(call, tests.get_test, tests_pb2.GetTestRequest(test_id=world.test, version=7)).code \
            == ErrorCode.NOT_FOUND
        assert call(start_run, runs_pb2.StartRunRequest(test_id=world.test)).test_version == 2
        assert call(start_run, runs_pb2.StartRunRequest(test_id=world.test, test_version=1)).test_version == 1


def test_invalid_specs_store_nothing_and_list_every_problem(world: World) -> None:
    spec = valid_spec("broken")
    spec.groups[1].codecs.append("opus")
    spec.gates.add(metric="mos", comparison=tests_pb2.COMPARISON_GE, threshold=1)
    with pytest.raises(CallmeterError) as error:
        world.call(EDITOR, tests.create_test, tests_pb2.CreateTestRequest(project_id=world.project, spec=spec))
    assert error.value.code == ErrorCode.INVALID_ARGUMENT
    lines = error.value.detail.splitlines()[1:]
    assert [line.split(":")[0] for line in lines] == ["groups[1].codecs[1]", "gates[1].metric"]
    assert lines[0].startswith('groups[1].codecs[1]: "opus" is not available on any worker')
    with Session(world.engine) as session:
        assert session.scalar(sa.select(Test).where(Test.name == "broken")) is None
    reply = world.call(("viewer", "project"), tests.validate_test, tests_pb2.ValidateTestRequest(spec=spec))
    assert [v.field for v in reply.violations] == ["groups[1].codecs[1]", "gates[1].metric"]


def test_codecs_are_checked_against_the_registered_workers(world: World) -> None:
    with world.acting(EDITOR) as call:
        def only_pcmu(session: Session, _principal: object, _request: object) -> None:
            worker = session.get_one(Worker, world.project_worker)
            worker.capacity = workers_pb2.WorkerCapacity(codecs=["PCMU/8000/1"]).SerializeToString()

        call(only_pcmu, None)
        spec = valid_spec()
        spec.groups[1].codecs[:] = ["PCMU", "PCMA"]
        reply = call(tests.validate_test, tests_pb2.ValidateTestRequest(spec=spec))
        assert [v.field for v in reply.violations] == ["groups[1].codecs[1]"]


def test_list_pages_and_delete_destroys_or_archives(world: World) -> None:
    with world.acting(EDITOR) as call:
        for name in ("b", "c"):
            call(tests.create_test, tests_pb2.CreateTestRequest(spec=valid_spec(name)))
        first = call(tests.list_tests, tests_pb2.ListTestsRequest(page=common_pb2.PageRequest(page_size=2)))
        assert [t.spec.name for t in first.tests] == ["smoke", "b"] and first.page.next_page_token
        rest = call(tests.list_tests, tests_pb2.ListTestsRequest(
            page=common_pb2.PageRequest(page_size=2, page_token=first.page.next_page_token)))
        assert [t.spec.name for t in rest.tests] == ["c"] and not rest.page.next_page_token
        bad = error_of(call, tests.list_tests, tests_pb2.ListTestsRequest(page=common_pb2.PageRequest(page_token="x")))
        assert bad.code == ErrorCode.INVALID_ARGUMENT

        c = rest.tests[0]
        assert not call(tests.delete_test, tests_pb2.DeleteTestRequest(test_id=c.id)).archived
        assert error_of(call, tests.get_test, tests_pb2.GetTestRequest(test_id=c.id)).code == ErrorCode.NOT_FOUND
        assert call(tests.delete_test, tests_pb2.DeleteTestRequest(test_id=world.test)).archived  # it has a run
        assert [t.spec.name for t in call(tests.list_tests, tests_pb2.ListTestsRequest()).tests] == ["b"]
        assert len(call(tests.list_tests, tests_pb2.ListTestsRequest(include_archived=True)).tests) == 2
        refused = error_of(call, start_run, runs_pb2.StartRunRequest(test_id=world.test))
        assert refused.code == ErrorCode.FAILED_PRECONDITION
        assert not call(tests.update_test, tests_pb2.UpdateTestRequest(test_id=world.test, spec=valid_spec())).archived


def row(session: Session, _principal: object, run_id: str) -> Run:
    return session.get_one(Run, run_id)


def test_start_run_inserts_a_queued_run_with_its_deadline(world: World) -> None:
    with world.acting(("owner", "organization")) as call:
        started = call(start_run, runs_pb2.StartRunRequest(test_id=world.test))
        assert started.state == runs_pb2.RUN_STATE_QUEUED and started.test_version == 1
        run = call(row, started.id)
        assert run.deadline_at - run.created_at == timedelta(seconds=600)  # the spec sets no timeout
        assert run.started_by == call(lambda _s, principal, _r: principal.user.id, None)

        spec = valid_spec()
        spec.timeout.CopyFrom(Duration(seconds=30))
        call(tests.update_test, tests_pb2.UpdateTestRequest(test_id=world.test, spec=spec))
        second = call(start_run, runs_pb2.StartRunRequest(test_id=world.test))
        run = call(row, second.id)
        assert run.deadline_at - run.created_at == timedelta(seconds=30)

        listed = call(runs.list_runs, runs_pb2.ListRunsRequest(test_id=world.test))
        assert [r.id for r in listed.runs][:2] == [second.id, started.id]  # newest first
        assert len(listed.runs) == 3


def test_a_run_the_orchestrator_did_not_take_is_failed_once(world: World) -> None:
    with world.acting(("runner", "project")) as call:
        started = call(start_run, runs_pb2.StartRunRequest(test_id=world.test))
        call(lambda session, _p, run_id: runs.fail_unsubmitted_run(session, run_id, "the orchestrator is unreachable"),
             started.id)
        failed = call(runs.get_run, runs_pb2.GetRunRequest(run_id=started.id))
        assert failed.state == runs_pb2.RUN_STATE_FAILED and failed.verdict == runs_pb2.VERDICT_ERROR
        assert list(failed.reasons) == ["the orchestrator is unreachable"] and failed.HasField("ended_at")

        def dispatched(session: Session, _p: object, run_id: str) -> None:
            session.get_one(Run, run_id).state = "RUN_STATE_DISPATCHING"
            runs.fail_unsubmitted_run(session, run_id, "late")

        other = call(start_run, runs_pb2.StartRunRequest(test_id=world.test))
        call(dispatched, other.id)
        assert call(runs.get_run, runs_pb2.GetRunRequest(run_id=other.id)).state == runs_pb2.RUN_STATE_DISPATCHING


def test_watch_view_has_groups_elapsed_time_and_the_final_summary(world: World) -> None:
    summary = results_pb2.RunSummary(run_id=world.run, groups=[results_pb2.GroupSummary(group="callers", mos_avg=4.2)])

    def finish(session: Session, _p: object, _r: object) -> None:
        run = session.get_one(Run, world.run)
        run.state, run.summary = "RUN_STATE_FINISHED", summary.SerializeToString()
        run.started_at = utcnow() - timedelta(seconds=20)
        run.ended_at = run.started_at + timedelta(seconds=12)

    with world.acting(("viewer", "organization")) as call:
        call(finish, None)
        view = call(runs.watch_target, runs_pb2.WatchRunRequest(run_id=world.run))
    assert view.groups == ["callees", "callers"]
    assert view.summary == summary
    assert view.elapsed_s(utcnow()) == pytest.approx(12)
