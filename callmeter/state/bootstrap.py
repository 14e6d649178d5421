"""First start of a local platform: an organization, a project, an owner and their tokens."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from callmeter.common.tokens import API_TOKEN_PREFIX, WORKER_TOKEN_PREFIX, hash_secret, new_secret
from callmeter.state.models import ApiToken, Organization, Project, RoleBinding, User, WorkerToken
from callmeter.v1 import tenancy_pb2

LOCAL_ORGANIZATION = "local"
LOCAL_PROJECT = "default"
LOCAL_WORKER_TOKEN = "local worker"


@dataclass(frozen=True)
class Bootstrap:
    organization_id: str
    project_id: str
    #: Set only when the owner was created now: the secret is shown once.
    owner_token_secret: str | None
    #: Set only when a new worker token was created now.
    worker_token_secret: str | None


def bootstrap_local(engine: Engine, existing_worker_token: str | None) -> Bootstrap:
    """Idempotent: a second call on the same store creates nothing and returns no secrets.

    ``existing_worker_token`` is the secret kept from a previous start; if it no longer matches a
    live worker token (revoked, or a different store), a new one is made.
    """
    with Session(engine) as session, session.begin():
        organization = session.scalar(sa.select(Organization).where(Organization.name == LOCAL_ORGANIZATION))
        owner_secret = None
        if organization is None:
            organization = Organization(name=LOCAL_ORGANIZATION)
            project = Project(name=LOCAL_PROJECT)
            session.add(organization)
            session.flush()
            project.organization_id = organization.id
            owner = User(name="owner")
            session.add_all([project, owner])
            session.flush()
            session.add(RoleBinding(user_id=owner.id, role=tenancy_pb2.Role.Name(tenancy_pb2.ROLE_OWNER),
                                    organization_id=organization.id))
            owner_secret = new_secret(API_TOKEN_PREFIX)
            session.add(ApiToken(user_id=owner.id, name="bootstrap owner", secret_hash=hash_secret(owner_secret)))
        project = session.scalar(sa.select(Project).where(Project.organization_id == organization.id,
                                                          Project.name == LOCAL_PROJECT))
        worker_secret = None
        if existing_worker_token is None or session.scalar(
            sa.select(WorkerToken).where(WorkerToken.secret_hash == hash_secret(existing_worker_token),
                                         WorkerToken.revoked_at.is_(None))) is None:
            worker_secret = new_secret(WORKER_TOKEN_PREFIX)
            session.add(WorkerToken(name=LOCAL_WORKER_TOKEN, organization_id=organization.id,
                                    secret_hash=hash_secret(worker_secret)))
        return Bootstrap(organization.id, project.id if project else "", owner_secret, worker_secret)
