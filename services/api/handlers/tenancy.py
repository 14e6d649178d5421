"""TenancyService: organizations, projects, users, role grants, API and worker tokens."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from callmeter.common.errors import CallmeterError, ErrorCode
from callmeter.common.tokens import API_TOKEN_PREFIX, WORKER_TOKEN_PREFIX, hash_secret, new_secret
from callmeter.state.models import ApiToken, Organization, Project, RoleBinding, User, WorkerToken, utcnow
from callmeter.v1 import tenancy_pb2
from services.api.auth import (
    ADMIN,
    NO_ROLE,
    OWNER,
    VIEWER,
    Principal,
    organization_for,
    project_or_only,
    require,
    role_on_scope,
)
from services.api.paging import page

MAX_NAME_LENGTH = 255


def _invalid(detail: str) -> CallmeterError:
    return CallmeterError(ErrorCode.INVALID_ARGUMENT, detail)


def _name(name: str, field: str = "name") -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME_LENGTH:
        raise _invalid(f"{field}: required, at most {MAX_NAME_LENGTH} characters")
    return name


def _set_time(message: object, field: str, value: datetime | None) -> None:
    if value is not None:
        getattr(message, field).FromDatetime(value)


def organization_to_proto(row: Organization) -> tenancy_pb2.Organization:
    message = tenancy_pb2.Organization(id=row.id, name=row.name)
    _set_time(message, "created_at", row.created_at)
    return message


def project_to_proto(row: Project) -> tenancy_pb2.Project:
    message = tenancy_pb2.Project(id=row.id, organization_id=row.organization_id, name=row.name)
    _set_time(message, "created_at", row.created_at)
    return message


def user_to_proto(row: User) -> tenancy_pb2.User:
    return tenancy_pb2.User(id=row.id, name=row.name, email=row.email or "")


def binding_to_proto(row: RoleBinding) -> tenancy_pb2.RoleBinding:
    message = tenancy_pb2.RoleBinding(user_id=row.user_id, role=tenancy_pb2.Role.Value(row.role))
    if row.organization_id:
        message.organization_id = row.organization_id
    else:
        message.project_id = row.project_id or ""
    return message


def api_token_to_proto(row: ApiToken, user_name: str,
                       bindings: list[tenancy_pb2.RoleBinding]) -> tenancy_pb2.ApiToken:
    message = tenancy_pb2.ApiToken(id=row.id, user_id=row.user_id, name=row.name, revoked=row.revoked_at is not None,
                                   user_name=user_name, bindings=bindings)
    _set_time(message, "created_at", row.created_at)
    _set_time(message, "expires_at", row.expires_at)
    _set_time(message, "last_used_at", row.last_used_at)
    return message


def worker_token_to_proto(row: WorkerToken) -> tenancy_pb2.WorkerToken:
    message = tenancy_pb2.WorkerToken(id=row.id, name=row.name, revoked=row.revoked_at is not None)
    if row.organization_id:
        message.organization_id = row.organization_id
    else:
        message.project_id = row.project_id or ""
    _set_time(message, "created_at", row.created_at)
    return message


def _role_value(binding: RoleBinding) -> int:
    return int(tenancy_pb2.Role.Value(binding.role))


def _administered(principal: Principal, organization_id: sa.ColumnElement[str | None],
                  project_id: sa.ColumnElement[str | None]) -> sa.ColumnElement[bool]:
    """A filter on rows scoped by these two columns (a role binding, a worker token): those whose
    organization or project the caller administers (admin or owner on it, or on its organization)."""
    organizations = [b.organization_id for b in principal.bindings if b.organization_id and _role_value(b) >= ADMIN]
    projects = [b.project_id for b in principal.bindings if b.project_id and _role_value(b) >= ADMIN]
    administered_projects = sa.select(Project.id).where(
        sa.or_(Project.organization_id.in_(organizations), Project.id.in_(projects)))
    return sa.or_(organization_id.in_(organizations), project_id.in_(administered_projects))


def _scope_filter(session: Session, principal: Principal, request: Any, organization_id: sa.ColumnElement[str | None],
                  project_id: sa.ColumnElement[str | None], what: str) -> sa.ColumnElement[bool]:
    """The rows of the request's scope (an organization with its projects, or a project), once the
    caller is known to administer it; with no scope, every row it administers."""
    scope = request.WhichOneof("scope")
    if scope is None:
        return _administered(principal, organization_id, project_id)
    require(role_on_scope(session, principal, request.organization_id or None, request.project_id or None), ADMIN,
            what)
    if scope == "project_id":
        return project_id == request.project_id
    return sa.or_(organization_id == request.organization_id, project_id.in_(
        sa.select(Project.id).where(Project.organization_id == request.organization_id)))


def _bindings_of(session: Session, user_ids: set[str],
                 seen: sa.ColumnElement[bool]) -> dict[str, list[tenancy_pb2.RoleBinding]]:
    """The roles of these users that ``seen`` lets through, by user."""
    bindings: dict[str, list[tenancy_pb2.RoleBinding]] = {user_id: [] for user_id in user_ids}
    for row in session.scalars(sa.select(RoleBinding).where(RoleBinding.user_id.in_(list(user_ids)), seen)
                               .order_by(RoleBinding.created_at, RoleBinding.id)):
        bindings[row.user_id].append(binding_to_proto(row))
    return bindings


def _api_tokens_to_proto(session: Session, principal: Principal,
                         tokens: list[ApiToken]) -> list[tenancy_pb2.ApiToken]:
    """Tokens with their user's name and the roles the caller may see (the token's powers): all of
    its own, those of others on what it administers."""
    user_ids = {token.user_id for token in tokens}
    names = {user_id: name for user_id, name in session.execute(
        sa.select(User.id, User.name).where(User.id.in_(list(user_ids))))}
    bindings = _bindings_of(session, user_ids, sa.or_(
        RoleBinding.user_id == principal.user.id,
        _administered(principal, RoleBinding.organization_id, RoleBinding.project_id)))
    return [api_token_to_proto(token, names[token.user_id], bindings[token.user_id]) for token in tokens]


def who_am_i(session: Session, principal: Principal, request: tenancy_pb2.WhoAmIRequest) -> tenancy_pb2.WhoAmIResponse:
    [token] = _api_tokens_to_proto(session, principal, [session.get_one(ApiToken, principal.token_id)])
    return tenancy_pb2.WhoAmIResponse(user=user_to_proto(principal.user),
                                      bindings=[binding_to_proto(b) for b in principal.bindings], token=token)


def _organizations_seen(principal: Principal) -> sa.ColumnElement[bool]:
    """A filter on ``Organization``: those where the caller holds a role, on it or on one of its projects."""
    projects = [b.project_id for b in principal.bindings if b.project_id]
    return sa.or_(Organization.id.in_([b.organization_id for b in principal.bindings if b.organization_id]),
                  Organization.id.in_(sa.select(Project.organization_id).where(Project.id.in_(projects))))


def list_organizations(session: Session, principal: Principal,
                       request: tenancy_pb2.ListOrganizationsRequest) -> tenancy_pb2.ListOrganizationsResponse:
    query = (sa.select(Organization).where(_organizations_seen(principal))
             .order_by(Organization.created_at, Organization.id))
    rows, next_page = page(session, query, request.page)
    return tenancy_pb2.ListOrganizationsResponse(
        organizations=[organization_to_proto(row.Organization) for row in rows], page=next_page)


def create_organization(session: Session, principal: Principal,
                        request: tenancy_pb2.CreateOrganizationRequest) -> tenancy_pb2.Organization:
    """Any authenticated caller may; the caller becomes its owner."""
    name = _name(request.name)
    if session.scalar(sa.select(Organization.id).where(Organization.name == name)):
        raise CallmeterError(ErrorCode.ALREADY_EXISTS, f"an organization named {name!r} exists")
    organization = Organization(name=name)
    session.add(organization)
    session.flush()
    session.add(RoleBinding(user_id=principal.user.id, role=tenancy_pb2.Role.Name(OWNER),
                            organization_id=organization.id))
    return organization_to_proto(organization)


def _only_organization(session: Session, principal: Principal) -> str:
    seen = list(session.scalars(sa.select(Organization.id).where(_organizations_seen(principal)).limit(2)))
    if len(seen) != 1:
        raise _invalid("organization_id: required, as you hold roles in "
                       f"{'several organizations' if seen else 'no organization'}")
    return seen[0]


def create_project(session: Session, principal: Principal,
                   request: tenancy_pb2.CreateProjectRequest) -> tenancy_pb2.Project:
    organization_id = request.organization_id or _only_organization(session, principal)
    organization = organization_for(session, principal, organization_id, ADMIN, "creating a project")
    name = _name(request.name)
    if session.scalar(sa.select(Project.id).where(Project.organization_id == organization.id, Project.name == name)):
        raise CallmeterError(ErrorCode.ALREADY_EXISTS, f"the organization has a project named {name!r}")
    project = Project(organization_id=organization.id, name=name)
    session.add(project)
    session.flush()
    return project_to_proto(project)


def list_projects(session: Session, principal: Principal,
                  request: tenancy_pb2.ListProjectsRequest) -> tenancy_pb2.ListProjectsResponse:
    """The projects the caller may see, optionally of one organization."""
    query = sa.select(Project).where(principal.sees_project()).order_by(Project.created_at, Project.id)
    if request.organization_id:
        query = query.where(Project.organization_id == request.organization_id)
        if principal.role_on_organization(request.organization_id) < VIEWER and not session.scalar(query.limit(1)):
            require(NO_ROLE, VIEWER, "listing an organization's projects")
    rows, next_page = page(session, query, request.page)
    return tenancy_pb2.ListProjectsResponse(projects=[project_to_proto(row.Project) for row in rows], page=next_page)


def create_user(session: Session, principal: Principal, request: tenancy_pb2.CreateUserRequest) -> tenancy_pb2.User:
    """Users are global; an admin of any organization or project may add one, then grant it roles."""
    require(principal.highest_role(), ADMIN, "creating a user")
    name = _name(request.name)
    email = request.email.strip() or None
    if email and session.scalar(sa.select(User.id).where(User.email == email)):
        raise CallmeterError(ErrorCode.ALREADY_EXISTS, f"a user with email {email!r} exists")
    user = User(name=name, email=email)
    session.add(user)
    session.flush()
    return user_to_proto(user)


def list_users(session: Session, principal: Principal,
               request: tenancy_pb2.ListUsersRequest) -> tenancy_pb2.ListUsersResponse:
    """Users are global: a caller sees those holding a role on what it administers (a user
    without any role is seen by no one), each with those roles."""
    roles = _scope_filter(session, principal, request, RoleBinding.organization_id, RoleBinding.project_id,
                          "listing users")
    query = (sa.select(User).where(User.id.in_(sa.select(RoleBinding.user_id).where(roles)))
             .order_by(User.created_at, User.id))
    rows, next_page = page(session, query, request.page)
    bindings = _bindings_of(session, {row.User.id for row in rows}, roles)
    return tenancy_pb2.ListUsersResponse(users=[tenancy_pb2.Member(user=user_to_proto(row.User),
                                                                   bindings=bindings[row.User.id]) for row in rows],
                                         page=next_page)


def _scope(request: Any, field: str) -> tuple[str | None, str | None]:
    """(organization_id, None) or (None, project_id) of a message with a ``scope`` oneof."""
    scope = request.WhichOneof("scope")
    if scope is None or not getattr(request, scope):
        raise _invalid(f"{field}: organization_id or project_id is required")
    return (request.organization_id, None) if scope == "organization_id" else (None, request.project_id)


def _check_role(role: int, field: str) -> None:
    if role not in tenancy_pb2.Role.values() or role == NO_ROLE:
        raise _invalid(f"{field}: required: viewer, runner, editor, admin or owner")


def _existing_binding(session: Session, user_id: str, organization_id: str | None,
                      project_id: str | None) -> RoleBinding | None:
    scope = RoleBinding.organization_id == organization_id if organization_id else RoleBinding.project_id == project_id
    return session.scalar(sa.select(RoleBinding).where(RoleBinding.user_id == user_id, scope))


def grant_role(session: Session, principal: Principal,
               request: tenancy_pb2.GrantRoleRequest) -> tenancy_pb2.RoleBinding:
    """Sets the user's role on the scope (one role per user and scope); owner grants need an owner."""
    binding = request.binding
    organization_id, project_id = _scope(binding, "binding.scope")
    _check_role(binding.role, "binding.role")
    held = role_on_scope(session, principal, organization_id, project_id)
    existing = _existing_binding(session, binding.user_id, organization_id, project_id)
    if binding.role == OWNER or (existing is not None and existing.role == tenancy_pb2.Role.Name(OWNER)):
        require(held, OWNER, "granting or taking away the owner role")
    require(held, ADMIN, "granting roles")
    if session.get(User, binding.user_id) is None:
        raise CallmeterError(ErrorCode.NOT_FOUND, f"no user {binding.user_id!r}")
    if existing is None:
        existing = RoleBinding(user_id=binding.user_id, organization_id=organization_id, project_id=project_id)
        session.add(existing)
    existing.role = tenancy_pb2.Role.Name(binding.role)
    session.flush()
    return binding_to_proto(existing)


