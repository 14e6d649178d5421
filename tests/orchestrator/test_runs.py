"""The run lifecycle on a real state store: submit, dispatch, statuses, timeouts, lost workers,
collection, cancel — each step read back from the database, as a restarted orchestrator would."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import nats
import pytest
import sqlalchemy as sa
from nats.aio.msg import Msg
from sqlalchemy.orm import Session, sessionmaker

from callmeter.common import outcomes
from callmeter.common.stores.database import create_database_engine
from callmeter.common.stores.nats import EmbeddedNats
from callmeter.common.stores.worker_commands import DELIVERED, command_subject
from callmeter.state.bootstrap import bootstrap_local
from callmeter.state.migrate import upgrade
from callmeter.state.models import Run, RunPlacement, Test, TestVersion, Worker, utcnow
from callmeter.v1 import common_pb2, orchestrator_pb2, results_pb2, runs_pb2, tests_pb2, workers_pb2
from services.orchestrator import conductor, runs, workers
from services.orchestrator.settings import OrchestratorSettings

SPEC = tests_pb2.TestSpec(
    name="t",
    groups=[tests_pb2.EndpointGroup(name="callees", count=2, role=common_pb2.ENDPOINT_ROLE_CALLEE, codecs=["PCMU"]),
            tests_pb2.EndpointGroup(name="callers", count=2, role=common_pb2.ENDPOINT_ROLE_CALLER, codecs=["PCMU"])],
    gates=[tests_pb2.QualityGate(metric="mos_avg", comparison=tests_pb2.COMPARISON_GE, threshold=4.0)])


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path / 's.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = create_database_engine(url)
    upgrade(engine)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


def admit(sessions: sessionmaker[Session], name: str, max_endpoints: int, secret: str | None = None,
          instance_id: str = "") -> str:
    secret = secret or bootstrap_local(sessions.kw["bind"], existing_worker_token=None).worker_token_secret
    hello = workers_pb2.Hello(token=secret or "", name=name, instance_id=instance_id, capacity=workers_pb2.WorkerCapacity(
        max_endpoints=max_endpoints, codecs=["PCMU/8000/1"], transports=[common_pb2.TRANSPORT_UDP]))
    return workers.admit_worker(sessions, orchestrator_pb2.AdmitWorkerRequest(hello=hello, gateway_id="g1")).id


def new_run(sessions: sessionmaker[Session], timeout_s: float = 600, spec: tests_pb2.TestSpec = SPEC) -> str:
    engine = sessions.kw["bind"]
    boot = bootstrap_local(engine, existing_worker_token=None)
    with sessions.begin() as session:
        test = Test(project_id=boot.project_id, name=f"t{utcnow().timestamp()}", current_version=1)
        session.add(test)
        session.flush()
        session.add(TestVersion(test_id=test.id, version=1, spec=spec.SerializeToString()))
        session.flush()  # no relationship orders these inserts: the version must exist before the run
        run = Run(test_id=test.id, test_version=1, project_id=boot.project_id, deadline_at=utcnow() + timedelta(seconds=timeout_s))
        session.add(run)
        session.flush()
        return run.id


def run_row(sessions: sessionmaker[Session], run_id: str) -> Run:
    with sessions() as session:
        return session.get(Run, run_id)


def placements(sessions: sessionmaker[Session], run_id: str) -> list[RunPlacement]:
    with sessions() as session:
        return list(session.scalars(sa.select(RunPlacement).where(RunPlacement.run_id == run_id)))


def report(sessions: sessionmaker[Session], worker_id: str, status: workers_pb2.AssignmentStatus) -> None:
    workers.record_events(sessions, orchestrator_pb2.ReportWorkerEventsRequest(
        gateway_id="g1", events=[orchestrator_pb2.WorkerEvent(worker_id=worker_id, status=status)]))


def running_run(sessions: sessionmaker[Session]) -> tuple[str, str]:
    """A run placed on a new worker "w1" and delivered to it: (run id, worker id)."""
    run_id = new_run(sessions)
    worker_id = admit(sessions, "w1", max_endpoints=8)
    runs.submit(sessions, run_id)
    runs.mark_delivery(sessions, runs.pending_dispatches(sessions)[0], delivered=True)
    return run_id, worker_id


def good_summary(run_id: str) -> results_pb2.RunSummary:
    return results_pb2.RunSummary(run_id=run_id, total=results_pb2.GroupSummary(
        calls_attempted=2, calls_connected=2, mos_avg=4.3, endpoints=4))


def test_a_run_goes_from_queued_to_finished_with_a_verdict(sessions: sessionmaker[Session]) -> None:
    run_id = new_run(sessions)
    worker_id = admit(sessions, "w1", max_endpoints=8)
    submitted = runs.submit(sessions, run_id)
    assert submitted.state == runs_pb2.RUN_STATE_DISPATCHING
    # Each placement carries its group's role: metrics-ingest counts the run's calls from it.
    assert sorted((p.group, p.role) for p in submitted.placements) == [
        ("callees", common_pb2.ENDPOINT_ROLE_CALLEE), ("callers", common_pb2.ENDPOINT_ROLE_CALLER)]
    assert runs.submit(sessions, run_id) == submitted  # idempotent

    [dispatch] = runs.pending_dispatches(sessions)
    assert dispatch.worker_id == worker_id
    assert sorted((s.group, s.count) for s in dispatch.assignment.slices) == [("callees", 2), ("callers", 2)]
    runs.mark_delivery(sessions, dispatch, delivered=True)
    assert run_row(sessions, run_id).state == "RUN_STATE_RUNNING"
    assert runs.pending_dispatches(sessions) == []

    report(sessions, worker_id, workers_pb2.AssignmentStatus(run_id=run_id, state=workers_pb2.ASSIGNMENT_STATE_DONE))
    cancels, collects = runs.advance(sessions, utcnow(), lost_after_s=60, collect_delay_s=0)
    assert cancels == [] and run_row(sessions, run_id).state == "RUN_STATE_COLLECTING"
    cancels, collects = runs.advance(sessions, utcnow(), lost_after_s=60, collect_delay_s=0)
    assert [c.run_id for c in collects] == [run_id] and collects[0].request.groups == ["callees", "callers"]

    summary = good_summary(run_id)
    summary.workers.add(worker=worker_id, overloaded_s=5, engine_lag_ms_max=250, engine_cpu_pct_max=40)
    runs.finish(sessions, run_id, summary, give_up=False)
    row = run_row(sessions, run_id)
    assert (row.state, row.verdict) == ("RUN_STATE_FINISHED", "VERDICT_PASS")
    stored = results_pb2.RunSummary.FromString(row.summary)
    assert [g.passed for g in stored.gates] == [True]
    assert [load.worker for load in stored.workers] == ["w1"], "named as the user knows it"
    assert row.reasons == ["worker w1 was overloaded for 5 s (engine loop late by up to 250 ms, supervisor by up to "
                           "0 ms, an engine at up to 40 % CPU): results may reflect the load generator, not the "
                           "system under test"]


def test_collection_waits_for_the_ingest_delay(sessions: sessionmaker[Session]) -> None:
    run_id, worker_id = running_run(sessions)
    report(sessions, worker_id, workers_pb2.AssignmentStatus(run_id=run_id, state=workers_pb2.ASSIGNMENT_STATE_DONE))
    runs.advance(sessions, utcnow(), lost_after_s=60, collect_delay_s=5)
    assert runs.advance(sessions, utcnow(), lost_after_s=60, collect_delay_s=5)[1] == []
    assert len(runs.advance(sessions, utcnow() + timedelta(seconds=6), lost_after_s=60, collect_delay_s=5)[1]) == 1


def test_no_capacity_fails_the_run_with_the_shortfall(sessions: sessionmaker[Session]) -> None:
    run_id = new_run(sessions)
    admit(sessions, "tiny", max_endpoints=3)
    run = runs.submit(sessions, run_id)
    assert run.state == runs_pb2.RUN_STATE_FAILED
    assert "not enough capacity" in run.reasons[0] and "group 'callers'" in run.reasons[0]


def test_capacity_held_by_a_running_run_is_not_given_twice(sessions: sessionmaker[Session]) -> None:
    admit(sessions, "w1", max_endpoints=6)
    first, second = new_run(sessions), new_run(sessions)
    assert runs.submit(sessions, first).state == runs_pb2.RUN_STATE_DISPATCHING
    assert runs.submit(sessions, second).state == runs_pb2.RUN_STATE_FAILED


def test_undelivered_assignment_fails_its_endpoints(sessions: sessionmaker[Session]) -> None:
    run_id = new_run(sessions)
    admit(sessions, "w1", max_endpoints=8)
    runs.submit(sessions, run_id)
    runs.mark_delivery(sessions, runs.pending_dispatches(sessions)[0], delivered=False)
    assert all(p.state == "ASSIGNMENT_STATE_FAILED" and p.endpoints_failed == p.count
               for p in placements(sessions, run_id))
    runs.advance(sessions, utcnow(), lost_after_s=60, collect_delay_s=0)
    runs.finish(sessions, run_id, results_pb2.RunSummary(run_id=run_id), give_up=False)
    row = run_row(sessions, run_id)
    assert (row.state, row.verdict) == ("RUN_STATE_FAILED", "VERDICT_ERROR")
    assert row.reasons[0] == "no endpoint ran: none of the 4 planned endpoints reported a measurement"
    assert "group callers: the worker was not connected to any gateway" in row.reasons


def test_timeout_cancels_the_workers_and_ends_timed_out_unjudged_with_its_summary(
        sessions: sessionmaker[Session]) -> None:
    run_id = new_run(sessions, timeout_s=10)
    worker_id = admit(sessions, "w1", max_endpoints=8)
    runs.submit(sessions, run_id)
    runs.mark_delivery(sessions, runs.pending_dispatches(sessions)[0], delivered=True)
    cancels, _ = runs.advance(sessions, utcnow() + timedelta(seconds=11), lost_after_s=600, collect_delay_s=0)
    assert [(c.run_id, c.worker_id) for c in cancels] == [(run_id, worker_id)]
    row = run_row(sessions, run_id)
    assert (row.state, row.verdict) == ("RUN_STATE_TIMED_OUT", "VERDICT_ERROR")
    assert row.reasons == ["the run reached its timeout (10 s) with 4 endpoints still running; not judged"]
    _, collects = runs.advance(sessions, utcnow() + timedelta(seconds=12), lost_after_s=600, collect_delay_s=0)
    assert [c.run_id for c in collects] == [run_id]
    runs.finish(sessions, run_id, good_summary(run_id), give_up=True)  # gates would pass: still not judged
    row = run_row(sessions, run_id)
    assert (row.state, row.verdict) == ("RUN_STATE_TIMED_OUT", "VERDICT_ERROR") and row.summary is not None
    assert not results_pb2.RunSummary.FromString(row.summary).gates


def test_a_refused_assignment_is_an_error_not_a_pass(sessions: sessionmaker[Session]) -> None:
    """The worker lacks the group's credential: it refuses, no endpoint runs, nothing is measured."""
    run_id, worker_id = running_run(sessions)
    report(sessions, worker_id, workers_pb2.AssignmentStatus(  # as a worker older than the per-group counts
        run_id=run_id, state=workers_pb2.ASSIGNMENT_STATE_FAILED,
        errors=[workers_pb2.EndpointError(reason="credential 'pbx' is not defined on this worker")]))
    assert all(p.endpoints_failed == p.count for p in placements(sessions, run_id))
    runs.advance(sessions, utcnow(), lost_after_s=60, collect_delay_s=0)
    runs.finish(sessions, run_id, results_pb2.RunSummary(run_id=run_id, total=results_pb2.GroupSummary()),
                give_up=False)
    row = run_row(sessions, run_id)
    assert (row.state, row.verdict) == ("RUN_STATE_FAILED", "VERDICT_ERROR")
    assert any("credential 'pbx' is not defined" in reason for reason in row.reasons)


