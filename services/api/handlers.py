"""Plain RPC handlers: (session, principal, request) → response, testable without gRPC."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from callmeter.common.errors import CallmeterError, ErrorCode
from callmeter.state.convert import worker_to_proto
from callmeter.state.models import Project, Worker, WorkerToken
from callmeter.v1 import tenancy_pb2, workers_pb2
from services.api.auth import Principal, require


def who_am_i(session: Session, principal: Principal, request: tenancy_pb2.WhoAmIRequest) -> tenancy_pb2.WhoAmIResponse:
    user = principal.user
    reply = tenancy_pb2.WhoAmIResponse(user=tenancy_pb2.User(id=user.id, name=user.name, email=user.email or ""))
    for binding in principal.bindings:
        message = tenancy_pb2.RoleBinding(user_id=user.id, role=tenancy_pb2.Role.Value(binding.role))
        if binding.organization_id:
            message.organization_id = binding.organization_id
        else:
            message.project_id = binding.project_id or ""
        reply.bindings.append(message)
    return reply


def _worker_role(session: Session, principal: Principal, token: WorkerToken) -> int:
    if token.organization_id:
        return principal.role_on_organization(token.organization_id)
    project = session.get(Project, token.project_id)
    return principal.role_on_project(project) if project else tenancy_pb2.ROLE_UNSPECIFIED


def list_workers(session: Session, principal: Principal,
                 request: workers_pb2.ListWorkersRequest) -> workers_pb2.ListWorkersResponse:
    """Workers whose token scope the caller may view (viewer or above), optionally one project's."""
    rows = session.execute(sa.select(Worker, WorkerToken).join(WorkerToken, Worker.token_id == WorkerToken.id)
                           .order_by(Worker.name)).all()
    reply = workers_pb2.ListWorkersResponse()
    for worker, token in rows:
        if request.project_id and token.project_id not in (None, request.project_id):
            continue
        if _worker_role(session, principal, token) >= tenancy_pb2.ROLE_VIEWER:
            reply.workers.append(worker_to_proto(worker))
    return reply


def get_worker(session: Session, principal: Principal, request: workers_pb2.GetWorkerRequest) -> workers_pb2.Worker:
    row = session.execute(sa.select(Worker, WorkerToken).join(WorkerToken, Worker.token_id == WorkerToken.id)
                          .where(Worker.id == request.worker_id)).first()
    if row is None:
        raise CallmeterError(ErrorCode.NOT_FOUND, f"no worker {request.worker_id!r}")
    require(_worker_role(session, principal, row.WorkerToken), tenancy_pb2.ROLE_VIEWER, "reading a worker")
    return worker_to_proto(row.Worker)