def revoke_role(session: Session, principal: Principal,
                request: tenancy_pb2.RevokeRoleRequest) -> tenancy_pb2.RevokeRoleResponse:
    """Removes the user's role on the scope (``binding.role`` is not needed)."""
    organization_id, project_id = _scope(request.binding, "binding.scope")
    held = role_on_scope(session, principal, organization_id, project_id)
    require(held, ADMIN, "revoking roles")
    existing = _existing_binding(session, request.binding.user_id, organization_id, project_id)
    if existing is None:
        raise CallmeterError(ErrorCode.NOT_FOUND, "the user holds no role on that scope")
    owner = tenancy_pb2.Role.Name(OWNER)
    if existing.role == owner:
        require(held, OWNER, "taking away the owner role")
        if organization_id and session.scalar(sa.select(sa.func.count()).select_from(RoleBinding).where(
                RoleBinding.organization_id == organization_id, RoleBinding.role == owner)) == 1:
            raise CallmeterError(ErrorCode.FAILED_PRECONDITION, "that is the organization's last owner")
    session.delete(existing)
    return tenancy_pb2.RevokeRoleResponse()


def _may_hold_tokens_of(session: Session, principal: Principal, user_id: str, what: str) -> None:
    """Tokens of another user are the powers of that user: the caller must administer every scope
    where that user holds a role, at that role or above, so no one gains a role through them."""
    if user_id == principal.user.id:
        return
    if session.get(User, user_id) is None:
        raise CallmeterError(ErrorCode.NOT_FOUND, f"no user {user_id!r}")
    bindings = list(session.scalars(sa.select(RoleBinding).where(RoleBinding.user_id == user_id)))
    if not bindings:
        require(principal.highest_role(), ADMIN, what)
    for binding in bindings:
        needed = max(ADMIN, tenancy_pb2.Role.Value(binding.role))
        require(role_on_scope(session, principal, binding.organization_id, binding.project_id), needed, what)