def test_failures_are_counted_per_group_and_reasons_grouped_once_under_their_group(
        sessions: sessionmaker[Session]) -> None:
    run_id, worker_id = running_run(sessions)
    errors = [workers_pb2.EndpointError(group="callers", endpoint=i, sip_code=401, reason="registration failed")
              for i in (0, 1)]
    status = workers_pb2.AssignmentStatus(run_id=run_id, state=workers_pb2.ASSIGNMENT_STATE_RUNNING,
                                          endpoints_failed=2, endpoints_failed_by_group={"callers": 2}, errors=errors)
    for _ in range(3):  # every status repeats the newest errors
        report(sessions, worker_id, status)
    status.state = workers_pb2.ASSIGNMENT_STATE_DONE
    report(sessions, worker_id, status)
    assert sorted((p.group_name, p.endpoints_failed) for p in placements(sessions, run_id)) == [
        ("callees", 0), ("callers", 2)]
    runs.advance(sessions, utcnow(), lost_after_s=60, collect_delay_s=0)
    runs.finish(sessions, run_id, good_summary(run_id), give_up=False)
    row = run_row(sessions, run_id)
    assert row.reasons == ["group callers: 2 endpoints: registration failed (SIP 401) (e.g. [0], [1])"]


def test_errors_differing_only_in_the_endpoints_address_are_one_cause(sessions: sessionmaker[Session]) -> None:
    """Seen: six callers refused with 486 gave six reason lines, one per callee's URI."""
    run_id, worker_id = running_run(sessions)
    errors = [workers_pb2.EndpointError(group="callers", endpoint=i, sip_code=486,
                                        reason=f"call to sip:callee{i}@127.0.0.1:47200;transport=udp failed: 486 Busy Here")
              for i in range(2)]
    report(sessions, worker_id, workers_pb2.AssignmentStatus(
        run_id=run_id, state=workers_pb2.ASSIGNMENT_STATE_DONE, endpoints_failed=2,
        endpoints_failed_by_group={"callers": 2}, errors=errors))
    runs.advance(sessions, utcnow(), lost_after_s=60, collect_delay_s=0)
    runs.finish(sessions, run_id, good_summary(run_id), give_up=False)
    assert run_row(sessions, run_id).reasons == [
        "group callers: 2 endpoints: call to sip:…;transport=udp failed: 486 Busy Here (SIP 486) (e.g. [0], [1])"]


