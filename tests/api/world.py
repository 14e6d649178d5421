"""A small tenancy world in the state store, and plain handler calls as one of its users."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from callmeter.common.tokens import API_TOKEN_PREFIX, WORKER_TOKEN_PREFIX, hash_secret, new_secret
from callmeter.state.models import (
    ApiToken,
    Organization,
    Project,
    RoleBinding,
    Run,
    Test,
    TestVersion,
    User,
    Worker,
    WorkerToken,
)
from callmeter.v1 import common_pb2, tenancy_pb2, tests_pb2, workers_pb2
from services.api.auth import authenticate

ROLES = {"viewer": tenancy_pb2.ROLE_VIEWER, "runner": tenancy_pb2.ROLE_RUNNER, "editor": tenancy_pb2.ROLE_EDITOR,
         "admin": tenancy_pb2.ROLE_ADMIN, "owner": tenancy_pb2.ROLE_OWNER}


def valid_spec(name: str = "smoke") -> tests_pb2.TestSpec:
    return tests_pb2.TestSpec(name=name, groups=[
        tests_pb2.EndpointGroup(name="callees", count=2, role=common_pb2.ENDPOINT_ROLE_CALLEE,
                                target=tests_pb2.SipTarget(aor="sip:{n}@127.0.0.1:5070")),
        tests_pb2.EndpointGroup(name="callers", count=2, role=common_pb2.ENDPOINT_ROLE_CALLER, codecs=["PCMU"],
                                target=tests_pb2.SipTarget(call_uri="group:callees")),
    ], gates=[tests_pb2.QualityGate(metric="mos_avg", comparison=tests_pb2.COMPARISON_GE, threshold=4.0)])


@dataclass
class World:
    engine: Engine
    organization: str = ""
    project: str = ""
    other_organization: str = ""
    other_project: str = ""
    test: str = ""
    run: str = ""
    #: A viewer on the project and a viewer on the organization, whose grants and tokens admins manage.
    member: str = ""
    member_token: str = ""
    org_member: str = ""
    project_worker_token: str = ""
    organization_worker_token: str = ""
    project_worker: str = ""
    organization_worker: str = ""
    #: API token secrets: (role, "organization" | "project") → secret; ("none", "") has no role.
    tokens: dict[tuple[str, str], str] = field(default_factory=dict)

    def call(self, who: tuple[str, str], handler: Callable[..., Any], request: Any) -> Any:
        """Runs the handler as ``who``, then rolls back: every call sees the same world."""
        with Session(self.engine) as session:
            try:
                return handler(session, authenticate(session, self.tokens[who]), request)
            finally:
                session.rollback()

    @contextmanager
    def acting(self, who: tuple[str, str]) -> Iterator[Callable[[Callable[..., Any], Any], Any]]:
        """Several handler calls as ``who`` in one session, rolled back at the end."""
        with Session(self.engine) as session:
            principal = authenticate(session, self.tokens[who])
            try:
                yield lambda handler, request: handler(session, principal, request)
            finally:
                session.rollback()


def _user(session: Session, name: str, role: int = 0, organization_id: str | None = None,
          project_id: str | None = None) -> tuple[str, str, str]:
    """A user with one role (or none) and an API token: (user id, token secret, token id)."""
    user = User(name=name)
    session.add(user)
    session.flush()
    if role:
        session.add(RoleBinding(user_id=user.id, role=tenancy_pb2.Role.Name(role), organization_id=organization_id,
                                project_id=project_id))
    secret = new_secret(API_TOKEN_PREFIX)
    token = ApiToken(user_id=user.id, name=name, secret_hash=hash_secret(secret))
    session.add(token)
    session.flush()
    return user.id, secret, token.id


def build_world(engine: Engine) -> World:
    world = World(engine)
    with Session(engine) as session, session.begin():
        organization, other = Organization(name="acme"), Organization(name="other")
        session.add_all([organization, other])
        session.flush()
        project, other_project = Project(organization_id=organization.id, name="voice"), \
            Project(organization_id=other.id, name="theirs")
        session.add_all([project, other_project])
        session.flush()
        world.organization, world.project = organization.id, project.id
        world.other_organization, world.other_project = other.id, other_project.id
        for name, role in ROLES.items():
            world.tokens[(name, "organization")] = _user(session, f"{name}-org", role,
                                                         organization_id=organization.id)[1]
            world.tokens[(name, "project")] = _user(session, f"{name}-project", role, project_id=project.id)[1]
        world.tokens[("none", "")] = _user(session, "nobody")[1]
        world.member, _, world.member_token = _user(session, "member", tenancy_pb2.ROLE_VIEWER, project_id=project.id)
        world.org_member = _user(session, "org-member", tenancy_pb2.ROLE_VIEWER, organization_id=organization.id)[0]
        for scope in ("project", "organization"):
            token = WorkerToken(name=scope, secret_hash=hash_secret(new_secret(WORKER_TOKEN_PREFIX)),
                                **{f"{scope}_id": world.project if scope == "project" else world.organization})
            session.add(token)
            session.flush()
            worker = Worker(name=f"{scope}-worker", token_id=token.id, version="test", state="WORKER_STATE_ONLINE",
                            capacity=workers_pb2.WorkerCapacity(max_endpoints=10).SerializeToString())
            session.add(worker)
            session.flush()
            setattr(world, f"{scope}_worker_token", token.id)
            setattr(world, f"{scope}_worker", worker.id)
        test = Test(project_id=project.id, name="smoke", current_version=1)
        session.add(test)
        session.flush()
        session.add(TestVersion(test_id=test.id, version=1, spec=valid_spec().SerializeToString()))
        session.flush()
        run = Run(test_id=test.id, test_version=1, project_id=project.id)
        session.add(run)
        session.flush()
        world.test, world.run = test.id, run.id
    return world