def _service_user(session: Session, principal: Principal, request: tenancy_pb2.CreateApiTokenRequest) -> str:
    """A new user named like the token, granted the request's role on its scope as GrantRole grants."""
    organization_id, project_id = _scope(request, "scope")
    _check_role(request.role, "role")
    if request.user_id:
        raise _invalid("user_id: must be empty with a role: the token's user is made for it")
    user = User(name=_name(request.name))
    session.add(user)
    session.flush()
    grant_role(session, principal, tenancy_pb2.GrantRoleRequest(binding=tenancy_pb2.RoleBinding(
        user_id=user.id, role=request.role, organization_id=organization_id, project_id=project_id)))
    return user.id


def create_api_token(session: Session, principal: Principal,
                     request: tenancy_pb2.CreateApiTokenRequest) -> tenancy_pb2.CreateApiTokenResponse:
    name = _name(request.name)
    expires_at = request.expires_at.ToDatetime(tzinfo=UTC) if request.HasField("expires_at") else None
    if expires_at is not None and expires_at <= utcnow():
        raise _invalid("expires_at: must be in the future")
    if request.role or request.WhichOneof("scope"):
        user_id = _service_user(session, principal, request)
    else:
        user_id = request.user_id or principal.user.id
        _may_hold_tokens_of(session, principal, user_id, "creating a token for another user")
    secret = new_secret(API_TOKEN_PREFIX)
    token = ApiToken(user_id=user_id, name=name, secret_hash=hash_secret(secret), expires_at=expires_at)
    session.add(token)
    session.flush()
    [shown] = _api_tokens_to_proto(session, principal, [token])
    return tenancy_pb2.CreateApiTokenResponse(token=shown, secret=secret)


