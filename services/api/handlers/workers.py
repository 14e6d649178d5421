"""WorkerService: a worker is visible to whoever may view its token's scope."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from callmeter.common.errors import CallmeterError, ErrorCode
from callmeter.state.convert import worker_to_proto
from callmeter.state.models import Project, Worker, WorkerToken
from callmeter.v1 import workers_pb2
from services.api.auth import VIEWER, Principal, project_for, require, role_on_scope
from services.api.paging import page


def list_workers(session: Session, principal: Principal,
                 request: workers_pb2.ListWorkersRequest) -> workers_pb2.ListWorkersResponse:
    """Workers the caller may see; with a project, those serving it (its own and its organization's)."""
    organizations = [b.organization_id for b in principal.bindings if b.organization_id]
    query = (sa.select(Worker).join(WorkerToken, Worker.token_id == WorkerToken.id)
             .where(sa.or_(WorkerToken.organization_id.in_(organizations),
                           WorkerToken.project_id.in_(sa.select(Project.id).where(principal.sees_project()))))
             .order_by(Worker.name, Worker.id))
    if request.project_id:
        project = project_for(session, principal, request.project_id, VIEWER, "listing a project's workers")
        query = query.where(sa.or_(WorkerToken.project_id == project.id,
                                   WorkerToken.organization_id == project.organization_id))
    rows, next_page = page(session, query, request.page)
    return workers_pb2.ListWorkersResponse(workers=[worker_to_proto(row.Worker) for row in rows], page=next_page)


def get_worker(session: Session, principal: Principal, request: workers_pb2.GetWorkerRequest) -> workers_pb2.Worker:
    row = session.execute(sa.select(Worker, WorkerToken).join(WorkerToken, Worker.token_id == WorkerToken.id)
                          .where(Worker.id == request.worker_id)).first()
    if row is None:
        raise CallmeterError(ErrorCode.NOT_FOUND, f"no worker {request.worker_id!r}")
    token = row.WorkerToken
    require(role_on_scope(session, principal, token.organization_id, token.project_id), VIEWER, "reading a worker")
    return worker_to_proto(row.Worker)