def test_reasons_count_each_outcome_exactly_and_the_default_gate_counts_failed_outcomes(
        sessions: sessionmaker[Session]) -> None:
    """Seen: wrong passwords among the callers failed their callees too, and the reasons counted
    only the errors the worker's statuses happened to carry. Here 3 of 5 callers fail to register
    but the statuses carry the errors of 2; their 3 callees were not called."""
    spec = tests_pb2.TestSpec()
    spec.CopyFrom(SPEC)
    del spec.gates[:]  # the default gate
    for group in spec.groups:
        group.count = 5
    run_id = new_run(sessions, spec=spec)
    worker_id = admit(sessions, "w1", max_endpoints=10)
    runs.submit(sessions, run_id)
    runs.mark_delivery(sessions, runs.pending_dispatches(sessions)[0], delivered=True)
    errors = [workers_pb2.EndpointError(group="callers", endpoint=i, sip_code=401, outcome=outcomes.REGISTRATION_FAILED,
                                        reason=f"REGISTER to sip:10.0.0.1 failed: 401 Unauthorized (sip:{i}@pbx)")
              for i in (0, 1)]
    errors.append(workers_pb2.EndpointError(group="callees", endpoint=0, outcome=outcomes.NOT_CALLED,
                                            reason="0 of the 1 calls the callers' schedule would place arrived"))
    report(sessions, worker_id, workers_pb2.AssignmentStatus(
        run_id=run_id, state=workers_pb2.ASSIGNMENT_STATE_DONE, errors=errors))
    summary = good_summary(run_id)
    callees, callers = summary.groups.add(group="callees"), summary.groups.add(group="callers")
    outcomes.set_outcomes(callers, Counter({(outcomes.REGISTRATION_FAILED, 401): 3, (outcomes.SUCCESS, 0): 2}))
    outcomes.set_outcomes(callees, Counter({(outcomes.NOT_CALLED, 0): 3, (outcomes.SUCCESS, 0): 2}))
    outcomes.set_outcomes(summary.total, Counter({(outcomes.REGISTRATION_FAILED, 401): 3, (outcomes.NOT_CALLED, 0): 3,
                                                  (outcomes.SUCCESS, 0): 4}))
    runs.advance(sessions, utcnow(), lost_after_s=60, collect_delay_s=0)
    runs.finish(sessions, run_id, summary, give_up=False)
    row = run_row(sessions, run_id)
    assert (row.state, row.verdict) == ("RUN_STATE_FINISHED", "VERDICT_FAIL")
    assert row.reasons == [
        "endpoints_failed == 0 (default gate: the test sets none): 3 of 10 endpoints failed",
        "group callees: 3 endpoints not called (its callers failed first): 0 of the 1 calls the callers' "
        "schedule would place arrived (e.g. [0])",
        "group callers: 3 endpoints registration failed (SIP 401): REGISTER to sip:… failed: 401 Unauthorized "
        "(sip:…) (e.g. [0], [1])",
    ]


