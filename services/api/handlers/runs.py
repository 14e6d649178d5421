"""RunService: the API's side of a run. The orchestrator owns the lifecycle once a run is submitted;
the API inserts the QUEUED row, reads rows back, and fails a run it could not hand over."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from callmeter.common.errors import CallmeterError, ErrorCode
from callmeter.state.convert import run_to_proto
from callmeter.state.models import Project, Run, RunPlacement, Test, TestVersion, utcnow
from callmeter.v1 import results_pb2, runs_pb2, tests_pb2
from services.api.auth import RUNNER, VIEWER, Principal, autoflush, project_for, read, require, require_in_project
from services.api.paging import page

_runs, _placements, _projects = Run.__table__, RunPlacement.__table__, Project.__table__
#: What run_to_proto reads of a run (not its summary).
_RUN_COLUMNS = (_runs.c.id, _runs.c.test_id, _runs.c.test_version, _runs.c.project_id, _runs.c.state, _runs.c.verdict,
                _runs.c.reasons, _runs.c.started_by, _runs.c.created_at, _runs.c.started_at, _runs.c.ended_at)
# GetRun in one query: the run, its project's organization (for the role check) and its placements,
# a row per placement (one with NULL placement columns when it has none). No column name is in
# both tables, so a row serves run_to_proto as the run and as a placement.
_RUN_WITH_PLACEMENTS = (
    sa.select(*_RUN_COLUMNS, _projects.c.organization_id, _placements.c.worker_id,
              _placements.c.group_name, _placements.c.first_index, _placements.c.count,
              _placements.c.role)
    .join(_projects, _projects.c.id == _runs.c.project_id)
    .outerjoin(_placements, _placements.c.run_id == _runs.c.id)
    .where(_runs.c.id == sa.bindparam("run_id"))
    .order_by(_placements.c.group_name, _placements.c.first_index)
)
# ListRuns' order (newest first); a call adds its filters.
_LIST_RUNS = sa.select(*_RUN_COLUMNS).order_by(_runs.c.created_at.desc(), _runs.c.id.desc())


@dataclass(frozen=True)
class RunView:
    """A run as WatchRun shows it."""

    run: runs_pb2.Run
    #: The test's group names, so that groups without samples yet still appear.
    groups: list[str]
    #: The final summary, once the orchestrator has judged the run.
    summary: results_pb2.RunSummary | None

    def elapsed_s(self, now: datetime) -> float:
        """Seconds since the run started executing (to its end once it has ended)."""
        if not self.run.HasField("started_at"):
            return 0.0
        end = self.run.ended_at.ToDatetime(tzinfo=now.tzinfo) if self.run.HasField("ended_at") else now
        return max(0.0, (end - self.run.started_at.ToDatetime(tzinfo=now.tzinfo)).total_seconds())


def _run(session: Session, principal: Principal, run_id: str, needed: int, what: str) -> Run:
    run = session.get(Run, run_id) if run_id else None
    if run is None:
        raise CallmeterError(ErrorCode.NOT_FOUND, f"no run {run_id!r}")
    project_for(session, principal, run.project_id, needed, what)
    return run


def start_run(session: Session, principal: Principal, request: runs_pb2.StartRunRequest, *,
              default_timeout_s: float) -> runs_pb2.Run:
    """Inserts the run, QUEUED, pinned to a version; the servicer then submits it to the orchestrator."""
    test = session.get(Test, request.test_id) if request.test_id else None
    if test is None:
        raise CallmeterError(ErrorCode.NOT_FOUND, f"no test {request.test_id!r}")
    project_for(session, principal, test.project_id, RUNNER, "starting a run")
    if test.archived:
        raise CallmeterError(ErrorCode.FAILED_PRECONDITION,
                             f"test {test.name!r} is archived; update it to run it again")
    version = session.get(TestVersion, (test.id, request.test_version or test.current_version))
    if version is None:
        raise CallmeterError(ErrorCode.NOT_FOUND, f"test {test.name!r} has no version {request.test_version}")
    spec = tests_pb2.TestSpec.FromString(version.spec)
    timeout = spec.timeout.ToTimedelta() or timedelta(seconds=default_timeout_s)
    now = utcnow()
    run = Run(test_id=test.id, test_version=version.version, project_id=test.project_id,
              state=runs_pb2.RunState.Name(runs_pb2.RUN_STATE_QUEUED), started_by=principal.user.id,
              created_at=now, deadline_at=now + timeout)
    session.add(run)
    session.flush()
    return run_to_proto(run)


def fail_unsubmitted_run(session: Session, run_id: str, reason: str) -> None:
    """Marks a run FAILED that the orchestrator did not take; a run it already moved on is left alone."""
    session.execute(sa.update(Run).where(Run.id == run_id,
                                         Run.state == runs_pb2.RunState.Name(runs_pb2.RUN_STATE_QUEUED))
                    .values(state=runs_pb2.RunState.Name(runs_pb2.RUN_STATE_FAILED),
                            verdict=runs_pb2.Verdict.Name(runs_pb2.VERDICT_ERROR), reasons=[reason],
                            ended_at=utcnow()))


def get_run(session: Session, principal: Principal, request: runs_pb2.GetRunRequest) -> runs_pb2.Run:
    rows = read(session, _RUN_WITH_PLACEMENTS, {"run_id": request.run_id}).all() if request.run_id else []
    if not rows:
        raise CallmeterError(ErrorCode.NOT_FOUND, f"no run {request.run_id!r}")
    run = rows[0]
    require(principal.role_in_project(run.project_id, run.organization_id), VIEWER, "reading a run")
    return run_to_proto(run, [row for row in rows if row.worker_id is not None])


def list_runs(session: Session, principal: Principal, request: runs_pb2.ListRunsRequest) -> runs_pb2.ListRunsResponse:
    """Newest first: the runs of a test, of a project, or of every project the caller may see."""
    query = _LIST_RUNS
    if request.project_id:
        require_in_project(session, principal, request.project_id, VIEWER, "listing runs")
        query = query.where(_runs.c.project_id == request.project_id)
    else:
        query = query.where(_runs.c.project_id.in_(sa.select(_projects.c.id).where(principal.sees_project())))
    if request.test_id:
        query = query.where(_runs.c.test_id == request.test_id)
    autoflush(session)
    rows, next_page = page(session, query, request.page)
    return runs_pb2.ListRunsResponse(runs=[run_to_proto(row) for row in rows], page=next_page)


def cancel_target(session: Session, principal: Principal, request: runs_pb2.CancelRunRequest) -> runs_pb2.Run:
    """The run to cancel, once the caller may; the servicer asks the orchestrator unless it has ended."""
    return run_to_proto(_run(session, principal, request.run_id, RUNNER, "cancelling a run"))


def watch_target(session: Session, principal: Principal, request: runs_pb2.WatchRunRequest) -> RunView:
    _run(session, principal, request.run_id, VIEWER, "watching a run")
    return run_view(session, request.run_id)


def run_view(session: Session, run_id: str) -> RunView:
    run = session.get_one(Run, run_id)
    version = session.get_one(TestVersion, (run.test_id, run.test_version))
    groups = [group.name for group in tests_pb2.TestSpec.FromString(version.spec).groups]
    summary = results_pb2.RunSummary.FromString(run.summary) if run.summary is not None else None
    return RunView(run_to_proto(run), groups, summary)
