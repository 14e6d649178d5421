"""The run lifecycle as plain functions over the state store, so an orchestrator restart resumes
every run from what is stored: nothing about a run lives only in memory.

QUEUED ─submit→ DISPATCHING ─every placement sent→ RUNNING ─all placements ended→
COLLECTING ─summary read→ FINISHED. While RUNNING, the start's second phase: once every worker has
prepared its part, each group is told when to begin (callmeter/common/start_waves.py). No
capacity → FAILED; a user's cancel → CANCELLED; the deadline → TIMED_OUT. Cancelled and
timed-out runs keep their summary but are not judged (ERROR).
Placements are pending (ASSIGNMENT_STATE_UNSPECIFIED) until their assignment is delivered.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from callmeter.common.errors import CallmeterError, ErrorCode
from callmeter.common import enum_words, outcomes
from callmeter.common.outcomes import call_map, outcome_text, outcome_word
from callmeter.common.run_states import RUN_ENDED
from callmeter.common.start_waves import awaited_groups, has_registered, wait_reason
from callmeter.common.verdict import COMPLETENESS_MIN_PCT, LAST_PASS, NO_BASELINE, Baseline, is_relative, judge
from callmeter.state.convert import run_to_proto
from callmeter.state.models import Run, RunPlacement, TestVersion, Worker, utcnow
from callmeter.v1 import common_pb2, results_pb2, runs_pb2, tests_pb2, workers_pb2
from services.orchestrator.placement import Candidate, place

RUN = runs_pb2.RunState.Name
ASSIGNMENT = workers_pb2.AssignmentState.Name
PENDING = ASSIGNMENT(workers_pb2.ASSIGNMENT_STATE_UNSPECIFIED)
TERMINAL = {ASSIGNMENT(s) for s in (workers_pb2.ASSIGNMENT_STATE_DONE, workers_pb2.ASSIGNMENT_STATE_FAILED,
                                    workers_pb2.ASSIGNMENT_STATE_CANCELLED)}
EXECUTING = [RUN(runs_pb2.RUN_STATE_DISPATCHING), RUN(runs_pb2.RUN_STATE_RUNNING)]
ENDED = {RUN(s) for s in RUN_ENDED}
MAX_ERRORS_KEPT = 100


@dataclass(frozen=True)
class Dispatch:
    run_id: str
    worker_id: str
    assignment: workers_pb2.Assignment


@dataclass(frozen=True)
class Start:
    run_id: str
    worker_id: str
    groups: list[str]
    start_at: datetime


@dataclass(frozen=True)
class Collect:
    run_id: str
    #: What to ask metrics-ingest: the run's groups, its plan and who calls whom (for its outcomes).
    request: results_pb2.RunSummaryRequest
    ended_at: datetime


def _spec(session: Session, run: Run) -> tests_pb2.TestSpec:
    version = session.get(TestVersion, (run.test_id, run.test_version))
    if version is None:
        raise CallmeterError(ErrorCode.NOT_FOUND, f"run {run.id} pins test version {run.test_version}, which is gone")
    return tests_pb2.TestSpec.FromString(version.spec)


def _placements(session: Session, run_id: str) -> list[RunPlacement]:
    return list(session.scalars(sa.select(RunPlacement).where(RunPlacement.run_id == run_id)
                                .order_by(RunPlacement.worker_id, RunPlacement.group_name, RunPlacement.first_index)))


def _candidates(session: Session) -> list[Candidate]:
    """Online or busy workers with the endpoints they can still take."""
    live = [workers_pb2.WorkerState.Name(s) for s in (workers_pb2.WORKER_STATE_ONLINE, workers_pb2.WORKER_STATE_BUSY)]
    reserved = dict(session.execute(
        sa.select(RunPlacement.worker_id, sa.func.sum(RunPlacement.count))
        .join(Run, Run.id == RunPlacement.run_id)
        .where(Run.state.in_(EXECUTING), RunPlacement.state.not_in(TERMINAL))
        .group_by(RunPlacement.worker_id)).all())
    candidates = []
    for worker in session.scalars(sa.select(Worker).where(Worker.state.in_(live)).order_by(Worker.name)):
        capacity = workers_pb2.WorkerCapacity.FromString(worker.capacity)
        candidates.append(Candidate(
            worker_id=worker.id, name=worker.name, free=capacity.max_endpoints - int(reserved.get(worker.id, 0)),
            codecs=list(capacity.codecs), transports=set(capacity.transports),
            labels={label["key"]: label["value"] for label in worker.labels}))
    return candidates


def submit(sessions: sessionmaker[Session], run_id: str) -> runs_pb2.Run:
    """Places a QUEUED run; without capacity the run is FAILED with the shortfall as its reason."""
    with sessions.begin() as session:
        run = session.get(Run, run_id, with_for_update=True)
        if run is None:
            raise CallmeterError(ErrorCode.NOT_FOUND, f"no run {run_id!r}")
        if run.state != RUN(runs_pb2.RUN_STATE_QUEUED):
            return run_to_proto(run, _placements(session, run_id))  # submitted before: idempotent
        spec = _spec(session, run)
        try:
            slices = place(spec, _candidates(session))
        except CallmeterError as error:
            run.state, run.verdict = RUN(runs_pb2.RUN_STATE_FAILED), runs_pb2.Verdict.Name(runs_pb2.VERDICT_ERROR)
            run.reasons, run.ended_at = [error.detail], utcnow()
            return run_to_proto(run)
        roles = {group.name: common_pb2.EndpointRole.Name(group.role) for group in spec.groups}
        for piece in slices:
            session.add(RunPlacement(run_id=run.id, worker_id=piece.worker_id, group_name=piece.group,
                                     first_index=piece.first_index, count=piece.count, role=roles[piece.group],
                                     state=PENDING))
        run.state = RUN(runs_pb2.RUN_STATE_DISPATCHING)
        session.flush()
        return run_to_proto(run, _placements(session, run_id))


def pending_dispatches(sessions: sessionmaker[Session]) -> list[Dispatch]:
    """Assignments not yet delivered, one per worker of each dispatching run."""
    with sessions.begin() as session:
        dispatches = []
        runs = session.scalars(sa.select(Run).where(Run.state == RUN(runs_pb2.RUN_STATE_DISPATCHING)))
        for run in runs:
            spec = _spec(session, run)
            by_worker: dict[str, list[RunPlacement]] = {}
            for placement in _placements(session, run.id):
                if placement.state == PENDING:
                    by_worker.setdefault(placement.worker_id, []).append(placement)
            for worker_id, placements in by_worker.items():
                assignment = workers_pb2.Assignment(run_id=run.id, spec=spec, slices=[
                    workers_pb2.EndpointSlice(group=p.group_name, first_index=p.first_index, count=p.count)
                    for p in placements])  # no start time: the worker prepares, then waits for StartAssignment
                dispatches.append(Dispatch(run.id, worker_id, assignment))
        return dispatches


def mark_delivery(sessions: sessionmaker[Session], dispatch: Dispatch, delivered: bool) -> None:
    with sessions.begin() as session:
        for placement in _placements(session, dispatch.run_id):
            if placement.worker_id == dispatch.worker_id and placement.state == PENDING:
                if delivered:
                    placement.state = ASSIGNMENT(workers_pb2.ASSIGNMENT_STATE_ACCEPTED)
                else:
                    _fail_placement(placement, "the worker was not connected to any gateway")
        run = session.get(Run, dispatch.run_id)
        if run is not None and run.state == RUN(runs_pb2.RUN_STATE_DISPATCHING) and \
                all(p.state != PENDING for p in _placements(session, run.id)):
            run.state, run.dispatched_at = RUN(runs_pb2.RUN_STATE_RUNNING), utcnow()


def due_starts(sessions: sessionmaker[Session], now: datetime, lead_s: float, prepare_wait_s: float,
               registration_wait_s: float) -> list[Start]:
    """The start's second phase: which workers are to begin which groups, and when.

    A run's common start is set ``lead_s`` ahead once every part is prepared (or ``prepare_wait_s``
    after they were delivered: the late ones begin when they can, catching up). Callers of a
    registering group begin once it has registered, or ``registration_wait_s`` after the common
    start. A start is due until mark_begun records its delivery."""
    starts: list[Start] = []
    lead = timedelta(seconds=lead_s)
    with sessions.begin() as session:
        for run in session.scalars(sa.select(Run).where(Run.state == RUN(runs_pb2.RUN_STATE_RUNNING))):
            placements = _placements(session, run.id)
            waiting = [p for p in placements if not p.begun and p.state not in TERMINAL]
            if not waiting:
                continue
            if run.started_at is None:
                unprepared = {p.worker_id for p in placements if p.state == ASSIGNMENT(workers_pb2.ASSIGNMENT_STATE_ACCEPTED)}
                if unprepared and now - (run.dispatched_at or run.created_at) < timedelta(seconds=prepare_wait_s):
                    continue
                if unprepared:
                    run.reasons = [*run.reasons, f"{len(unprepared)} of the run's workers had not prepared their part "
                                                 f"{prepare_wait_s:g} s after it was sent: their endpoints began late"]
                run.started_at = now + lead
            awaited = awaited_groups(_spec(session, run))
            due: dict[tuple[str, datetime], set[str]] = {}
            for placement in waiting:
                start_at = run.started_at
                called = awaited.get(placement.group_name)
                if called is not None:
                    ready, reason = _called_group_ready(placements, called, now - run.started_at, registration_wait_s)
                    if not ready:
                        continue
                    said = f"group {placement.group_name} began after waiting"  # once, though resent
                    if reason and not any(r.startswith(said) for r in run.reasons):
                        run.reasons = [*run.reasons, wait_reason(placement.group_name, called, *reason)]
                    start_at = max(run.started_at, now + lead)
                due.setdefault((placement.worker_id, start_at), set()).add(placement.group_name)
            starts.extend(Start(run.id, worker_id, sorted(groups), start_at)
                          for (worker_id, start_at), groups in sorted(due.items()))
    return starts


def _called_group_ready(placements: list[RunPlacement], called: str, since_start: timedelta,
                        wait_s: float) -> tuple[bool, tuple[int, int, float] | None]:
    """Whether callers may begin: the group they call has registered, or the wait is over — then
    with (its endpoints, those registered, the wait) for the reason."""
    mine = [p for p in placements if p.group_name == called]
    endpoints, registered = sum(p.count for p in mine), sum(p.registered for p in mine)
    if has_registered(endpoints, registered, sum(p.endpoints_failed for p in mine)):
        return True, None
    if since_start < timedelta(seconds=wait_s):
        return False, None
    return True, (endpoints, registered, wait_s)


def mark_begun(sessions: sessionmaker[Session], start: Start) -> None:
    with sessions.begin() as session:
        for placement in _placements(session, start.run_id):
            if placement.worker_id == start.worker_id and placement.group_name in start.groups:
                placement.begun = True


#: Assignment states of a part the worker is still executing.
WORKER_EXECUTING = (workers_pb2.ASSIGNMENT_STATE_ACCEPTED, workers_pb2.ASSIGNMENT_STATE_PREPARED,
                    workers_pb2.ASSIGNMENT_STATE_RUNNING)


def record_status(session: Session, worker_id: str, status: workers_pb2.AssignmentStatus) -> bool:
    """A worker's report on its part of a run (called inside the events transaction).

    True if the worker is executing a part the platform no longer has running: a run cancelled, timed
    out or given up on as "worker lost" while the worker was disconnected (the cancel found no
    gateway holding it), or a run unknown here. Its status, resent after the reconnect, says so;
    the caller cancels that part again."""
    placements = list(session.scalars(sa.select(RunPlacement).where(
        RunPlacement.run_id == status.run_id, RunPlacement.worker_id == worker_id)
        .order_by(RunPlacement.group_name, RunPlacement.first_index)))
    stray = status.state in WORKER_EXECUTING and all(p.state in TERMINAL for p in placements)
    refused = status.state == workers_pb2.ASSIGNMENT_STATE_FAILED
    failed_left = dict(status.endpoints_failed_by_group)
    errors = {id(p): list(p.errors) for p in placements}
    for e in status.errors:
        text = error_text(e)
        owner = next((p for p in placements if p.group_name == e.group and
                      p.first_index <= e.endpoint < p.first_index + p.count), placements[0] if placements else None)
        # Each status repeats the worker's newest errors: keep each once.
        if owner is not None and owner.state not in TERMINAL and text not in errors[id(owner)]:
            errors[id(owner)].append(text)
    ended = ASSIGNMENT(status.state) in TERMINAL
    seconds_left, registered_left = dict(status.endpoint_seconds_by_group), dict(status.registered_by_group)
    for placement in placements:
        # Kept even for a part the platform ended (cancelled, timed out): collection waits for it.
        if placement.group_name in seconds_left:
            placement.endpoint_seconds = seconds_left.pop(placement.group_name)
        if placement.group_name in registered_left:
            placement.registered = registered_left.pop(placement.group_name)
        placement.samples_final = placement.samples_final or ended
        if placement.state in TERMINAL:
            continue
        placement.state = ASSIGNMENT(status.state)
        if refused:  # the worker could not run its part: none of its endpoints ran
            placement.endpoints_failed = placement.count
        elif failed_left or not status.endpoints_failed:  # a group's failures over its placements here
            failed = min(placement.count, failed_left.get(placement.group_name, 0))
            failed_left[placement.group_name] = failed_left.get(placement.group_name, 0) - failed
            placement.endpoints_failed = failed
        else:  # a worker older than endpoints_failed_by_group
            placement.endpoints_failed = min(placement.count, status.endpoints_failed)
        placement.errors = errors[id(placement)][:MAX_ERRORS_KEPT]
    return stray


def fail_parts(session: Session, worker_id: str, reason: str) -> None:
    """Fails what the worker still executes of running runs, e.g. because it restarted."""
    for placement in session.scalars(sa.select(RunPlacement).join(Run, Run.id == RunPlacement.run_id).where(
            RunPlacement.worker_id == worker_id, Run.state.in_(EXECUTING), RunPlacement.state.not_in(TERMINAL),
            RunPlacement.state != PENDING)):
        _fail_placement(placement, reason)


def _fail_placement(placement: RunPlacement, reason: str) -> None:
    placement.state = ASSIGNMENT(workers_pb2.ASSIGNMENT_STATE_FAILED)
    placement.endpoints_failed = placement.count
    placement.errors = [*placement.errors, reason]


def advance(sessions: sessionmaker[Session], now: datetime, lost_after_s: float,
            collect_delay_s: float) -> tuple[list[Dispatch], list[Collect]]:
    """Timeouts, lost workers, ended executions. Returns cancellations to send and the runs whose
    summary is due (``collect_delay_s`` after execution ended, then on every tick until finish()
    finds every sample the workers sent stored, or gives up waiting)."""
    cancels: list[Dispatch] = []
    collects: list[Collect] = []
    with sessions.begin() as session:
        for run in session.scalars(sa.select(Run).where(Run.state.in_(EXECUTING))):
            placements = _placements(session, run.id)
            if run.deadline_at is not None and now >= run.deadline_at:
                for worker_id in {p.worker_id for p in placements if p.state not in TERMINAL}:
                    cancels.append(Dispatch(run.id, worker_id, workers_pb2.Assignment(run_id=run.id)))
                running = sum(p.count - p.endpoints_failed for p in placements if p.state not in TERMINAL)
                for placement in placements:
                    if placement.state not in TERMINAL:
                        placement.state = ASSIGNMENT(workers_pb2.ASSIGNMENT_STATE_CANCELLED)
                run.state, run.verdict = RUN(runs_pb2.RUN_STATE_TIMED_OUT), runs_pb2.Verdict.Name(runs_pb2.VERDICT_ERROR)
                run.ended_at = now
                timeout_s = (run.deadline_at - run.created_at).total_seconds() if run.created_at else 0
                run.reasons = [*run.reasons, f"the run reached its timeout ({timeout_s:.0f} s) with {running} "
                                             "endpoints still running; not judged"]
                continue
            for placement in placements:
                if placement.state not in TERMINAL and _lost(session.get(Worker, placement.worker_id), now, lost_after_s):
                    _fail_placement(placement, "worker lost during the run")
            if all(p.state in TERMINAL for p in placements):
                run.state, run.ended_at = RUN(runs_pb2.RUN_STATE_COLLECTING), now
        due = now - timedelta(seconds=collect_delay_s)
        for run in session.scalars(sa.select(Run).where(
                Run.state.in_([RUN(runs_pb2.RUN_STATE_COLLECTING), RUN(runs_pb2.RUN_STATE_CANCELLED),
                               RUN(runs_pb2.RUN_STATE_TIMED_OUT)]),
                Run.summary.is_(None), Run.ended_at <= due)):
            collects.append(Collect(run.id, summary_request(run.id, _spec(session, run)), run.ended_at))
    return cancels, collects


def summary_request(run_id: str, spec: tests_pb2.TestSpec) -> results_pb2.RunSummaryRequest:
    return results_pb2.RunSummaryRequest(run_id=run_id, groups=[group.name for group in spec.groups],
                                         planned={group.name: group.count for group in spec.groups},
                                         calls=call_map(spec))


def _lost(worker: Worker | None, now: datetime, lost_after_s: float) -> bool:
    if worker is None or worker.state == workers_pb2.WorkerState.Name(workers_pb2.WORKER_STATE_ERROR):
        return True
    silent_since = worker.last_heartbeat or worker.updated_at
    return worker.state == workers_pb2.WorkerState.Name(workers_pb2.WORKER_STATE_OFFLINE) and \
        now - silent_since > timedelta(seconds=lost_after_s)


def finish(sessions: sessionmaker[Session], run_id: str, summary: results_pb2.RunSummary, give_up: bool,
           completeness_min_pct: float = COMPLETENESS_MIN_PCT) -> str | None:
    """Stores the summary with its completeness; a collecting run gets its verdict
    (callmeter/common/verdict.py; gates relative to a baseline against the baseline run stored
    here, ``_baseline``) and FINISHED, or FAILED when it cannot be judged (nothing ran, nothing was
    attempted, results incomplete).

    Returns what is still awaited (a worker's end of its part, samples sent but not stored yet), or
    None. While something is awaited and ``give_up`` is false, nothing is stored: the caller reads
    the summary again later."""
    with sessions.begin() as session:
        run = session.get(Run, run_id)
        if run is None or run.summary is not None:
            return None
        placements = _placements(session, run_id)
        awaited = _awaited(placements, summary)
        if awaited and not give_up:
            return awaited
        _set_completeness(summary, placements, run)
        for load in summary.workers:  # stored by id; named as the user knows it
            worker = session.get(Worker, load.worker)
            load.worker = worker.name if worker is not None else load.worker
        if run.state == RUN(runs_pb2.RUN_STATE_COLLECTING):
            spec = _spec(session, run)
            planned = sum(p.count for p in placements)
            baseline = _baseline(session, run, spec.baseline) if any(map(is_relative, spec.gates)) else NO_BASELINE
            verdict, reasons = judge(summary, list(spec.gates), planned, summary.total.endpoints_failed,
                                     completeness_min_pct, baseline)
            ended = runs_pb2.RUN_STATE_FAILED if verdict == runs_pb2.VERDICT_ERROR else runs_pb2.RUN_STATE_FINISHED
            run.state, run.verdict = RUN(ended), runs_pb2.Verdict.Name(verdict)
            run.reasons = [*run.reasons, *reasons, *error_reasons(placements, summary)]
        run.summary = summary.SerializeToString()
        return awaited


def _baseline(session: Session, run: Run, wanted: str) -> Baseline:
    """The run that the test's relative gates compare with (TestSpec.baseline), with its stored
    summary: for last-pass the newest run of the same test created before this one that FINISHED
    with a PASS; else the run of that id, if it is a finished run of the same test."""
    finished = RUN(runs_pb2.RUN_STATE_FINISHED)
    if wanted == LAST_PASS:
        found = session.scalars(sa.select(Run).where(
            Run.test_id == run.test_id, Run.id != run.id, Run.created_at < run.created_at, Run.state == finished,
            Run.verdict == runs_pb2.Verdict.Name(runs_pb2.VERDICT_PASS), Run.summary.is_not(None))
            .order_by(Run.created_at.desc(), Run.id.desc()).limit(1)).first()
        if found is None:
            return Baseline(missing="no baseline run: no earlier run of this test finished with a PASS")
        chosen = "last-pass: the newest earlier run of this test that passed"
    else:
        found = session.get(Run, wanted) if wanted else None
        if found is None or found.test_id != run.test_id or found.id == run.id:
            return Baseline(missing=f"no baseline run: no run {wanted!r} of this test")
        if found.state != finished or found.summary is None:
            state = enum_words.word(runs_pb2.RunState, runs_pb2.RunState.Value(found.state))
            return Baseline(missing=f"no baseline run: run {wanted} is {state}, not finished")
        chosen = ""
    return Baseline(found.id, results_pb2.RunSummary.FromString(found.summary), chosen=chosen)


def _lost_by_platform(placement: RunPlacement) -> bool:
    """A part the platform failed without a word from its worker: lost, restarted, never delivered."""
    return not placement.samples_final and placement.state == ASSIGNMENT(workers_pb2.ASSIGNMENT_STATE_FAILED)


def _awaited(placements: list[RunPlacement], summary: results_pb2.RunSummary) -> str | None:
    """What collection still waits for: workers that have not reported the end of their part (but
    may still: the platform cancelled it or timed it out), or samples sent that are not stored."""
    silent = {p.worker_id for p in placements if not p.samples_final and not _lost_by_platform(p)}
    if silent:
        return f"the end of their part from {len(silent)} worker{'s' if len(silent) != 1 else ''}"
    sent: Counter[str] = Counter()
    for placement in placements:
        sent[placement.group_name] += placement.endpoint_seconds if placement.samples_final else 0
    stored = {group.group: group.endpoint_seconds for group in summary.groups}
    short = [f"group {group}: {stored.get(group, 0)} of {count} endpoint-seconds stored"
             for group, count in sorted(sent.items()) if stored.get(group, 0) < count]
    return "; ".join(short) or None


def _set_completeness(summary: results_pb2.RunSummary, placements: list[RunPlacement], run: Run) -> None:
    """completeness_pct of each group, each worker and the run: endpoint-seconds stored ÷ expected.

    Expected is what the workers measured, by their final count. For a part the platform lost
    (worker lost or restarted, part never delivered) its worker's count is not final: expected is
    then its endpoints × the seconds per endpoint its group's other parts measured, or the seconds
    the run lasted (whichever its worker's last count does not exceed)."""
    began = run.started_at or run.dispatched_at or run.created_at
    lasted = max(0.0, (run.ended_at - began).total_seconds()) if run.ended_at else 0.0
    final_seconds: Counter[str] = Counter()
    final_endpoints: Counter[str] = Counter()
    for placement in placements:
        if placement.samples_final:
            final_seconds[placement.group_name] += placement.endpoint_seconds
            final_endpoints[placement.group_name] += placement.count
    expected: Counter[str] = Counter()
    by_worker: Counter[str] = Counter()
    for placement in placements:
        group = placement.group_name
        if placement.samples_final:
            seconds = placement.endpoint_seconds
        else:
            per_endpoint = final_seconds[group] / final_endpoints[group] if final_endpoints[group] else lasted
            seconds = max(placement.endpoint_seconds, round(placement.count * per_endpoint))
        expected[group] += seconds
        by_worker[placement.worker_id] += seconds
    for group in summary.groups:
        if expected[group.group]:
            group.completeness_pct = min(100.0, 100.0 * group.endpoint_seconds / expected[group.group])
    if sum(expected.values()):
        summary.total.completeness_pct = min(100.0, 100.0 * summary.total.endpoint_seconds / sum(expected.values()))
    if not any(load.endpoint_seconds for load in summary.workers):
        return  # a summary without the workers' stored shares (asked without the run's plan)
    stored = {load.worker: load for load in summary.workers}
    for worker_id, seconds in sorted(by_worker.items()):
        load = stored.get(worker_id) or summary.workers.add(worker=worker_id)
        if seconds:
            load.completeness_pct = min(100.0, 100.0 * load.endpoint_seconds / seconds)


#: Example endpoints named per cause in a run's reasons.
EXAMPLES_PER_CAUSE = 3
# Each endpoint's own address in an error ("call to sip:callee5@… failed: 486") is not its cause.
_URI = re.compile(r"\bsips?:[^\s;,>)]+")
# An endpoint's error as stored: "[3] registration_failed: REGISTER to … failed: 401 … (SIP 401)".
_ENDPOINT_ERROR = re.compile(r"\[(\d+)\](?: ([a-z_]+))?: (.*?)(?: \(SIP (\d+)\))?", re.S)


# (outcome, code) after resolve_not_called → the words of the outcomes the engine gave them.
_RESOLVED_FROM = {(outcomes.CALL_FAILED, 0): ("not_called",), (outcomes.CALLEE_FAILED, 0): ("call_failed", "timeout")}


def error_text(error: workers_pb2.EndpointError) -> str:
    """An error as a placement keeps it: its endpoint, the outcome it gives, the reason and SIP code."""
    if not error.group:
        return error.reason
    outcome = f" {outcome_word(error.outcome)}" if error.outcome else ""
    return f"[{error.endpoint}]{outcome}: {error.reason}" + (f" (SIP {error.sip_code})" if error.sip_code else "")


def error_reasons(placements: list[RunPlacement], summary: results_pb2.RunSummary) -> list[str]:
    """A line per group and outcome other than success, with its exact count from the summary and
    the most frequent cause among its endpoints' errors, with a few example endpoints:
    "group callers: 5 endpoints registration failed (SIP 401): REGISTER to sip:… failed: 401
    Unauthorized (e.g. [0], [3], [7])". Errors no outcome accounts for follow, grouped by cause;
    errors of no endpoint (a worker's, a part's) as they are."""
    # (group, outcome word, SIP code) → cause → example endpoints
    causes: dict[tuple[str, str, int], dict[str, list[str]]] = {}
    loose: dict[str, list[str]] = {}
    for placement in placements:
        for error in placement.errors:
            match = _ENDPOINT_ERROR.fullmatch(error)
            if match is None:
                loose.setdefault(placement.group_name, [])
                if error not in loose[placement.group_name]:
                    loose[placement.group_name].append(error)
                continue
            endpoint, word, reason, code = match.groups()
            examples = causes.setdefault((placement.group_name, word or "", int(code or 0)), {})
            examples.setdefault(_URI.sub("sip:…", reason), []).append(f"[{endpoint}]")
    lines = []
    for group in summary.groups:
        for count in group.outcomes:
            if count.outcome == outcomes.SUCCESS:
                continue
            found = causes.pop((group.group, outcome_word(count.outcome), count.sip_code), None)
            if found is None:  # an outcome resolve_not_called changed: the errors of the one the engine gave
                engine_gave = _RESOLVED_FROM.get((count.outcome, count.sip_code), ())
                found = {}
                for key in [key for key in causes if key[0] == group.group and key[1] in engine_gave]:
                    found.update(causes.pop(key))
            line = f"group {group.group}: {_endpoints(count.endpoints)} {outcome_text(count.outcome, count.sip_code)}"
            if found:
                cause, examples = max(found.items(), key=lambda item: len(set(item[1])))
                line += f": {cause}{_examples(examples)}"
            elif count.outcome == outcomes.ENGINE_ERROR and loose.get(group.group):
                line += ": " + "; ".join(loose.pop(group.group))
            lines.append(line)
    for (group_name, _word, code), found in causes.items():
        for cause, examples in sorted(found.items(), key=lambda item: -len(item[1])):
            sip = f" (SIP {code})" if code else ""
            lines.append(f"group {group_name}: {_endpoints(len(set(examples)))}: {cause}{sip}{_examples(examples)}")
    lines += [f"group {group_name}: {reason}" for group_name, reasons in loose.items() for reason in reasons]
    return lines


def _endpoints(count: int) -> str:
    return f"{count} endpoint{'s' if count != 1 else ''}"


def _examples(endpoints: list[str]) -> str:
    return f" (e.g. {', '.join(list(dict.fromkeys(endpoints))[:EXAMPLES_PER_CAUSE])})"


def cancel(sessions: sessionmaker[Session], run_id: str) -> tuple[runs_pb2.Run, list[Dispatch]]:
    """Cancels a run that has not ended; returns it and the cancellations to send to workers."""
    with sessions.begin() as session:
        run = session.get(Run, run_id, with_for_update=True)
        if run is None:
            raise CallmeterError(ErrorCode.NOT_FOUND, f"no run {run_id!r}")
        placements = _placements(session, run_id)
        if run.state in ENDED:
            return run_to_proto(run, placements), []
        cancels = [Dispatch(run.id, worker_id, workers_pb2.Assignment(run_id=run.id))
                   for worker_id in {p.worker_id for p in placements if p.state not in TERMINAL and p.state != PENDING}]
        for placement in placements:
            if placement.state == PENDING:  # never sent: no sample will come
                placement.samples_final = True
            if placement.state not in TERMINAL:
                placement.state = ASSIGNMENT(workers_pb2.ASSIGNMENT_STATE_CANCELLED)
        run.state, run.verdict = RUN(runs_pb2.RUN_STATE_CANCELLED), runs_pb2.Verdict.Name(runs_pb2.VERDICT_ERROR)
        run.ended_at = utcnow()
        run.reasons = [*run.reasons, "cancelled"]
        return run_to_proto(run, placements), cancels


def fail(sessions: sessionmaker[Session], run_id: str, reason: str) -> None:
    """Ends a run that cannot be judged (e.g. its summary stayed unreadable)."""
    with sessions.begin() as session:
        run = session.get(Run, run_id)
        if run is None or run.state in {RUN(runs_pb2.RUN_STATE_FINISHED), RUN(runs_pb2.RUN_STATE_FAILED)}:
            return
        if run.state != RUN(runs_pb2.RUN_STATE_CANCELLED):
            run.state, run.verdict = RUN(runs_pb2.RUN_STATE_FAILED), runs_pb2.Verdict.Name(runs_pb2.VERDICT_ERROR)
        run.reasons = [*run.reasons, reason]
        run.summary = results_pb2.RunSummary(run_id=run_id).SerializeToString()

