"""TenancyService handlers and authentication: owners, grants, tokens and their expiry."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.orm import Session

from callmeter.common.errors import CallmeterError, ErrorCode
from callmeter.state.models import ApiToken, RoleBinding, utcnow
from callmeter.v1 import common_pb2, tenancy_pb2
from services.api.auth import authenticate
from services.api.handlers import tenancy
from tests.api.world import World

OWNER = ("owner", "organization")


def test_the_creator_of_an_organization_owns_it(world: World) -> None:
    with world.acting(("none", "")) as call:
        organization = call(tenancy.create_organization, tenancy_pb2.CreateOrganizationRequest(name="mine"))
        with pytest.raises(CallmeterError) as error:
            call(tenancy.create_organization, tenancy_pb2.CreateOrganizationRequest(name="mine"))
        assert error.value.code == ErrorCode.ALREADY_EXISTS

        def bindings(session: Session, principal: object, _r: object) -> list[tenancy_pb2.RoleBinding]:
            again = authenticate(session, world.tokens[("none", "")])
            return list(tenancy.who_am_i(session, again, tenancy_pb2.WhoAmIRequest()).bindings)

        assert call(bindings, None) == [tenancy_pb2.RoleBinding(
            user_id=call(lambda _s, p, _r: p.user.id, None), role=tenancy_pb2.ROLE_OWNER,
            organization_id=organization.id)]


def test_grants_replace_the_role_and_the_last_owner_stays(world: World) -> None:
    with world.acting(OWNER) as call:
        binding = tenancy_pb2.RoleBinding(user_id=world.member, role=tenancy_pb2.ROLE_EDITOR, project_id=world.project)
        assert call(tenancy.grant_role, tenancy_pb2.GrantRoleRequest(binding=binding)).role == tenancy_pb2.ROLE_EDITOR
        held = call(lambda session, _p, _r: [(b.role, b.project_id) for b in session.scalars(
            sa.select(RoleBinding).where(RoleBinding.user_id == world.member))], None)
        assert held == [("ROLE_EDITOR", world.project)]  # the viewer role it had was replaced
        me = call(lambda _s, p, _r: p.user.id, None)
        with pytest.raises(CallmeterError) as error:
            call(tenancy.revoke_role, tenancy_pb2.RevokeRoleRequest(
                binding=tenancy_pb2.RoleBinding(user_id=me, organization_id=world.organization)))
        assert error.value.code == ErrorCode.FAILED_PRECONDITION


def test_an_admin_cannot_mint_tokens_for_someone_more_powerful(world: World) -> None:
    with world.acting(("admin", "project")) as call:
        owner_id = call(lambda session, _p, _r: authenticate(session, world.tokens[OWNER]).user.id, None)
        with pytest.raises(CallmeterError) as error:
            call(tenancy.create_api_token, tenancy_pb2.CreateApiTokenRequest(user_id=owner_id, name="x"))
        assert error.value.code == ErrorCode.PERMISSION_DENIED and "owner" in error.value.detail


def test_api_tokens_expire_and_revoke(world: World) -> None:
    with world.acting(("viewer", "project")) as call:
        past = Timestamp()
        past.FromDatetime(utcnow() - timedelta(seconds=1))
        with pytest.raises(CallmeterError):
            call(tenancy.create_api_token, tenancy_pb2.CreateApiTokenRequest(name="old", expires_at=past))
        soon = Timestamp()
        soon.FromDatetime(utcnow() + timedelta(hours=1))
        created = call(tenancy.create_api_token, tenancy_pb2.CreateApiTokenRequest(name="ci", expires_at=soon))
        assert created.secret.startswith("cma_") and created.token.expires_at == soon

        def check(session: Session, _p: object, _r: object) -> str:
            assert authenticate(session, created.secret).token_id == created.token.id
            session.get_one(ApiToken, created.token.id).expires_at = utcnow() - timedelta(seconds=1)
            with pytest.raises(CallmeterError) as expired:
                authenticate(session, created.secret)
            return expired.value.detail

        assert "expired" in call(check, None)
        revoked = call(tenancy.revoke_api_token, tenancy_pb2.RevokeApiTokenRequest(token_id=created.token.id))
        assert revoked.revoked


def test_worker_tokens_return_the_secret_once(world: World) -> None:
    with world.acting(("admin", "project")) as call:
        created = call(tenancy.create_worker_token,
                       tenancy_pb2.CreateWorkerTokenRequest(name="eu", project_id=world.project))
        assert created.secret.startswith("cmw_") and created.token.project_id == world.project
        assert call(tenancy.revoke_worker_token,
                    tenancy_pb2.RevokeWorkerTokenRequest(token_id=created.token.id)).revoked
        only = call(tenancy.create_worker_token, tenancy_pb2.CreateWorkerTokenRequest(name="only"))
        assert only.token.project_id == world.project, "no scope: the caller's only project"
    with pytest.raises(CallmeterError) as error:
        world.call(("none", ""), tenancy.create_worker_token, tenancy_pb2.CreateWorkerTokenRequest(name="nowhere"))
    assert error.value.code == ErrorCode.INVALID_ARGUMENT and "no project" in error.value.detail


def test_organizations_are_listed_to_whoever_holds_a_role_in_them(world: World) -> None:
    def names(caller: tuple[str, str]) -> list[str]:
        return [o.name for o in world.call(caller, tenancy.list_organizations,
                                           tenancy_pb2.ListOrganizationsRequest()).organizations]

    assert names(OWNER) == names(("viewer", "project")) == ["acme"]  # a role on one project shows its organization
    assert names(("none", "")) == []


def test_a_project_goes_to_the_only_organization_unless_there_are_several(world: World) -> None:
    with world.acting(OWNER) as call:
        project = call(tenancy.create_project, tenancy_pb2.CreateProjectRequest(name="lab"))
        assert project.organization_id == world.organization
        call(tenancy.create_organization, tenancy_pb2.CreateOrganizationRequest(name="second"))

        def again(session: Session, _p: object, request: tenancy_pb2.CreateProjectRequest) -> object:
            return tenancy.create_project(session, authenticate(session, world.tokens[OWNER]), request)

        with pytest.raises(CallmeterError) as error:
            call(again, tenancy_pb2.CreateProjectRequest(name="lab-2"))
        assert error.value.code == ErrorCode.INVALID_ARGUMENT
        assert error.value.detail == "organization_id: required, as you hold roles in several organizations"


def members(world: World, caller: tuple[str, str], **scope: str) -> dict[str, list[tuple[str, str]]]:
    """user name → [(role, scope id)] as ListUsers gives them to ``caller``."""
    reply = world.call(caller, tenancy.list_users, tenancy_pb2.ListUsersRequest(**scope))
    return {m.user.name: [(tenancy_pb2.Role.Name(b.role), getattr(b, b.WhichOneof("scope"))) for b in m.bindings]
            for m in reply.users}


def test_users_are_listed_with_the_roles_on_what_the_caller_administers(world: World) -> None:
    on_project = members(world, ("admin", "project"))
    assert set(on_project) == {f"{role}-project" for role in ("viewer", "runner", "editor", "admin", "owner")} | {
        "member"}, "a project admin sees the project's members, not the organization's"
    assert on_project["member"] == [("ROLE_VIEWER", world.project)]
    on_organization = members(world, OWNER)
    assert on_organization["org-member"] == [("ROLE_VIEWER", world.organization)]
    assert set(on_project) < set(on_organization)
    assert set(members(world, OWNER, project_id=world.project)) == set(on_project)
    assert members(world, ("viewer", "organization")) == {}, "a viewer administers nothing"
    with world.acting(OWNER) as call:
        theirs = call(tenancy.create_organization, tenancy_pb2.CreateOrganizationRequest(name="elsewhere"))

        def grant_elsewhere(session: Session, _p: object, _r: object) -> None:
            session.add(RoleBinding(user_id=world.member, role="ROLE_ADMIN", organization_id=theirs.id))

        call(grant_elsewhere, None)
        listed = call(tenancy.list_users, tenancy_pb2.ListUsersRequest(project_id=world.project))
        [member] = [m for m in listed.users if m.user.id == world.member]
        assert [b.project_id for b in member.bindings] == [world.project], "only the roles on the scope asked for"


def test_users_come_in_pages(world: World) -> None:
    first = world.call(OWNER, tenancy.list_users, tenancy_pb2.ListUsersRequest(page=common_pb2.PageRequest(
        page_size=5)))
    assert len(first.users) == 5 and first.page.next_page_token
    rest = world.call(OWNER, tenancy.list_users, tenancy_pb2.ListUsersRequest(page=common_pb2.PageRequest(
        page_size=500, page_token=first.page.next_page_token)))
    assert {m.user.id for m in first.users}.isdisjoint({m.user.id for m in rest.users})
    assert len(first.users) + len(rest.users) == len(members(world, OWNER))


def test_a_token_with_a_role_belongs_to_a_user_made_for_it(world: World) -> None:
    with world.acting(("admin", "project")) as call:
        created = call(tenancy.create_api_token, tenancy_pb2.CreateApiTokenRequest(
            name="ci", role=tenancy_pb2.ROLE_RUNNER, project_id=world.project))
        token = created.token
        assert token.user_name == "ci" and token.user_id != call(lambda _s, p, _r: p.user.id, None)
        assert list(token.bindings) == [tenancy_pb2.RoleBinding(user_id=token.user_id, role=tenancy_pb2.ROLE_RUNNER,
                                                                project_id=world.project)]
        me = call(lambda session, _p, _r: tenancy.who_am_i(session, authenticate(session, created.secret),
                                                            tenancy_pb2.WhoAmIRequest()), None)
        assert (me.user.name, me.token.id, [b.role for b in me.bindings]) == ("ci", token.id, [tenancy_pb2.ROLE_RUNNER])
        for bad, field in ((tenancy_pb2.CreateApiTokenRequest(name="x", project_id=world.project), "role"),
                           (tenancy_pb2.CreateApiTokenRequest(name="x", role=tenancy_pb2.ROLE_VIEWER), "scope"),
                           (tenancy_pb2.CreateApiTokenRequest(name="x", role=tenancy_pb2.ROLE_VIEWER,
                                                              project_id=world.project, user_id=world.member),
                            "user_id")):
            with pytest.raises(CallmeterError) as error:
                call(tenancy.create_api_token, bad)
            assert error.value.code == ErrorCode.INVALID_ARGUMENT and error.value.detail.startswith(f"{field}: ")


def tokens(world: World, caller: tuple[str, str], include_revoked: bool = False) -> dict[str, tenancy_pb2.ApiToken]:
    reply = world.call(caller, tenancy.list_api_tokens, tenancy_pb2.ListApiTokensRequest(
        include_revoked=include_revoked))
    return {token.name: token for token in reply.tokens}


def test_api_tokens_are_listed_to_their_user_and_to_who_administers_it(world: World) -> None:
    assert set(tokens(world, ("viewer", "project"))) == {"viewer-project"}, "a viewer sees its own only"
    assert set(tokens(world, ("none", ""))) == {"nobody"}
    on_project = tokens(world, ("admin", "project"))
    assert "member" in on_project and "org-member" not in on_project and "owner-org" not in on_project
    assert [b.project_id for b in on_project["member"].bindings] == [world.project]
    assert {"member", "org-member", "owner-project"} <= set(tokens(world, OWNER))
    listed = on_project["member"]
    assert (listed.user_id, listed.user_name, listed.revoked) == (world.member, "member", False)
    assert not listed.HasField("expires_at")


def test_revoked_api_tokens_are_listed_only_when_asked_for(world: World) -> None:
    with world.acting(("admin", "project")) as call:
        call(tenancy.revoke_api_token, tenancy_pb2.RevokeApiTokenRequest(token_id=world.member_token))
        listed = call(tenancy.list_api_tokens, tenancy_pb2.ListApiTokensRequest())
        assert world.member_token not in {t.id for t in listed.tokens}
        every = call(tenancy.list_api_tokens, tenancy_pb2.ListApiTokensRequest(include_revoked=True))
        assert [t.revoked for t in every.tokens if t.id == world.member_token] == [True]


def test_worker_tokens_are_listed_to_who_administers_their_scope(world: World) -> None:
    def names(caller: tuple[str, str], **request: object) -> list[str]:
        return [t.name for t in world.call(caller, tenancy.list_worker_tokens,
                                           tenancy_pb2.ListWorkerTokensRequest(**request)).tokens]

    assert names(("admin", "project")) == ["project"]
    assert names(OWNER) == ["project", "organization"]
    assert names(OWNER, project_id=world.project) == ["project"]
    assert names(OWNER, organization_id=world.organization) == ["project", "organization"]
    assert names(("editor", "organization")) == []
    with world.acting(OWNER) as call:
        call(tenancy.revoke_worker_token, tenancy_pb2.RevokeWorkerTokenRequest(token_id=world.project_worker_token))
        assert [t.name for t in call(tenancy.list_worker_tokens, tenancy_pb2.ListWorkerTokensRequest()).tokens] == [
            "organization"]
        every = call(tenancy.list_worker_tokens, tenancy_pb2.ListWorkerTokensRequest(include_revoked=True)).tokens
        assert [(t.name, t.revoked) for t in every] == [("project", True), ("organization", False)]
