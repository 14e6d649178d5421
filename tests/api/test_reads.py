"""The hot reads (GetRun, GetTest, ListRuns, ListTests) select columns rather than load ORM objects:
their answers equal the ORM rows' conversion, placements and versions included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.orm import Session

from callmeter.common.errors import CallmeterError, ErrorCode
from callmeter.state import convert
from callmeter.state.convert import run_to_proto, set_time
from callmeter.state.models import Run, RunPlacement, Test, TestVersion, utcnow
from callmeter.v1 import runs_pb2, tests_pb2
from services.api.handlers import runs, tests
from tests.api.world import World, valid_spec

VIEWER = ("viewer", "project")


def orm_run(session: Session, run_id: str) -> runs_pb2.Run:
    placements = session.scalars(sa.select(RunPlacement).where(RunPlacement.run_id == run_id)
                                 .order_by(RunPlacement.group_name, RunPlacement.first_index))
    return run_to_proto(session.get_one(Run, run_id), list(placements))


def test_get_run_and_list_runs_answer_as_the_orm_rows_convert(world: World) -> None:
    with world.acting(VIEWER) as call:
        def placed(session: Session, _p: object, _r: object) -> str:
            run = Run(test_id=world.test, test_version=1, project_id=world.project, state="RUN_STATE_FINISHED",
                      verdict="VERDICT_FAIL", reasons=["mos_avg 3.9 < 4.0"], started_by=world.member,
                      started_at=utcnow() - timedelta(seconds=30), ended_at=utcnow())
            session.add(run)
            session.flush()
            # Given out of order: GetRun orders them by group, then first index.
            for worker, group, first in ((world.project_worker, "callers", 0),
                                         (world.organization_worker, "callees", 5),
                                         (world.project_worker, "callees", 0)):
                session.add(RunPlacement(run_id=run.id, worker_id=worker, group_name=group, first_index=first,
                                         count=5, role="ENDPOINT_ROLE_CALLEE", state="ASSIGNMENT_STATE_RUNNING"))
            return run.id  # not flushed: a read flushes first, as an ORM query would

        run_id = call(placed, None)
        got = call(runs.get_run, runs_pb2.GetRunRequest(run_id=run_id))
        assert got == call(lambda session, _p, _r: orm_run(session, run_id), None)
        assert [(p.group, p.first_index) for p in got.placements] == [("callees", 0), ("callees", 5), ("callers", 0)]
        assert got.reasons == ["mos_avg 3.9 < 4.0"] and got.HasField("ended_at")

        bare = call(runs.get_run, runs_pb2.GetRunRequest(run_id=world.run))
        assert bare == call(lambda session, _p, _r: orm_run(session, world.run), None) and not bare.placements

        listed = call(runs.list_runs, runs_pb2.ListRunsRequest(project_id=world.project))
        expected = call(lambda session, _p, _r: [run_to_proto(run) for run in session.scalars(
            sa.select(Run).where(Run.project_id == world.project).order_by(Run.created_at.desc(), Run.id.desc()))],
            None)
        assert list(listed.runs) == expected and listed.runs[0].id == run_id
        assert list(call(runs.list_runs, runs_pb2.ListRunsRequest()).runs) == expected, "every project it sees"


def test_reads_are_refused_and_missing_as_before(world: World) -> None:
    for handler, request in ((runs.get_run, runs_pb2.GetRunRequest(run_id=world.run)),
                             (tests.get_test, tests_pb2.GetTestRequest(test_id=world.test)),
                             (runs.list_runs, runs_pb2.ListRunsRequest(project_id=world.project))):
        with pytest.raises(CallmeterError) as refused:
            world.call(("none", ""), handler, request)
        assert refused.value.code == ErrorCode.PERMISSION_DENIED and "viewer" in refused.value.detail
    for handler, request, detail in (
            (runs.get_run, runs_pb2.GetRunRequest(run_id="nope"), "no run 'nope'"),
            (tests.get_test, tests_pb2.GetTestRequest(test_id="nope"), "no test 'nope'"),
            (tests.get_test, tests_pb2.GetTestRequest(test_id=world.test, version=9),
             f"test {world.test!r} has no version 9"),
            (runs.list_runs, runs_pb2.ListRunsRequest(project_id="nope"), "no project 'nope'")):
        with pytest.raises(CallmeterError) as missing:
            world.call(VIEWER, handler, request)
        assert (missing.value.code, missing.value.detail) == (ErrorCode.NOT_FOUND, detail)


def test_get_test_and_list_tests_answer_as_the_orm_rows_convert(world: World) -> None:
    with world.acting(("editor", "project")) as call:
        changed = valid_spec()
        changed.description = "v2"
        call(tests.update_test, tests_pb2.UpdateTestRequest(test_id=world.test, spec=changed))

        def orm_test(session: Session, _p: object, version: int) -> tests_pb2.Test:
            test = session.get_one(Test, world.test)
            return convert.test_to_proto(test, session.get_one(TestVersion, (test.id, version or test.current_version)))

        for version in (0, 1, 2):
            assert call(tests.get_test, tests_pb2.GetTestRequest(test_id=world.test, version=version)) \
                == call(orm_test, version)
        [listed] = call(tests.list_tests, tests_pb2.ListTestsRequest(project_id=world.project)).tests
        assert listed == call(orm_test, 0) and listed.spec.description == "v2"


@pytest.mark.parametrize("value", [
    datetime(2026, 12, 4, 20, 1, 2, 345678, tzinfo=UTC),
    datetime(2026, 12, 4, 22, 1, 2, 5, tzinfo=timezone(timedelta(hours=2))),
    datetime(1969, 7, 20, 20, 17, 40, 1, tzinfo=UTC),
])
def test_set_time_equals_from_datetime(value: datetime) -> None:
    fast, slow = Timestamp(), Timestamp()
    set_time(fast, value)
    slow.FromDatetime(value)
    assert fast == slow
