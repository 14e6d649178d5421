"""The worker registry on a real state store: which gateway replica's word counts for a worker."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from callmeter.state.bootstrap import bootstrap_local
from callmeter.state.models import Worker
from callmeter.v1 import orchestrator_pb2, workers_pb2
from services.orchestrator import workers
from tests.orchestrator.test_runs import sessions as sessions  # noqa: F401  (the fixture, reused)


def token(sessions: sessionmaker[Session]) -> str:  # noqa: F811
    secret = bootstrap_local(sessions.kw["bind"], existing_worker_token=None).worker_token_secret
    assert secret is not None
    return secret


def connect(sessions: sessionmaker[Session], secret: str, gateway_id: str) -> str:  # noqa: F811
    """The worker "mover" admitted through ``gateway_id``; returns its id (the same on every replica)."""
    hello = workers_pb2.Hello(token=secret, name="mover")
    return workers.admit_worker(sessions, orchestrator_pb2.AdmitWorkerRequest(hello=hello, gateway_id=gateway_id)).id


def disconnected(sessions: sessionmaker[Session], gateway_id: str, worker_id: str) -> None:  # noqa: F811
    workers.record_events(sessions, orchestrator_pb2.ReportWorkerEventsRequest(gateway_id=gateway_id, events=[
        orchestrator_pb2.WorkerEvent(worker_id=worker_id, disconnected="connection lost")]))


def record(sessions: sessionmaker[Session], worker_id: str) -> tuple[str | None, str]:  # noqa: F811
    with sessions() as session:
        worker = session.get(Worker, worker_id)
        assert worker is not None
        return worker.gateway_id, worker.state


def test_a_late_disconnect_from_the_old_replica_leaves_the_worker_online_on_the_new_one(
        sessions: sessionmaker[Session]) -> None:  # noqa: F811
    """The worker moved from gw-1 to gw-2 before gw-1 saw its old stream end (a half-open TCP
    connection lingers until keepalive gives up); gw-1's disconnect arrives afterwards."""
    secret = token(sessions)
    worker_id = connect(sessions, secret, "gw-1")
    assert connect(sessions, secret, "gw-2") == worker_id
    disconnected(sessions, "gw-1", worker_id)
    assert record(sessions, worker_id) == ("gw-2", "WORKER_STATE_ONLINE")
    # The current replica's word counts.
    disconnected(sessions, "gw-2", worker_id)
    assert record(sessions, worker_id) == ("gw-2", "WORKER_STATE_OFFLINE")


def test_a_disconnect_from_the_workers_own_replica_puts_it_offline(sessions: sessionmaker[Session]) -> None:  # noqa: F811
    worker_id = connect(sessions, token(sessions), "gw-1")
    workers.record_events(sessions, orchestrator_pb2.ReportWorkerEventsRequest(gateway_id="gw-1", events=[
        orchestrator_pb2.WorkerEvent(worker_id=worker_id, heartbeat=workers_pb2.Heartbeat(
            running_endpoints=4, state=workers_pb2.WORKER_STATE_BUSY))]))
    assert record(sessions, worker_id) == ("gw-1", "WORKER_STATE_BUSY")
    disconnected(sessions, "gw-1", worker_id)
    assert record(sessions, worker_id) == ("gw-1", "WORKER_STATE_OFFLINE")
    with sessions() as session:
        assert session.get(Worker, worker_id).running_endpoints == 0  # type: ignore[union-attr]


def test_a_late_heartbeat_or_goodbye_from_the_old_replica_is_ignored(sessions: sessionmaker[Session]) -> None:  # noqa: F811
    """gw-1 still holds the worker's old, half-open stream and reports what it read last: a BUSY
    heartbeat and a goodbye. The worker is ONLINE on gw-2 and stays so."""
    secret = token(sessions)
    worker_id = connect(sessions, secret, "gw-1")
    assert connect(sessions, secret, "gw-2") == worker_id
    stale = [
        orchestrator_pb2.WorkerEvent(worker_id=worker_id, heartbeat=workers_pb2.Heartbeat(
            running_endpoints=4, state=workers_pb2.WORKER_STATE_BUSY)),
        orchestrator_pb2.WorkerEvent(worker_id=worker_id, goodbye=workers_pb2.Goodbye(reason="SIGTERM")),
    ]
    workers.record_events(sessions, orchestrator_pb2.ReportWorkerEventsRequest(gateway_id="gw-1", events=stale))
    assert record(sessions, worker_id) == ("gw-2", "WORKER_STATE_ONLINE")
    with sessions() as session:
        assert session.get(Worker, worker_id).running_endpoints == 0  # type: ignore[union-attr]
    # The same goodbye through the worker's own replica counts.
    workers.record_events(sessions, orchestrator_pb2.ReportWorkerEventsRequest(gateway_id="gw-2", events=stale[1:]))
    assert record(sessions, worker_id) == ("gw-2", "WORKER_STATE_DRAINING")