def list_api_tokens(session: Session, principal: Principal,
                    request: tenancy_pb2.ListApiTokensRequest) -> tenancy_pb2.ListApiTokensResponse:
    members = sa.select(RoleBinding.user_id).where(
        _administered(principal, RoleBinding.organization_id, RoleBinding.project_id))
    query = (sa.select(ApiToken).where(sa.or_(ApiToken.user_id == principal.user.id, ApiToken.user_id.in_(members)))
             .order_by(ApiToken.created_at, ApiToken.id))
    if not request.include_revoked:
        query = query.where(ApiToken.revoked_at.is_(None))
    rows, next_page = page(session, query, request.page)
    return tenancy_pb2.ListApiTokensResponse(
        tokens=_api_tokens_to_proto(session, principal, [row.ApiToken for row in rows]), page=next_page)


def revoke_api_token(session: Session, principal: Principal,
                     request: tenancy_pb2.RevokeApiTokenRequest) -> tenancy_pb2.ApiToken:
    token = session.get(ApiToken, request.token_id) if request.token_id else None
    if token is None:
        raise CallmeterError(ErrorCode.NOT_FOUND, f"no API token {request.token_id!r}")
    _may_hold_tokens_of(session, principal, token.user_id, "revoking another user's token")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
    [shown] = _api_tokens_to_proto(session, principal, [token])
    return shown


