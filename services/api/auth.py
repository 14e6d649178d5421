"""Who is calling: an API token in the `authorization: Bearer …` metadata, and the roles it holds.

Roles are ordered (viewer < runner < editor < admin < owner); a role on an organization holds on
all of its projects. A refusal names the role that was needed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from callmeter.common.errors import CallmeterError, ErrorCode
from callmeter.common.tokens import hash_secret
from callmeter.state.models import ApiToken, Project, RoleBinding, User, utcnow
from callmeter.v1 import tenancy_pb2


@dataclass(frozen=True)
class Principal:
    user: User
    token_id: str
    bindings: tuple[RoleBinding, ...]

    def role_on_organization(self, organization_id: str) -> int:
        return max((tenancy_pb2.Role.Value(b.role) for b in self.bindings if b.organization_id == organization_id),
                   default=tenancy_pb2.ROLE_UNSPECIFIED)

    def role_on_project(self, project: Project) -> int:
        direct = max((tenancy_pb2.Role.Value(b.role) for b in self.bindings if b.project_id == project.id),
                     default=tenancy_pb2.ROLE_UNSPECIFIED)
        return max(direct, self.role_on_organization(project.organization_id))


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
    row = session.scalar(sa.select(ApiToken).where(ApiToken.secret_hash == hash_secret(token)))
    now = utcnow()
    if row is None or row.revoked_at is not None:
        raise CallmeterError(ErrorCode.UNAUTHENTICATED, "unknown or revoked API token")
    if row.expires_at is not None and row.expires_at <= now:
        raise CallmeterError(ErrorCode.UNAUTHENTICATED, "the API token has expired")
    user = session.get(User, row.user_id)
    if user is None:
        raise CallmeterError(ErrorCode.UNAUTHENTICATED, "the API token's user no longer exists")
    bindings = tuple(session.scalars(sa.select(RoleBinding).where(RoleBinding.user_id == user.id)))
    row.last_used_at = now
    return Principal(user=user, token_id=row.id, bindings=bindings)


def require(held: int, needed: int, what: str) -> None:
    if held < needed:
        role = tenancy_pb2.Role.Name(needed).removeprefix("ROLE_").lower()
        raise CallmeterError(ErrorCode.PERMISSION_DENIED, f"{what} needs the {role} role")
