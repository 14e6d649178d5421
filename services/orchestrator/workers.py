"""The worker registry: admission by token, liveness from heartbeats, staleness.

Plain functions over a SQLAlchemy session factory, so they are tested without gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from callmeter.common.errors import CallmeterError, ErrorCode
from callmeter.common.tokens import hash_secret
from callmeter.state.convert import worker_to_proto
from callmeter.state.models import ID_LENGTH, Worker, WorkerToken, utcnow
from callmeter.v1 import orchestrator_pb2, workers_pb2
from services.orchestrator.runs import fail_parts, record_status

STATE = workers_pb2.WorkerState.Name
LIVE_STATES = [STATE(s) for s in (workers_pb2.WORKER_STATE_ONLINE, workers_pb2.WORKER_STATE_BUSY,
                                  workers_pb2.WORKER_STATE_DRAINING)]
# States a worker may claim for itself in a heartbeat; ERROR and OFFLINE are the platform's to give.
CLAIMABLE_STATES = {workers_pb2.WORKER_STATE_ONLINE, workers_pb2.WORKER_STATE_BUSY, workers_pb2.WORKER_STATE_DRAINING}
MAX_NAME = 255


def admit_worker(sessions: sessionmaker[Session], request: orchestrator_pb2.AdmitWorkerRequest) -> workers_pb2.Worker:
    """Checks the hello's token and records the worker ONLINE; UNAUTHENTICATED if the token is bad."""
    hello = request.hello
    name = hello.name.strip()
    if not name or len(name) > MAX_NAME:
        raise CallmeterError(ErrorCode.INVALID_ARGUMENT, f"hello.name must be 1 to {MAX_NAME} characters")
    with sessions.begin() as session:
        token = session.scalar(sa.select(WorkerToken).where(WorkerToken.secret_hash == hash_secret(hello.token)))
        if token is None or token.revoked_at is not None:
            raise CallmeterError(ErrorCode.UNAUTHENTICATED, "unknown or revoked worker token")
        worker = session.scalar(sa.select(Worker).where(Worker.token_id == token.id, Worker.name == name))
        if worker is None:
            worker = Worker(token_id=token.id, name=name)
            session.add(worker)
        now = utcnow()
        if worker.instance_id and hello.instance_id != worker.instance_id:
            fail_parts(session, worker.id, "worker restarted; its endpoints stopped")
        worker.instance_id = hello.instance_id[:ID_LENGTH] or None
        worker.labels = [{"key": label.key, "value": label.value} for label in hello.labels]
        worker.capacity = hello.capacity.SerializeToString()
        worker.version = hello.version[:64]
        worker.state = STATE(workers_pb2.WORKER_STATE_ONLINE)
        worker.gateway_id = request.gateway_id[:MAX_NAME]
        worker.peer = request.peer[:MAX_NAME]
        worker.last_heartbeat = now
        worker.connected_at = now
        worker.running_endpoints = 0
        session.flush()
        return worker_to_proto(worker)


@dataclass(frozen=True)
class Recorded:
    #: This gateway's workers whose token was revoked.
    revoked: list[str]
    #: (worker id, run id) of parts workers execute that the platform has ended (runs.record_status).
    stray: list[tuple[str, str]]


def record_events(sessions: sessionmaker[Session], request: orchestrator_pb2.ReportWorkerEventsRequest) -> Recorded:
    """Applies heartbeats, statuses, goodbyes and disconnects.

    A heartbeat, goodbye or disconnect from a gateway replica other than the worker's current one
    is stale: the worker reconnected to another replica (recorded by its admission there) before
    the old replica saw its stream end, and stays as it is. Run status is applied from any replica:
    it is about the run, whichever stream carried it."""
    reporter = request.gateway_id[:MAX_NAME]
    stray: list[tuple[str, str]] = []
    with sessions.begin() as session:
        for event in request.events:
            worker = session.get(Worker, event.worker_id)
            if worker is None:
                continue
            kind = event.WhichOneof("event")
            if kind == "status":
                if record_status(session, worker.id, event.status):
                    stray.append((worker.id, event.status.run_id))
            elif worker.gateway_id != reporter:
                continue
            elif kind == "heartbeat":
                worker.last_heartbeat = utcnow()
                worker.running_endpoints = max(0, event.heartbeat.running_endpoints)
                if event.heartbeat.state in CLAIMABLE_STATES:
                    worker.state = STATE(event.heartbeat.state)
            elif kind == "goodbye":
                worker.state = STATE(workers_pb2.WORKER_STATE_DRAINING)
            elif kind == "disconnected":
                worker.state = STATE(workers_pb2.WORKER_STATE_OFFLINE)
                worker.running_endpoints = 0
        revoked = session.scalars(
            sa.select(Worker.id).join(WorkerToken, Worker.token_id == WorkerToken.id).where(
                Worker.gateway_id == request.gateway_id, Worker.state.in_(LIVE_STATES),
                WorkerToken.revoked_at.is_not(None))
        )
        return Recorded(list(revoked), stray)


def mark_stale(sessions: sessionmaker[Session], stale_after_s: float) -> list[str]:
    """Puts live workers whose last heartbeat is older than ``stale_after_s`` into ERROR."""
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    with sessions.begin() as session:
        stale = list(session.scalars(
            sa.select(Worker).where(Worker.state.in_(LIVE_STATES), Worker.last_heartbeat < cutoff)))
        for worker in stale:
            worker.state = STATE(workers_pb2.WORKER_STATE_ERROR)
        return [worker.id for worker in stale]
