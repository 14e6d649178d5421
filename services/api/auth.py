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

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

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


def role_name(role: int) -> str:
    return word(tenancy_pb2.Role, role)


@dataclass(frozen=True)
class Principal:
    user: User
    token_id: str
    bindings: tuple[RoleBinding, ...]

    def role_on_organization(self, organization_id: str) -> int:
        return max((tenancy_pb2.Role.Value(b.role) for b in self.bindings if b.organization_id == organization_id),
                   default=NO_ROLE)

    def role_on_project(self, project: Project) -> int:
        direct = max((tenancy_pb2.Role.Value(b.role) for b in self.bindings if b.project_id == project.id),
                     default=NO_ROLE)
        return max(direct, self.role_on_organization(project.organization_id))

    def highest_role(self) -> int:
        return max((tenancy_pb2.Role.Value(b.role) for b in self.bindings), default=NO_ROLE)

    def sees_project(self) -> sa.ColumnElement[bool]:
        """A filter on ``Project``: the projects the caller may read (every binding is viewer or more)."""
        organizations = [b.organization_id for b in self.bindings if b.organization_id]
        projects = [b.project_id for b in self.bindings if b.project_id]
        return sa.or_(Project.organization_id.in_(organizations), Project.id.in_(projects))


def bearer_token(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    for key, value in metadata:
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            break
    raise CallmeterError(ErrorCode.UNAUTHENTICATED, "missing `authorization: Bearer <API token>` metadata")


def authenticate(session: Session, token: str) -> Principal:
    # One query on every call: the token, its user and the user's role bindings (a row per binding).
    rows = session.execute(
        sa.select(ApiToken, User, RoleBinding)
        .outerjoin(User, User.id == ApiToken.user_id)
        .outerjoin(RoleBinding, RoleBinding.user_id == User.id)
        .where(ApiToken.secret_hash == hash_secret(token))
    ).all()
    now = utcnow()
    row, user = (rows[0][0], rows[0][1]) if rows else (None, None)
    if row is None or row.revoked_at is not None:
        raise CallmeterError(ErrorCode.UNAUTHENTICATED, "unknown or revoked API token")
    if row.expires_at is not None and row.expires_at <= now:
        raise CallmeterError(ErrorCode.UNAUTHENTICATED, "the API token has expired")
    if user is None:
        raise CallmeterError(ErrorCode.UNAUTHENTICATED, "the API token's user no longer exists")
    bindings = tuple(binding for _, _, binding in rows if binding is not None)
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        row.last_used_at = now  # a write on every read would serialize readers on SQLite
    return Principal(user=user, token_id=row.id, bindings=bindings)


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
