"""Kept principals (services/api/principals.py): a revocation or a role change takes effect within
PrincipalCache's TTL when another writer makes it, at once when this process does.

The first half drives the cache with a clock of its own (no waiting); the second goes through the
real `callmeter api` process, whose clock is the real one: it polls, bounded, and checks that no
call sent later than TTL_S after the change was still served with the old principal.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import grpc
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from callmeter.common.channels import sync_channel
from callmeter.common.errors import CallmeterError, ErrorCode
from callmeter.common.tokens import API_TOKEN_PREFIX, hash_secret, new_secret
from callmeter.state.models import ApiToken, RoleBinding, User, utcnow
from callmeter.v1 import runs_pb2, runs_pb2_grpc, tenancy_pb2, tenancy_pb2_grpc
from services.api import auth, principals
from services.api.auth import authenticate
from services.api.handlers import tenancy
from services.api.principals import TTL_S, PrincipalCache
from tests.api.conftest import api_alone
from tests.api.world import World
from tests.procs import ServiceProcess

ADMIN = ("admin", "project")


def member(world: World, role: int = tenancy_pb2.ROLE_VIEWER) -> tuple[str, str, str]:
    """A new user holding ``role`` on the world's project (none with 0), committed: (user id, secret, token id)."""
    secret = new_secret(API_TOKEN_PREFIX)
    with Session(world.engine) as session, session.begin():
        user = User(name=f"member-{secret[-6:]}")
        session.add(user)
        session.flush()
        if role:
            session.add(RoleBinding(user_id=user.id, role=tenancy_pb2.Role.Name(role), project_id=world.project))
        token = ApiToken(user_id=user.id, name="kept", secret_hash=hash_secret(secret))
        session.add(token)
        session.flush()
        return user.id, secret, token.id


def revoke_elsewhere(world: World, token_id: str) -> None:
    """As another API process, or `callmeter bootstrap`, would: straight into the database."""
    with Session(world.engine) as session, session.begin():
        session.get_one(ApiToken, token_id).revoked_at = utcnow()


def unbind_elsewhere(world: World, user_id: str) -> None:
    with Session(world.engine) as session, session.begin():
        session.execute(sa.delete(RoleBinding).where(RoleBinding.user_id == user_id))


def bind_elsewhere(world: World, user_id: str, role: int) -> None:
    with Session(world.engine) as session, session.begin():
        session.add(RoleBinding(user_id=user_id, role=tenancy_pb2.Role.Name(role), project_id=world.project))


# -- the cache with a clock of its own ----------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def kept(fresh_world: World) -> Iterator[tuple[World, sessionmaker[Session], PrincipalCache, Clock, list[str]]]:
    """A world, the sessions a cache watches, the cache, its clock, and every SQL statement run."""
    statements: list[str] = []
    sa.event.listen(fresh_world.engine, "before_cursor_execute",
                    lambda _c, _cur, statement, *_: statements.append(statement))
    sessions = sessionmaker(fresh_world.engine, expire_on_commit=False)
    clock = Clock()
    yield fresh_world, sessions, PrincipalCache(sessions, clock=clock), clock, statements


def as_caller(sessions: sessionmaker[Session], cache: PrincipalCache, secret: str) -> auth.Principal:
    with sessions.begin() as session:
        return cache.authenticate(session, secret)


def test_a_principal_is_kept_for_the_ttl_then_read_again(kept) -> None:  # type: ignore[no-untyped-def]
    world, sessions, cache, clock, statements = kept
    user_id, secret, token_id = member(world)
    first = as_caller(sessions, cache, secret)
    read = len(statements)
    assert as_caller(sessions, cache, secret) is first and len(statements) == read, "kept: no query"

    revoke_elsewhere(world, token_id)
    clock.now += TTL_S * 0.9
    assert as_caller(sessions, cache, secret) is first, "another writer's revocation is seen within the TTL, not before"
    clock.now += TTL_S * 0.1
    with pytest.raises(CallmeterError) as refused:
        as_caller(sessions, cache, secret)
    assert refused.value.code == ErrorCode.UNAUTHENTICATED


def test_a_role_taken_away_elsewhere_is_gone_after_the_ttl(kept) -> None:  # type: ignore[no-untyped-def]
    world, sessions, cache, clock, _ = kept
    user_id, secret, _ = member(world, tenancy_pb2.ROLE_EDITOR)
    assert as_caller(sessions, cache, secret).role_in_project(world.project, world.organization) \
        == tenancy_pb2.ROLE_EDITOR
    unbind_elsewhere(world, user_id)
    clock.now += TTL_S
    assert as_caller(sessions, cache, secret).role_in_project(world.project, world.organization) \
        == tenancy_pb2.ROLE_UNSPECIFIED


def test_this_process_revoking_or_granting_empties_the_cache_at_once(kept) -> None:  # type: ignore[no-untyped-def]
    world, sessions, cache, _, _ = kept
    user_id, secret, token_id = member(world, role=0)
    assert as_caller(sessions, cache, secret).bindings == ()
    with sessions.begin() as session:
        tenancy.grant_role(session, authenticate(session, world.tokens[ADMIN]), tenancy_pb2.GrantRoleRequest(
            binding=tenancy_pb2.RoleBinding(user_id=user_id, role=tenancy_pb2.ROLE_RUNNER, project_id=world.project)))
    assert [b.role for b in as_caller(sessions, cache, secret).bindings] == ["ROLE_RUNNER"], "no clock advance"

    with sessions.begin() as session:
        tenancy.revoke_api_token(session, authenticate(session, world.tokens[ADMIN]),
                                 tenancy_pb2.RevokeApiTokenRequest(token_id=token_id))
    with pytest.raises(CallmeterError) as refused:
        as_caller(sessions, cache, secret)
    assert refused.value.code == ErrorCode.UNAUTHENTICATED