def test_a_lost_worker_fails_its_endpoints_and_the_run_goes_on(sessions: sessionmaker[Session]) -> None:
    run_id, worker_id = running_run(sessions)
    with sessions.begin() as session:
        session.get(Worker, worker_id).state = "WORKER_STATE_ERROR"
    runs.advance(sessions, utcnow(), lost_after_s=60, collect_delay_s=0)
    assert all("worker lost during the run" in p.errors for p in placements(sessions, run_id))
    assert run_row(sessions, run_id).state == "RUN_STATE_COLLECTING"


def test_a_worker_that_restarted_fails_at_once_the_parts_it_no_longer_runs(sessions: sessionmaker[Session]) -> None:
    """Seen: the worker came back under the same id running nothing, and the run stayed "running"
    until its timeout. A reconnect of the same process (same instance id) keeps its parts."""
    secret = bootstrap_local(sessions.kw["bind"], existing_worker_token=None).worker_token_secret
    worker_id = admit(sessions, "w1", max_endpoints=8, secret=secret, instance_id="first")
    run_id = new_run(sessions)
    runs.submit(sessions, run_id)
    runs.mark_delivery(sessions, runs.pending_dispatches(sessions)[0], delivered=True)
    assert admit(sessions, "w1", max_endpoints=8, secret=secret, instance_id="first") == worker_id
    assert all(p.state == "ASSIGNMENT_STATE_ACCEPTED" for p in placements(sessions, run_id))
    assert admit(sessions, "w1", max_endpoints=8, secret=secret, instance_id="second") == worker_id
    assert all(p.state == "ASSIGNMENT_STATE_FAILED" and p.endpoints_failed == p.count and
               p.errors == ["worker restarted; its endpoints stopped"] for p in placements(sessions, run_id))
    runs.advance(sessions, utcnow(), lost_after_s=60, collect_delay_s=0)
    assert run_row(sessions, run_id).state == "RUN_STATE_COLLECTING"


def delivered_to_two_workers(sessions: sessionmaker[Session], spec: tests_pb2.TestSpec = SPEC) -> tuple[str, str, str]:
    """A run placed on two new workers "w1" and "w2" (2 endpoints each) and delivered to both."""
    first, second = admit(sessions, "w1", max_endpoints=2), admit(sessions, "w2", max_endpoints=2)
    run_id = new_run(sessions, spec=spec)
    runs.submit(sessions, run_id)
    for dispatch in runs.pending_dispatches(sessions):
        assert not dispatch.assignment.HasField("start_at"), "the first phase: prepare, then wait"
        runs.mark_delivery(sessions, dispatch, delivered=True)
    return run_id, first, second


def starts(sessions: sessionmaker[Session], now: datetime) -> list[runs.Start]:
    return runs.due_starts(sessions, now, lead_s=1, prepare_wait_s=60, registration_wait_s=30)


def prepared(run_id: str) -> workers_pb2.AssignmentStatus:
    return workers_pb2.AssignmentStatus(run_id=run_id, state=workers_pb2.ASSIGNMENT_STATE_PREPARED)


