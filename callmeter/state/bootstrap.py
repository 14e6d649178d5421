"""First start: an organization, its owner and the owner's API token.

``bootstrap_local`` is `callmeter up`'s (organization "local", project "default", the local
worker's token); ``bootstrap_organization`` is `callmeter bootstrap`'s, run once against the
production database. Both are idempotent, and both show a secret only when it was made now.

    CallmeterError
    ├── OrganizationRefused   other organizations exist: bootstrap makes the first one only
    └── OwnerRefused          the organization exists and the owner named is not one of its owners
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from callmeter.common.errors import CallmeterError, ErrorCode
from callmeter.common.tokens import API_TOKEN_PREFIX, WORKER_TOKEN_PREFIX, hash_secret, new_secret
from callmeter.state.models import ApiToken, Organization, Project, RoleBinding, User, WorkerToken, utcnow
from callmeter.v1 import tenancy_pb2

LOCAL_ORGANIZATION = "local"
LOCAL_PROJECT = "default"
LOCAL_WORKER_TOKEN = "local worker"
#: The name of the owner token a bootstrap makes; a new one revokes only tokens of this name.
BOOTSTRAP_OWNER_TOKEN = "bootstrap owner"
ROLE_OWNER = tenancy_pb2.Role.Name(tenancy_pb2.ROLE_OWNER)
_SHOWN_NAMES = 5  # organization names a refusal lists


@dataclass(frozen=True)
class Bootstrap:
    organization_id: str
    project_id: str
    #: Set only when an owner token was created now: the secret is shown once.
    owner_token_secret: str | None
    #: Set only when a new worker token was created now.
    worker_token_secret: str | None


@dataclass(frozen=True)
class OrganizationBootstrap:
    organization_id: str
    organization_created: bool
    #: The owner named was made now: with a new organization, or added with ``add_owner``.
    owner_created: bool
    #: The names of the organization's owners after the call, oldest grant first.
    owners: tuple[str, ...]
    #: The project named, or None when none was.
    project_id: str | None
    project_created: bool
    #: Bootstrap tokens of the owner revoked now (``new_owner_token``).
    revoked_owner_tokens: int
    #: Set only when an owner token was created now: the secret is shown once.
    owner_token_secret: str | None


class OrganizationRefused(CallmeterError):
    """Organizations exist and none has the name given (a typo would make another one, and another
    owner, silently); further organizations are made through the API. Nothing was written."""

    def __init__(self, organization: str, names: list[str]) -> None:
        shown = ", ".join(map(repr, names[:_SHOWN_NAMES])) + (", …" if len(names) > _SHOWN_NAMES else "")
        super().__init__(ErrorCode.FAILED_PRECONDITION,
                         f"no organization {organization!r}, and the database has {len(names)} other(s) ({shown}): "
                         "bootstrap makes the first one only; an owner creates more through the API")


class OwnerRefused(CallmeterError):
    """The organization exists and the owner named is not one of its owners; nothing was written."""

    def __init__(self, organization: str, owner: str, owners: list[str]) -> None:
        held = f"owner(s) {', '.join(map(repr, owners))}" if owners else "no owner"
        super().__init__(ErrorCode.FAILED_PRECONDITION, f"organization {organization!r} exists with {held}, "
                                                        f"not {owner!r}")


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
            owners = _owners(session, organization.id)
            owner = owners[0] if owners else _add_owner(session, organization.id, "owner")
            owner_secret, _ = _new_owner_token(session, owner.id)
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


def bootstrap_organization(engine: Engine, organization: str, owner: str, project: str | None = None, *,
                           new_owner_token: bool = False, add_owner: bool = False) -> OrganizationBootstrap:
    """Makes what is named and missing, in one transaction: the organization with ``owner`` as
    its owner and an owner API token, and the ``project`` if one is named.

    Idempotent: on an organization that ``owner`` owns already it creates nothing and returns no
    secret, unless ``new_owner_token`` (revoke that owner's bootstrap tokens, make a new one) or a
    project named that does not exist. An existing organization that ``owner`` does not own
    raises OwnerRefused, unless ``add_owner``: then ``owner`` becomes another owner, with a token.
    Only the first organization is made here: with others and none of this name, OrganizationRefused.
    """
    with Session(engine) as session, session.begin():
        row = session.scalar(sa.select(Organization).where(Organization.name == organization))
        organization_created = row is None
        if row is None:
            others = list(session.scalars(sa.select(Organization.name).order_by(Organization.created_at)))
            if others:
                raise OrganizationRefused(organization, others)
            row = Organization(name=organization)
            session.add(row)
            session.flush()
        owners = _owners(session, row.id)
        user = next((held for held in owners if held.name == owner), None)
        owner_created = user is None
        if user is None:
            if not organization_created and not add_owner:
                raise OwnerRefused(organization, owner, [held.name for held in owners])
            user = _add_owner(session, row.id, owner)
            owners.append(user)
        secret, revoked = _new_owner_token(session, user.id) if owner_created or new_owner_token else (None, 0)
        project_id, project_created = None, False
        if project is not None:
            project_id = session.scalar(sa.select(Project.id).where(Project.organization_id == row.id,
                                                                    Project.name == project))
            if project_id is None:
                new_project = Project(organization_id=row.id, name=project)
                session.add(new_project)
                session.flush()
                project_id, project_created = new_project.id, True
        return OrganizationBootstrap(row.id, organization_created, owner_created, tuple(held.name for held in owners),
                                     project_id, project_created, revoked, secret)


def _owners(session: Session, organization_id: str) -> list[User]:
    """The organization's owners, oldest grant first."""
    return list(session.scalars(sa.select(User).join(RoleBinding, RoleBinding.user_id == User.id)
                                .where(RoleBinding.organization_id == organization_id, RoleBinding.role == ROLE_OWNER)
                                .order_by(RoleBinding.created_at)))


def _add_owner(session: Session, organization_id: str, name: str) -> User:
    owner = User(name=name)
    session.add(owner)
    session.flush()
    session.add(RoleBinding(user_id=owner.id, role=ROLE_OWNER, organization_id=organization_id))
    return owner


def _new_owner_token(session: Session, owner_id: str) -> tuple[str, int]:
    """Revokes the owner's live bootstrap tokens and makes a new one: its secret, and how many were revoked."""
    revoked = session.execute(sa.update(ApiToken).where(ApiToken.user_id == owner_id,
                                                        ApiToken.name == BOOTSTRAP_OWNER_TOKEN,
                                                        ApiToken.revoked_at.is_(None)).values(revoked_at=utcnow()))
    secret = new_secret(API_TOKEN_PREFIX)
    session.add(ApiToken(user_id=owner_id, name=BOOTSTRAP_OWNER_TOKEN, secret_hash=hash_secret(secret)))
    return secret, revoked.rowcount