def test_a_kept_principal_is_refused_once_its_token_expires(kept, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    world, sessions, cache, _, _ = kept
    _, secret, token_id = member(world)
    with Session(world.engine) as session, session.begin():
        session.get_one(ApiToken, token_id).expires_at = utcnow() + timedelta(hours=1)
    as_caller(sessions, cache, secret)
    later = utcnow() + timedelta(hours=2)
    monkeypatch.setattr(principals, "utcnow", lambda: later)
    monkeypatch.setattr(auth, "utcnow", lambda: later)
    with pytest.raises(CallmeterError) as refused:
        as_caller(sessions, cache, secret)
    assert refused.value.code == ErrorCode.UNAUTHENTICATED and "expired" in refused.value.detail


def test_refusals_are_not_kept(kept) -> None:  # type: ignore[no-untyped-def]
    world, sessions, cache, _, _ = kept
    secret = new_secret(API_TOKEN_PREFIX)
    with pytest.raises(CallmeterError):
        as_caller(sessions, cache, secret)
    with Session(world.engine) as session, session.begin():
        session.add(ApiToken(user_id=world.member, name="late", secret_hash=hash_secret(secret)))
    assert as_caller(sessions, cache, secret).user.id == world.member, "a token made after a refusal works at once"


# -- through the real API process ---------------------------------------------------------------

POLL_S = 0.05
#: How long a test waits for a change to show: generous, for a loaded machine.
BOUND_S = 3.0


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, ServiceProcess]]:
    with api_alone(tmp_path_factory.mktemp("principals")) as started:
        yield started


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def after_change(call: Callable[[], object], wanted: grpc.StatusCode) -> list[tuple[float, grpc.StatusCode]]:
    """Calls every POLL_S, from now until a call ends with ``wanted`` (for at most BOUND_S):
    each call's (seconds from now to when it was sent, status)."""
    began = time.monotonic()
    calls: list[tuple[float, grpc.StatusCode]] = []
    while time.monotonic() - began < BOUND_S:
        sent = time.monotonic() - began
        calls.append((sent, code_of(call)))
        if calls[-1][1] == wanted:
            break
        time.sleep(POLL_S)
    return calls


def assert_within_ttl(calls: list[tuple[float, grpc.StatusCode]], wanted: grpc.StatusCode) -> None:
    """The change showed, and no call sent TTL_S or more after it was made saw the old state (the
    server handles a call after it is sent, so this holds however slowly calls come back)."""
    assert calls[-1][1] == wanted, f"still {calls[-1][1]} {calls[-1][0]:.2f} s after the change"
    late = [(round(sent, 3), code.name) for sent, code in calls if sent >= TTL_S and code != wanted]
    assert not late, f"served the old principal {TTL_S} s and more after the change: {late}"


def get_run(channel: grpc.Channel, world: World, secret: str) -> Callable[[], object]:
    stub = runs_pb2_grpc.RunServiceStub(channel)
    return lambda: stub.GetRun(runs_pb2.GetRunRequest(run_id=world.run),
                               metadata=[("authorization", f"Bearer {secret}")], timeout=10)


def test_a_token_revoked_elsewhere_is_refused_within_the_ttl(api: tuple[World, ServiceProcess]) -> None:
    world, service = api
    _, secret, token_id = member(world)
    with sync_channel(service.address) as channel:
        call = get_run(channel, world, secret)
        assert code_of(call) == grpc.StatusCode.OK  # the principal is kept now
        revoke_elsewhere(world, token_id)
        assert_within_ttl(after_change(call, grpc.StatusCode.UNAUTHENTICATED), grpc.StatusCode.UNAUTHENTICATED)


def test_a_role_changed_elsewhere_takes_effect_within_the_ttl(api: tuple[World, ServiceProcess]) -> None:
    world, service = api
    user_id, secret, _ = member(world)
    with sync_channel(service.address) as channel:
        call = get_run(channel, world, secret)
        assert code_of(call) == grpc.StatusCode.OK
        unbind_elsewhere(world, user_id)
        assert_within_ttl(after_change(call, grpc.StatusCode.PERMISSION_DENIED), grpc.StatusCode.PERMISSION_DENIED)
        bind_elsewhere(world, user_id, tenancy_pb2.ROLE_VIEWER)
        assert_within_ttl(after_change(call, grpc.StatusCode.OK), grpc.StatusCode.OK)


def test_a_revocation_or_grant_through_the_api_holds_on_the_next_call(api: tuple[World, ServiceProcess]) -> None:
    world, service = api
    user_id, secret, token_id = member(world, role=0)
    admin = [("authorization", f"Bearer {world.tokens[ADMIN]}")]
    with sync_channel(service.address) as channel:
        call = get_run(channel, world, secret)
        assert code_of(call) == grpc.StatusCode.PERMISSION_DENIED  # kept, without a role
        tenancy_stub = tenancy_pb2_grpc.TenancyServiceStub(channel)
        tenancy_stub.GrantRole(tenancy_pb2.GrantRoleRequest(binding=tenancy_pb2.RoleBinding(
            user_id=user_id, role=tenancy_pb2.ROLE_VIEWER, project_id=world.project)), metadata=admin, timeout=10)
        assert code_of(call) == grpc.StatusCode.OK
        tenancy_stub.RevokeApiToken(tenancy_pb2.RevokeApiTokenRequest(token_id=token_id), metadata=admin, timeout=10)
        assert code_of(call) == grpc.StatusCode.UNAUTHENTICATED