def test_a_run_begins_at_one_time_once_every_worker_has_prepared_its_part(sessions: sessionmaker[Session]) -> None:
    run_id, first, second = delivered_to_two_workers(sessions)
    now = utcnow()
    report(sessions, first, prepared(run_id))
    assert starts(sessions, now) == [], "w2 has not prepared yet"
    report(sessions, second, prepared(run_id))
    due = starts(sessions, now)
    assert sorted(s.worker_id for s in due) == sorted([first, second])
    assert {s.start_at for s in due} == {now + timedelta(seconds=1)}, "one common start"
    assert run_row(sessions, run_id).started_at is not None
    runs.mark_begun(sessions, due[0])
    assert [s.worker_id for s in starts(sessions, now + timedelta(seconds=1))] == [due[1].worker_id], \
        "an undelivered start is due again; a delivered one is not"


def test_a_part_not_prepared_in_time_does_not_hold_the_others_back(sessions: sessionmaker[Session]) -> None:
    run_id, first, _ = delivered_to_two_workers(sessions)
    report(sessions, first, prepared(run_id))
    assert starts(sessions, utcnow() + timedelta(seconds=59)) == []
    assert len(starts(sessions, utcnow() + timedelta(seconds=61))) == 2, "the late one begins when it can"
    assert run_row(sessions, run_id).reasons == [
        "1 of the run's workers had not prepared their part 60 s after it was sent: their endpoints began late"]


REGISTERING = tests_pb2.TestSpec(name="pbx", groups=[
    tests_pb2.EndpointGroup(name="callees", count=2, role=common_pb2.ENDPOINT_ROLE_CALLEE, codecs=["PCMU"],
                            target=tests_pb2.SipTarget(registrar="sip:pbx.example")),
    tests_pb2.EndpointGroup(name="callers", count=2, role=common_pb2.ENDPOINT_ROLE_CALLER, codecs=["PCMU"],
                            target=tests_pb2.SipTarget(registrar="sip:pbx.example", call_uri="group:callees"))])


def test_callers_of_a_registering_group_begin_once_it_has_registered(sessions: sessionmaker[Session]) -> None:
    """Seen: under load callers INVITEd before their callees had registered, and the registrar said 404."""
    run_id, callee_worker, caller_worker = delivered_to_two_workers(sessions, REGISTERING)
    for worker_id in (callee_worker, caller_worker):
        report(sessions, worker_id, prepared(run_id))
    now = utcnow()
    [callees] = starts(sessions, now)
    assert (callees.worker_id, callees.groups) == (callee_worker, ["callees"])
    runs.mark_begun(sessions, callees)
    running = workers_pb2.AssignmentStatus(run_id=run_id, state=workers_pb2.ASSIGNMENT_STATE_RUNNING,
                                           registered_by_group={"callees": 1})
    report(sessions, callee_worker, running)
    assert starts(sessions, now + timedelta(seconds=5)) == [], "one of the two callees has registered"
    running.registered_by_group["callees"] = 2
    report(sessions, callee_worker, running)
    [callers] = starts(sessions, now + timedelta(seconds=6))
    assert (callers.worker_id, callers.groups, callers.start_at) == (caller_worker, ["callers"], now + timedelta(seconds=7))
    assert run_row(sessions, run_id).reasons == []


def test_callers_begin_when_the_registration_wait_is_over_and_say_why(sessions: sessionmaker[Session]) -> None:
    run_id, callee_worker, caller_worker = delivered_to_two_workers(sessions, REGISTERING)
    for worker_id in (callee_worker, caller_worker):
        report(sessions, worker_id, prepared(run_id))
    now = utcnow()
    runs.mark_begun(sessions, starts(sessions, now)[0])
    report(sessions, callee_worker, workers_pb2.AssignmentStatus(
        run_id=run_id, state=workers_pb2.ASSIGNMENT_STATE_RUNNING, registered_by_group={"callees": 1}))
    assert starts(sessions, now + timedelta(seconds=30)) == []
    [callers] = starts(sessions, now + timedelta(seconds=31.5))
    assert callers.groups == ["callers"]
    starts(sessions, now + timedelta(seconds=32))  # not delivered: due again, said once
    assert run_row(sessions, run_id).reasons == [
        "group callers began after waiting 30 s for group callees to register: 1 of its 2 endpoints had"]


def test_cancel_reaches_the_workers_and_keeps_a_summary(sessions: sessionmaker[Session]) -> None:
    run_id, worker_id = running_run(sessions)
    run, cancels = runs.cancel(sessions, run_id)
    assert run.state == runs_pb2.RUN_STATE_CANCELLED and [c.worker_id for c in cancels] == [worker_id]
    assert runs.cancel(sessions, run_id)[1] == []  # idempotent
    _, collects = runs.advance(sessions, utcnow() + timedelta(seconds=1), lost_after_s=60, collect_delay_s=0)
    assert [c.run_id for c in collects] == [run_id]
    # The worker has not said its part stopped: its last samples may still be on their way.
    assert runs.finish(sessions, run_id, good_summary(run_id), give_up=False) == \
        "the end of their part from 1 worker"
    assert run_row(sessions, run_id).summary is None
    report(sessions, worker_id, workers_pb2.AssignmentStatus(
        run_id=run_id, state=workers_pb2.ASSIGNMENT_STATE_CANCELLED,
        endpoint_seconds_by_group={"callers": 6, "callees": 6}))
    summary = summary_storing(run_id, callers=6, callees=5)
    assert runs.finish(sessions, run_id, summary, give_up=False) == "group callees: 5 of 6 endpoint-seconds stored"
    assert runs.finish(sessions, run_id, summary_storing(run_id, callers=6, callees=6), give_up=False) is None
    row = run_row(sessions, run_id)
    assert row.state == "RUN_STATE_CANCELLED" and row.summary is not None
    assert results_pb2.RunSummary.FromString(row.summary).total.completeness_pct == 100.0


