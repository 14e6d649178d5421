"""First start of a local platform: an organization, a project, an owner and their tokens."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from callmeter.common.tokens import API_TOKEN_PREFIX, WORKER_TOKEN_PREFIX, hash_secret, new_secret
from callmeter.state.models import ApiToken, Organization, Project, RoleBinding, User, WorkerToken, utcnow
from callmeter.v1 import tenancy_pb2

LOCAL_ORGANIZATION = "local"
LOCAL_PROJECT = "default"
LOCAL_OWNER_TOKEN = "bootstrap owner"
LOCAL_WORKER_TOKEN = "local worker"
ROLE_OWNER = tenancy_pb2.Role.Name(tenancy_pb2.ROLE_OWNER)


@dataclass(frozen=True)
class Bootstrap:
    organization_id: str
    project_id: str
    #: Set only when an owner token was created now: the secret is shown once.
    owner_token_secret: str | None
    #: Set only when a new worker token was created now.
    worker_token_secret: str | None


def bootstrap_local(engine: Engine, existing_worker_token: str | None, new_owner_token: bool = False,
                    keep_owner_secret: Callable[[str], None] | None = None) -> Bootstrap:
    """Idempotent: a second call on the same store creates nothing and returns no secrets (unless
    ``new_owner_token``).

    ``existing_worker_token`` is the secret kept from a previous start; if it no longer matches a
    live worker token (revoked, or a different store), a new one is made. ``new_owner_token``
    revokes the owner's bootstrap tokens and makes a new one. ``keep_owner_secret`` gets a new
    owner secret before the transaction commits: if it raises, nothing is created.
    """
    with Session(engine) as session, session.begin():
        organization = session.scalar(sa.select(Organization).where(Organization.name == LOCAL_ORGANIZATION))
        if organization is None:
            organization = Organization(name=LOCAL_ORGANIZATION)
            session.add(organization)
            session.flush()
            session.add(Project(name=LOCAL_PROJECT, organization_id=organization.id))
            new_owner_token = True
        owner_secret = None
        if new_owner_token:
            owner = _local_owner(session, organization.id)
            session.execute(sa.update(ApiToken).where(ApiToken.user_id == owner.id, ApiToken.name == LOCAL_OWNER_TOKEN,
                                                      ApiToken.revoked_at.is_(None)).values(revoked_at=utcnow()))
            owner_secret = new_secret(API_TOKEN_PREFIX)
            session.add(ApiToken(user_id=owner.id, name=LOCAL_OWNER_TOKEN, secret_hash=hash_secret(owner_secret)))
        project = session.scalar(sa.select(Project).where(Project.organization_id == organization.id,
                                                          Project.name == LOCAL_PROJECT))
        worker_secret = None
        if existing_worker_token is None or session.scalar(
            sa.select(WorkerToken).where(WorkerToken.secret_hash == hash_secret(existing_worker_token),
                                         WorkerToken.revoked_at.is_(None))) is None:
            worker_secret = new_secret(WORKER_TOKEN_PREFIX)
            session.add(WorkerToken(name=LOCAL_WORKER_TOKEN, organization_id=organization.id,
                                    secret_hash=hash_secret(worker_secret)))
        if owner_secret is not None and keep_owner_secret is not None:
            session.flush()  # a secret is kept only once its token could be stored
            keep_owner_secret(owner_secret)
        return Bootstrap(organization.id, project.id if project else "", owner_secret, worker_secret)


def _local_owner(session: Session, organization_id: str) -> User:
    """The organization's first owner, or a new one if it has none."""
    owner = session.scalar(sa.select(User).join(RoleBinding, RoleBinding.user_id == User.id)
                           .where(RoleBinding.organization_id == organization_id, RoleBinding.role == ROLE_OWNER)
                           .order_by(RoleBinding.created_at).limit(1))
    if owner is None:
        owner = User(name="owner")
        session.add(owner)
        session.flush()
        session.add(RoleBinding(user_id=owner.id, role=ROLE_OWNER, organization_id=organization_id))
    return owner
