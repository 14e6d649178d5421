"""Who is calling: an API token in the `authorization: Bearer …` metadata, and the roles it holds.

Roles are ordered (viewer < runner < editor < admin < owner); a role on an organization holds on
all of its projects, a role on a project only there. What each RPC needs:

    viewer  reading tests, runs, projects and workers
    runner  starting and cancelling runs
    editor  creating, updating and deleting tests
    admin   projects, members (users, role grants) and worker tokens
    owner   the organization itself and its owners

A refusal is PERMISSION_DENIED naming the role that was needed; an id that names nothing is
NOT_FOUND (ids are random, so this reveals nothing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from callmeter.common.enum_words import word
from callmeter.common.errors import CallmeterError, ErrorCode
from callmeter.common.tokens import hash_secret
from callmeter.state.models import ApiToken, Organization, Project, RoleBinding, User, utcnow
from callmeter.v1 import tenancy_pb2

# last_used_at is kept to this resolution: exact enough to find unused tokens.
LAST_USED_RESOLUTION = timedelta(minutes=1)

NO_ROLE = tenancy_pb2.ROLE_UNSPECIFIED
VIEWER = tenancy_pb2.ROLE_VIEWER
RUNNER = tenancy_pb2.ROLE_RUNNER
EDITOR = tenancy_pb2.ROLE_EDITOR
ADMIN = tenancy_pb2.ROLE_ADMIN
OWNER = tenancy_pb2.ROLE_OWNER

_tokens, _users, _bindings, _projects = (ApiToken.__table__, User.__table__, RoleBinding.__table__,
                                         Project.__table__)


def role_name(role: int) -> str:
    return word(tenancy_pb2.Role, role)


def autoflush(session: Session) -> None:
    """Flushes pending ORM changes before a Core statement, as an ORM query would: a handler reads its own writes."""
    if session.autoflush:
        session.flush()


def read(session: Session, statement: sa.Executable, params: Mapping[str, Any]) -> sa.CursorResult[Any]:
    """A Core statement in the session's transaction. The hot reads are Core statements built once:
    an ORM query costs several times more in statement building and row loading."""
    autoflush(session)
    return session.execute(statement, params)  # type: ignore[return-value]


@dataclass(frozen=True)
class Caller:
    """The user a token belongs to: values, not ORM rows, so that a principal can be kept and shared."""

    id: str
    name: str
    email: str | None


@dataclass(frozen=True)
class Grant:
    """One of the user's role bindings: a ``Role`` name on an organization or on one project."""

    user_id: str
    role: str
    organization_id: str | None
    project_id: str | None


@dataclass(frozen=True)
class Principal:
    user: Caller
    token_id: str
    bindings: tuple[Grant, ...]
    #: The token's expiry (None: never); a kept principal is checked against it on every call.
    expires_at: datetime | None = None

    def role_on_organization(self, organization_id: str) -> int:
        return max((tenancy_pb2.Role.Value(b.role) for b in self.bindings if b.organization_id == organization_id),
                   default=NO_ROLE)

    def role_in_project(self, project_id: str, organization_id: str) -> int:
        direct = max((tenancy_pb2.Role.Value(b.role) for b in self.bindings if b.project_id == project_id),
                     default=NO_ROLE)
        return max(direct, self.role_on_organization(organization_id))

    def role_on_project(self, project: Project) -> int:
        return self.role_in_project(project.id, project.organization_id)

    def highest_role(self) -> int:
        return max((tenancy_pb2.Role.Value(b.role) for b in self.bindings), default=NO_ROLE)

    def sees_project(self) -> sa.ColumnElement[bool]:
        """A filter on ``projects``: those the caller may read (every binding is viewer or more).
        Table columns, so that it serves Core statements as well as ORM queries."""
        organizations = [b.organization_id for b in self.bindings if b.organization_id]
        projects = [b.project_id for b in self.bindings if b.project_id]
        return sa.or_(_projects.c.organization_id.in_(organizations), _projects.c.id.in_(projects))