def create_worker_token(session: Session, principal: Principal,
                        request: tenancy_pb2.CreateWorkerTokenRequest) -> tenancy_pb2.CreateWorkerTokenResponse:
    if request.WhichOneof("scope") is None:
        organization_id, project_id = None, project_or_only(session, principal, "", ADMIN,
                                                            "creating a worker token").id
    else:
        organization_id, project_id = _scope(request, "scope")
        require(role_on_scope(session, principal, organization_id, project_id), ADMIN, "creating a worker token")
    secret = new_secret(WORKER_TOKEN_PREFIX)
    token = WorkerToken(name=_name(request.name), organization_id=organization_id, project_id=project_id,
                        secret_hash=hash_secret(secret))
    session.add(token)
    session.flush()
    return tenancy_pb2.CreateWorkerTokenResponse(token=worker_token_to_proto(token), secret=secret)


def list_worker_tokens(session: Session, principal: Principal,
                       request: tenancy_pb2.ListWorkerTokensRequest) -> tenancy_pb2.ListWorkerTokensResponse:
    query = (sa.select(WorkerToken).where(_scope_filter(session, principal, request, WorkerToken.organization_id,
                                                        WorkerToken.project_id, "listing worker tokens"))
             .order_by(WorkerToken.created_at, WorkerToken.id))
    if not request.include_revoked:
        query = query.where(WorkerToken.revoked_at.is_(None))
    rows, next_page = page(session, query, request.page)
    return tenancy_pb2.ListWorkerTokensResponse(tokens=[worker_token_to_proto(row.WorkerToken) for row in rows],
                                                page=next_page)


def revoke_worker_token(session: Session, principal: Principal,
                        request: tenancy_pb2.RevokeWorkerTokenRequest) -> tenancy_pb2.WorkerToken:
    """Marks it revoked; the orchestrator tells the gateways, which close the worker's stream."""
    token = session.get(WorkerToken, request.token_id) if request.token_id else None
    if token is None:
        raise CallmeterError(ErrorCode.NOT_FOUND, f"no worker token {request.token_id!r}")
    require(role_on_scope(session, principal, token.organization_id, token.project_id), ADMIN,
            "revoking a worker token")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
    return worker_token_to_proto(token)