def summary_storing(run_id: str, **seconds: int) -> results_pb2.RunSummary:
    """A good summary whose groups stored these endpoint-seconds."""
    summary = good_summary(run_id)
    summary.total.endpoint_seconds = sum(seconds.values())
    summary.groups.extend(results_pb2.GroupSummary(group=g, endpoints=2, endpoint_seconds=n) for g, n in seconds.items())
    return summary


def test_collection_waits_until_every_sample_sent_is_stored(sessions: sessionmaker[Session]) -> None:
    run_id, worker_id = running_run(sessions)
    report(sessions, worker_id, workers_pb2.AssignmentStatus(
        run_id=run_id, state=workers_pb2.ASSIGNMENT_STATE_DONE, endpoint_seconds_by_group={"callers": 20, "callees": 20}))
    runs.advance(sessions, utcnow(), lost_after_s=60, collect_delay_s=0)
    assert runs.finish(sessions, run_id, summary_storing(run_id, callers=20, callees=0), give_up=False) == \
        "group callees: 0 of 20 endpoint-seconds stored"
    assert run_row(sessions, run_id).state == "RUN_STATE_COLLECTING"
    assert runs.finish(sessions, run_id, summary_storing(run_id, callers=20, callees=20), give_up=False) is None
    row = run_row(sessions, run_id)
    assert (row.state, row.verdict) == ("RUN_STATE_FINISHED", "VERDICT_PASS")
    stored = results_pb2.RunSummary.FromString(row.summary)
    assert [g.completeness_pct for g in stored.groups] == [100.0, 100.0] and stored.total.completeness_pct == 100.0


def test_samples_still_missing_when_collection_gives_up_make_the_run_an_error(sessions: sessionmaker[Session]) -> None:
    run_id, worker_id = running_run(sessions)
    report(sessions, worker_id, workers_pb2.AssignmentStatus(
        run_id=run_id, state=workers_pb2.ASSIGNMENT_STATE_DONE, endpoint_seconds_by_group={"callers": 200, "callees": 200}))
    runs.advance(sessions, utcnow(), lost_after_s=60, collect_delay_s=0)
    assert runs.finish(sessions, run_id, summary_storing(run_id, callers=199, callees=150), give_up=True) == \
        "group callees: 150 of 200 endpoint-seconds stored; group callers: 199 of 200 endpoint-seconds stored"
    row = run_row(sessions, run_id)
    assert (row.state, row.verdict) == ("RUN_STATE_FAILED", "VERDICT_ERROR")
    assert row.reasons[0] == ("results incomplete: 87.2 % of the run's endpoint-seconds were stored, less than 99 % "
                              "(group callees: 75.0 %); not judged")
    stored = results_pb2.RunSummary.FromString(row.summary)
    assert [round(g.completeness_pct, 1) for g in stored.groups] == [99.5, 75.0] and not stored.gates


def test_a_part_lost_with_its_worker_counts_the_seconds_it_did_not_measure(sessions: sessionmaker[Session]) -> None:
    """Its worker's last count is not final: the part is expected to have lasted as long as the run."""
    run_id, worker_id = running_run(sessions)
    report(sessions, worker_id, workers_pb2.AssignmentStatus(
        run_id=run_id, state=workers_pb2.ASSIGNMENT_STATE_RUNNING, endpoint_seconds_by_group={"callers": 4, "callees": 4}))
    with sessions.begin() as session:
        session.get(Worker, worker_id).state = "WORKER_STATE_ERROR"
    runs.advance(sessions, run_row(sessions, run_id).dispatched_at + timedelta(seconds=10), lost_after_s=60,
                 collect_delay_s=0)
    # Nothing to wait for from a lost worker: collection needs no give-up.
    assert runs.finish(sessions, run_id, summary_storing(run_id, callers=4, callees=4), give_up=False) is None
    row = run_row(sessions, run_id)
    stored = results_pb2.RunSummary.FromString(row.summary)
    assert [g.completeness_pct for g in stored.groups] == [20.0, 20.0]  # 4 of 2 endpoints × 10 s
    assert (row.state, row.verdict) == ("RUN_STATE_FAILED", "VERDICT_ERROR")
    assert row.reasons[0].startswith("results incomplete: 20.0 %")