def bearer_token(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    for key, value in metadata:
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            break
    raise CallmeterError(ErrorCode.UNAUTHENTICATED, "missing `authorization: Bearer <API token>` metadata")


# One query: the token, its user and the user's role bindings (a row per binding).
_PRINCIPAL = (
    sa.select(_tokens.c.id, _tokens.c.expires_at, _tokens.c.revoked_at, _tokens.c.last_used_at,
              _users.c.id.label("user_id"), _users.c.name, _users.c.email,
              _bindings.c.role, _bindings.c.organization_id, _bindings.c.project_id)
    .outerjoin(_users, _users.c.id == _tokens.c.user_id)
    .outerjoin(_bindings, _bindings.c.user_id == _users.c.id)
    .where(_tokens.c.secret_hash == sa.bindparam("secret_hash"))
)
_TOUCH = sa.update(_tokens).where(_tokens.c.id == sa.bindparam("token_id")).values(
    last_used_at=sa.bindparam("now"))


def authenticate(session: Session, token: str) -> Principal:
    """The principal the token names, read now (services/api/principals.py keeps them a second)."""
    rows = read(session, _PRINCIPAL, {"secret_hash": hash_secret(token)}).all()
    now = utcnow()
    row = rows[0] if rows else None
    if row is None or row.revoked_at is not None:
        raise CallmeterError(ErrorCode.UNAUTHENTICATED, "unknown or revoked API token")
    if row.expires_at is not None and row.expires_at <= now:
        raise CallmeterError(ErrorCode.UNAUTHENTICATED, "the API token has expired")
    if row.user_id is None:
        raise CallmeterError(ErrorCode.UNAUTHENTICATED, "the API token's user no longer exists")
    bindings = tuple(Grant(row.user_id, b.role, b.organization_id, b.project_id) for b in rows if b.role is not None)
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        # At most once a minute per token: a write on every read would serialize readers on SQLite.
        read(session, _TOUCH, {"token_id": row.id, "now": now})
    return Principal(user=Caller(row.user_id, row.name, row.email), token_id=row.id, bindings=bindings,
                     expires_at=row.expires_at)


def require(held: int, needed: int, what: str) -> None:
    if held < needed:
        raise CallmeterError(ErrorCode.PERMISSION_DENIED, f"{what} needs the {role_name(needed)} role")


def project_for(session: Session, principal: Principal, project_id: str, needed: int, what: str) -> Project:
    """The project, once the caller is known to hold ``needed`` on it."""
    project = session.get(Project, project_id) if project_id else None
    if project is None:
        raise CallmeterError(ErrorCode.NOT_FOUND, f"no project {project_id!r}")
    require(principal.role_on_project(project), needed, what)
    return project


_PROJECT_ORGANIZATION = sa.select(_projects.c.organization_id).where(_projects.c.id == sa.bindparam("project_id"))


def require_in_project(session: Session, principal: Principal, project_id: str, needed: int, what: str) -> None:
    """As ``project_for``, for a read that needs only the check: one Core query, no ORM row."""
    organization_id = read(session, _PROJECT_ORGANIZATION, {"project_id": project_id}).scalar() if project_id else None
    if organization_id is None:
        raise CallmeterError(ErrorCode.NOT_FOUND, f"no project {project_id!r}")
    require(principal.role_in_project(project_id, organization_id), needed, what)


def project_or_only(session: Session, principal: Principal, project_id: str, needed: int, what: str) -> Project:
    """The named project, or with none named the caller's only project; then as ``project_for``."""
    if not project_id:
        visible = list(session.scalars(sa.select(Project.id).where(principal.sees_project()).limit(2)))
        if len(visible) != 1:
            raise CallmeterError(ErrorCode.INVALID_ARGUMENT, "project_id: required, as you may see "
                                 f"{'several projects' if visible else 'no project'}")
        project_id = visible[0]
    return project_for(session, principal, project_id, needed, what)


def organization_for(session: Session, principal: Principal, organization_id: str, needed: int,
                     what: str) -> Organization:
    """The organization, once the caller is known to hold ``needed`` on it (a project role never counts)."""
    organization = session.get(Organization, organization_id) if organization_id else None
    if organization is None:
        raise CallmeterError(ErrorCode.NOT_FOUND, f"no organization {organization_id!r}")
    require(principal.role_on_organization(organization.id), needed, what)
    return organization


def role_on_scope(session: Session, principal: Principal, organization_id: str | None,
                  project_id: str | None) -> int:
    """The caller's role on an organization or a project scope (a binding's or a worker token's)."""
    if organization_id:
        if session.get(Organization, organization_id) is None:
            raise CallmeterError(ErrorCode.NOT_FOUND, f"no organization {organization_id!r}")
        return principal.role_on_organization(organization_id)
    project = session.get(Project, project_id) if project_id else None
    if project is None:
        raise CallmeterError(ErrorCode.NOT_FOUND, f"no project {project_id!r}")
    return principal.role_on_project(project)
