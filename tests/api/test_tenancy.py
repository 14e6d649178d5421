"""TenancyService handlers and authentication: owners, grants, tokens and their expiry."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.orm import Session

from callmeter.common.errors import CallmeterError, ErrorCode
from callmeter.state.models import ApiToken, RoleBinding, utcnow
from callmeter.v1 import tenancy_pb2
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
        with pytest.raises(CallmeterError) as error:
            call(tenancy.create_worker_token, tenancy_pb2.CreateWorkerTokenRequest(name="nowhere"))
        assert error.value.code == ErrorCode.INVALID_ARGUMENT