def test_an_assignment_no_gateway_took_is_sent_again_then_fails(
        sessions: sessionmaker[Session], nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through a real NATS: undelivered assignments are retried each tick (a worker whose gateway is
    still subscribing gets its assignment), and fail only after DELIVERY_RETRY_S."""
    monkeypatch.setattr(conductor, "DELIVERY_RETRY_S", 1.0)
    late_worker, absent_worker = admit(sessions, "late", max_endpoints=2), admit(sessions, "absent", max_endpoints=2)
    run_id = new_run(sessions)
    runs.submit(sessions, run_id)
    assert {p.worker_id for p in placements(sessions, run_id)} == {late_worker, absent_worker}

    async def scenario() -> list[workers_pb2.GatewayMessage]:
        nc = await nats.connect(nats_server.url)
        received: list[workers_pb2.GatewayMessage] = []

        async def gateway(msg: Msg) -> None:  # what a gateway replica holding the late worker answers
            received.append(workers_pb2.GatewayMessage.FromString(msg.data))
            await msg.respond(DELIVERED)

        try:
            conducting = conductor.Conductor(OrchestratorSettings(), sessions, nc, metrics=None)  # type: ignore[arg-type]
            await conducting.tick()  # nobody subscribed yet: both stay pending
            assert {p.state for p in placements(sessions, run_id)} == {"ASSIGNMENT_STATE_UNSPECIFIED"}
            await nc.subscribe(command_subject(late_worker), cb=gateway)
            await nc.flush()
            await conducting.tick()
            await asyncio.sleep(1.1)
            await conducting.tick()
            return received
        finally:
            await nc.close()

    received = asyncio.run(scenario())
    assert [m.assignment.run_id for m in received] == [run_id]
    states = {p.worker_id: p for p in placements(sessions, run_id)}
    assert states[late_worker].state == "ASSIGNMENT_STATE_ACCEPTED"
    assert states[absent_worker].state == "ASSIGNMENT_STATE_FAILED"
    assert states[absent_worker].errors == ["the worker was not connected to any gateway"]
    assert run_row(sessions, run_id).state == "RUN_STATE_RUNNING"


def test_a_status_of_a_part_the_platform_has_ended_asks_for_its_cancel(sessions: sessionmaker[Session]) -> None:
    """The run is cancelled while its worker is away; when the worker is back, its resent status
    (still running) is reported as stray, and only that one."""
    run_id = new_run(sessions)
    worker_id = admit(sessions, "w1", max_endpoints=8)
    runs.submit(sessions, run_id)
    [dispatch] = runs.pending_dispatches(sessions)
    runs.mark_delivery(sessions, dispatch, delivered=True)

    def stray(state: int, run: str = run_id) -> list[tuple[str, str]]:
        return workers.record_events(sessions, orchestrator_pb2.ReportWorkerEventsRequest(
            gateway_id="g1", events=[orchestrator_pb2.WorkerEvent(
                worker_id=worker_id, status=workers_pb2.AssignmentStatus(run_id=run, state=state))])).stray

    assert stray(workers_pb2.ASSIGNMENT_STATE_RUNNING) == [], "a live part"
    runs.cancel(sessions, run_id)
    assert stray(workers_pb2.ASSIGNMENT_STATE_RUNNING) == [(worker_id, run_id)]
    assert stray(workers_pb2.ASSIGNMENT_STATE_CANCELLED) == [], "the worker has stopped it"
    assert stray(workers_pb2.ASSIGNMENT_STATE_ACCEPTED, "never-placed") == [(worker_id, "never-placed")]
    assert {p.state for p in placements(sessions, run_id)} == {"ASSIGNMENT_STATE_CANCELLED"}


# Baselines (docs/verdict.md): a test's gates relative to an earlier run of the same test.
RELATIVE = tests_pb2.TestSpec(name=SPEC.name, groups=SPEC.groups, baseline="last-pass", gates=[
    *SPEC.gates, tests_pb2.QualityGate(metric="mos_avg", baseline=tests_pb2.BaselineLimit(max_drop=0.1))])


def add_run(sessions: sessionmaker[Session], spec: tests_pb2.TestSpec, test_id: str = "") -> tuple[str, str]:
    """A QUEUED run of ``spec`` stored as the next version of the test (of a new test without
    ``test_id``): (test id, run id). Runs are created in the order of the calls."""
    boot = bootstrap_local(sessions.kw["bind"], existing_worker_token=None)
    with sessions.begin() as session:
        if not test_id:
            test = Test(project_id=boot.project_id, name=f"b{utcnow().timestamp()}", current_version=0)
            session.add(test)
            session.flush()
            test_id = test.id
        test = session.get_one(Test, test_id)
        test.current_version += 1
        session.add(TestVersion(test_id=test_id, version=test.current_version, spec=spec.SerializeToString()))
        session.flush()
        run = Run(test_id=test_id, test_version=test.current_version, project_id=boot.project_id,
                  deadline_at=utcnow() + timedelta(seconds=600))
        session.add(run)
        session.flush()
        return test_id, run.id


def judged(sessions: sessionmaker[Session], run_id: str, worker_id: str, mos_avg: float) -> Run:
    """Takes the run through placement, execution and collection to its verdict, as the
    orchestrator does, with a summary of that MOS."""
    runs.submit(sessions, run_id)
    [dispatch] = [d for d in runs.pending_dispatches(sessions) if d.run_id == run_id]
    runs.mark_delivery(sessions, dispatch, delivered=True)
    report(sessions, worker_id, workers_pb2.AssignmentStatus(run_id=run_id, state=workers_pb2.ASSIGNMENT_STATE_DONE))
    runs.advance(sessions, utcnow(), lost_after_s=60, collect_delay_s=0)
    summary = good_summary(run_id)
    summary.total.mos_avg = mos_avg
    assert runs.finish(sessions, run_id, summary, give_up=False) is None
    return run_row(sessions, run_id)


def gates_of(row: Run) -> list[tuple[str, float, bool]]:
    return [(g.gate, g.observed, g.passed) for g in results_pb2.RunSummary.FromString(row.summary).gates]


LAST_PASS_REASON = "baseline: run {} (last-pass: the newest earlier run of this test that passed)"


def test_last_pass_is_the_newest_earlier_passing_run_of_the_test(sessions: sessionmaker[Session]) -> None:
    worker_id = admit(sessions, "w1", max_endpoints=8)
    test_id, passed = add_run(sessions, SPEC)  # version 1: absolute gates only
    _, failed = add_run(sessions, SPEC, test_id)
    _, third = add_run(sessions, RELATIVE, test_id)  # version 2 adds the relative gate
    _, fourth = add_run(sessions, RELATIVE, test_id)
    _, elsewhere = add_run(sessions, SPEC)  # another test's run, passing and newer: never a baseline
    assert judged(sessions, passed, worker_id, mos_avg=4.3).verdict == "VERDICT_PASS"
    assert judged(sessions, failed, worker_id, mos_avg=3.0).verdict == "VERDICT_FAIL"
    assert judged(sessions, elsewhere, worker_id, mos_avg=4.6).verdict == "VERDICT_PASS"
    # The fourth is judged first: its baseline is the first run, the FAIL in between is skipped.
    row = judged(sessions, fourth, worker_id, mos_avg=4.25)
    assert (row.state, row.verdict) == ("RUN_STATE_FINISHED", "VERDICT_PASS")
    assert row.reasons == [LAST_PASS_REASON.format(passed)]
    assert gates_of(row)[1] == ("mos_avg at most 0.1 below the baseline", 4.25, True)
    # The third passes its absolute gate (4.15 >= 4) but is 0.15 below the first run. The fourth,
    # a PASS at 4.25 judged before it, was created after it: not its baseline (against it, 4.15 would hold).
    row = judged(sessions, third, worker_id, mos_avg=4.15)
    assert (row.state, row.verdict) == ("RUN_STATE_FINISHED", "VERDICT_FAIL")
    assert row.reasons == ["mos_avg at most 0.1 below the baseline: observed 4.15, baseline 4.3 (change -0.15)",
                           LAST_PASS_REASON.format(passed)]
    assert [passed for _, _, passed in gates_of(row)] == [True, False]


def test_without_a_baseline_run_the_relative_gate_fails_and_says_why(sessions: sessionmaker[Session]) -> None:
    worker_id = admit(sessions, "w1", max_endpoints=8)
    test_id, first = add_run(sessions, RELATIVE)
    row = judged(sessions, first, worker_id, mos_avg=4.3)
    assert (row.state, row.verdict) == ("RUN_STATE_FINISHED", "VERDICT_FAIL"), "the first run: not a silent pass"
    assert row.reasons == ["mos_avg at most 0.1 below the baseline: no baseline run: no earlier run of this test "
                           "finished with a PASS"]
    assert gates_of(row) == [("mos_avg >= 4", 4.3, True), ("mos_avg at most 0.1 below the baseline", 4.3, False)]

    other_test, other_run = add_run(sessions, SPEC)
    assert judged(sessions, other_run, worker_id, mos_avg=4.3).verdict == "VERDICT_PASS"
    _, still_queued = add_run(sessions, SPEC, test_id)
    for wanted, why in ((other_run, f"no run {other_run!r} of this test"), ("f" * 32, f"no run {'f' * 32!r} of this test"),
                        (still_queued, f"run {still_queued} is queued, not finished")):
        pinned = tests_pb2.TestSpec()
        pinned.CopyFrom(RELATIVE)
        pinned.baseline = wanted
        _, run_id = add_run(sessions, pinned, test_id)
        row = judged(sessions, run_id, worker_id, mos_avg=4.3)
        assert row.verdict == "VERDICT_FAIL"
        assert row.reasons == [f"mos_avg at most 0.1 below the baseline: no baseline run: {why}"], wanted


def test_a_baseline_named_by_run_id_is_used_though_it_failed(sessions: sessionmaker[Session]) -> None:
    worker_id = admit(sessions, "w1", max_endpoints=8)
    test_id, failed = add_run(sessions, SPEC)
    assert judged(sessions, failed, worker_id, mos_avg=3.9).verdict == "VERDICT_FAIL"
    pinned = tests_pb2.TestSpec()
    pinned.CopyFrom(RELATIVE)
    pinned.baseline = failed
    del pinned.gates[0]  # the relative gate only
    _, run_id = add_run(sessions, pinned, test_id)
    row = judged(sessions, run_id, worker_id, mos_avg=3.85)
    assert (row.verdict, row.reasons) == ("VERDICT_PASS", [f"baseline: run {failed}"])
    assert gates_of(row) == [("mos_avg at most 0.1 below the baseline", 3.85, True)]
