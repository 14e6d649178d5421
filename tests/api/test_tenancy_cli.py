"""The tenancy commands against the real `callmeter api` on a state store holding the test world:
orgs, projects, users, roles, whoami, API tokens and worker tokens, their --json with enum words,
their one-line errors."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from callmeter.common.tokens import hash_secret
from callmeter.state.models import User, Worker, WorkerToken
from callmeter.v1 import common_pb2, workers_pb2
from tests.api.conftest import api_alone
from tests.api.world import World
from tests.procs import ServiceProcess
from tests.cli_commands import Result, runner

OWNER = ("owner", "organization")
ADMIN = ("admin", "project")
VIEWER = ("viewer", "project")
ENUM_NAME = re.compile(r'"(ROLE|WORKER_STATE|TRANSPORT|SRTP_KEYING)_[A-Z_]+"')


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, ServiceProcess]]:
    def prepare(world: World) -> None:
        with Session(world.engine) as session, session.begin():
            session.get_one(Worker, world.project_worker).capacity = workers_pb2.WorkerCapacity(
                max_endpoints=10, codecs=["PCMU"], transports=[common_pb2.TRANSPORT_UDP]).SerializeToString()

    with api_alone(tmp_path_factory.mktemp("api"), prepare) as started:
        yield started


@pytest.fixture
def world(api: tuple[World, ServiceProcess]) -> World:
    return api[0]


@pytest.fixture
def cli(api: tuple[World, ServiceProcess], capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> Callable[..., Result]:
    """``cli(who, *argv)``: a command as a user of the world, ("owner", "organization") say, or as the
    holder of a token secret."""
    world, service = api
    run = runner(capsys, {"CALLMETER_API": service.address, "CALLMETER_PROFILE": str(tmp_path / "none.json"),
                          "CALLMETER_API_CA_FILE": ""})
    return lambda who, *argv: run(world.tokens[who] if isinstance(who, tuple) else who, *argv)


def one_error(result: Result, *words: str) -> str:
    """The error line of a command that failed with exit 2 and wrote nothing on stdout."""
    assert (result.code, result.out) == (2, ""), result
    [line] = [line for line in result.err.splitlines() if ": error: " in line]
    assert all(word in line for word in words), line
    return line


def listed(result: Result) -> list[dict]:  # type: ignore[type-arg]
    assert result.code == 0, result.err
    assert not ENUM_NAME.search(result.out), f"an enum's name instead of its word: {result.out}"
    return json.loads(result.out)


def test_organizations_and_projects(cli: Callable[..., Result], world: World) -> None:
    [acme] = listed(cli(OWNER, "orgs", "list", "--json"))
    assert (acme["id"], acme["name"]) == (world.organization, "acme") and acme["created_at"].endswith("Z")
    created = cli(OWNER, "projects", "create", "pbx-lab")
    assert created.code == 0, created.err
    assert re.fullmatch(rf"created project 'pbx-lab' \(id \w+\) in organization {world.organization}\n", created.out)
    projects = {p["name"]: p for p in listed(cli(OWNER, "projects", "list", "--json"))}
    assert set(projects) == {"voice", "pbx-lab"} and projects["pbx-lab"]["organization_id"] == world.organization
    table = cli(OWNER, "projects", "list").out.splitlines()
    assert table[0].split() == ["name", "organization", "created", "(UTC)", "id"]
    assert table[2].split()[:2] == ["pbx-lab", "acme"]
    one_error(cli(ADMIN, "projects", "create", "lab"), "permission_denied: creating a project needs the admin role")

    mine = json.loads(cli(("none", ""), "orgs", "create", "mine", "--json").out)
    assert [o["name"] for o in listed(cli(("none", ""), "orgs", "list", "--json"))] == ["mine"]
    assert listed(cli(("none", ""), "projects", "list", "--json", "--org", mine["id"])) == []


def test_users_and_their_roles(cli: Callable[..., Result], world: World) -> None:
    carol = json.loads(cli(ADMIN, "users", "create", "carol", "--email", "carol@example.com", "--json").out)
    granted = cli(ADMIN, "roles", "grant", carol["id"], "runner", "--project", world.project)
    assert granted.out == f"user {carol['id']} is now runner on project voice\n", granted.err
    members = {m["user"]["name"]: m for m in listed(cli(ADMIN, "users", "list", "--project", world.project, "--json"))}
    assert members["carol"]["user"]["email"] == "carol@example.com"
    assert members["carol"]["bindings"] == [{"user_id": carol["id"], "role": "runner", "project_id": world.project}]
    row = next(line for line in cli(ADMIN, "users", "list").out.splitlines() if line.startswith("carol"))
    assert row.split() == ["carol", "carol@example.com", "runner", "on", "project", "voice", carol["id"]]

    revoked = cli(ADMIN, "roles", "revoke", carol["id"], "--project", world.project)
    assert revoked.out == f"user {carol['id']} holds no role on project voice any more\n", revoked.err
    assert "carol" not in {m["user"]["name"] for m in listed(cli(ADMIN, "users", "list", "--json"))}
    one_error(cli(VIEWER, "users", "list", "--project", world.project), "listing users needs the admin role")
    one_error(cli(ADMIN, "roles", "grant", carol["id"], "boss", "--project", world.project),
              "argument role: 'boss' is not a role: viewer, runner, editor, admin, owner")
    one_error(cli(ADMIN, "roles", "grant", carol["id"], "runner"), "one of the arguments --project --org is required")


def test_whoami_names_the_user_its_token_and_roles(cli: Callable[..., Result], world: World) -> None:
    text = cli(OWNER, "whoami")
    assert text.code == 0, text.err
    user, token, role = text.out.splitlines()
    assert user.startswith("user   owner-org (id ") and token.startswith("token  owner-org (id ")
    assert token.endswith(", expires never") and role == "role   owner on organization acme"
    me = json.loads(cli(OWNER, "whoami", "--json").out)
    assert me["user"]["name"] == "owner-org" and me["token"]["expires_at"] is None
    assert me["bindings"] == [{"user_id": me["user"]["id"], "role": "owner", "organization_id": world.organization}]
    solo = json.loads(cli(ADMIN, "users", "create", "solo", "--json").out)
    secret = cli(ADMIN, "tokens", "create", "solo's", "--user", solo["id"]).out.strip()
    lines = cli(secret, "whoami").out.splitlines()
    assert lines == [f"user   solo (id {solo['id']})", lines[1], "role   none"] and lines[1].startswith("token  solo's")


def test_an_api_token_with_a_role_is_shown_once_listed_and_revoked(cli: Callable[..., Result], world: World) -> None:
    created = cli(ADMIN, "tokens", "create", "ci", "--role", "runner", "--project", world.project, "--expires", "30d")
    assert created.code == 0, created.err
    secret = created.out.removesuffix("\n")
    assert re.fullmatch(r"cma_[\w-]{43}", secret), "the secret alone on stdout"
    assert "of user 'ci', runner on project voice, expires 20" in created.err and secret not in created.err
    me = json.loads(cli(secret, "whoami", "--json").out)
    assert me["user"]["name"] == "ci" and [b["role"] for b in me["bindings"]] == ["runner"]

    listing = cli(ADMIN, "tokens", "list", "--json")
    [token] = [t for t in listed(listing) if t["name"] == "ci"]
    assert secret not in listing.out and "secret" not in token
    assert (token["user_name"], token["revoked"], token["bindings"][0]["role"]) == ("ci", False, "runner")
    expires = datetime.fromisoformat(token["expires_at"])
    assert abs(expires - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=1)
    assert token["last_used_at"] is not None, "whoami used it"

    revoked = cli(ADMIN, "tokens", "revoke", token["id"])
    assert revoked.out == f"revoked API token 'ci' (id {token['id']}) of user 'ci'\n", revoked.err
    assert "ci" not in {t["name"] for t in listed(cli(ADMIN, "tokens", "list", "--json"))}
    [row] = [line.split() for line in cli(ADMIN, "tokens", "list", "--all").out.splitlines() if line.startswith("ci ")]
    assert row[-2:] == ["revoked", token["id"]]
    one_error(cli(secret, "whoami"), "unauthenticated: unknown or revoked API token")


def test_a_viewer_gives_no_token_a_role_and_nothing_is_left_of_trying(cli: Callable[..., Result],
                                                                       world: World) -> None:
    one_error(cli(VIEWER, "tokens", "create", "sneaky", "--role", "viewer", "--project", world.project),
              "permission_denied: granting roles needs the admin role")
    one_error(cli(VIEWER, "tokens", "create", "sneaky", "--user", world.member),
              "permission_denied: creating a token for another user needs the admin role")
    with Session(world.engine) as session:
        assert session.scalar(sa.select(User.id).where(User.name == "sneaky")) is None
    own = cli(VIEWER, "tokens", "create", "mine")  # a token of one's own has one's own roles: anyone may
    assert own.code == 0 and own.out.startswith("cma_"), own.err
    one_error(cli(VIEWER, "tokens", "create", "ci", "--project", world.project), "role: required")


@pytest.mark.parametrize("expires", ["0d", "5y", "3651d", "-1d", "30", "１d"])
def test_an_expiry_that_is_not_one_is_one_line(cli: Callable[..., Result], expires: str) -> None:
    one_error(cli(OWNER, "tokens", "create", "x", "--expires", expires), "argument --expires: ")


def test_a_worker_token_prints_the_worker_environment(cli: Callable[..., Result], world: World) -> None:
    created = cli(ADMIN, "workers", "token", "create", "w2", "--gateway", "gw.example.com:443",
                  "--ca-file", "/etc/callmeter/ca.pem")
    assert created.code == 0, created.err
    env = dict(line.split("=", 1) for line in created.out.splitlines())
    assert list(env) == ["CALLMETER_GATEWAY_ADDRESS", "CALLMETER_CA_FILE", "CALLMETER_WORKER_TOKEN"]
    assert env["CALLMETER_GATEWAY_ADDRESS"] == "gw.example.com:443"
    assert env["CALLMETER_CA_FILE"] == "/etc/callmeter/ca.pem"
    assert "for the workers of project voice" in created.err and env["CALLMETER_WORKER_TOKEN"] not in created.err
    [token] = [t for t in listed(cli(ADMIN, "workers", "token", "list", "--json")) if t["name"] == "w2"]
    assert (token["project_id"], token["revoked"]) == (world.project, False) and "organization_id" not in token
    with Session(world.engine) as session:
        assert session.get_one(WorkerToken, token["id"]).secret_hash == hash_secret(env["CALLMETER_WORKER_TOKEN"])

    revoked = cli(ADMIN, "workers", "token", "revoke", token["id"])
    assert revoked.out.startswith(f"revoked worker token 'w2' (id {token['id']})"), revoked.err
    assert "w2" not in {t["name"] for t in listed(cli(ADMIN, "workers", "token", "list", "--json"))}
    every = listed(cli(ADMIN, "workers", "token", "list", "--all", "--json"))
    assert [t["revoked"] for t in every if t["id"] == token["id"]] == [True]


def test_a_worker_token_without_a_gateway_says_what_the_worker_still_needs(cli: Callable[..., Result]) -> None:
    created = cli(ADMIN, "workers", "token", "create", "w3")  # the only project the caller may see
    assert created.code == 0, created.err
    [line] = created.out.splitlines()
    assert line.startswith("CALLMETER_WORKER_TOKEN=cmw_")
    assert "set CALLMETER_GATEWAY_ADDRESS=HOST:PORT on the worker" in created.err


@pytest.mark.parametrize("argv, named", [
    (["--gateway", "gw.example.com"], "argument --gateway: 'gw.example.com' is not HOST:PORT"),
    (["--gateway", "gw:70000"], "argument --gateway: "),
    (["--gateway", "gw:443\nCALLMETER_X=1"], "argument --gateway: "),
    (["--ca-file", "/my certs/ca.pem"], "argument --ca-file: "),
], ids=["no-port", "port-too-high", "a-second-line", "a-space"])
def test_what_cannot_be_an_env_line_is_refused(cli: Callable[..., Result], argv: list[str], named: str) -> None:
    one_error(cli(ADMIN, "workers", "token", "create", "w4", *argv), named)


def test_a_viewer_cannot_mint_a_worker_token(cli: Callable[..., Result], world: World) -> None:
    one_error(cli(VIEWER, "workers", "token", "create", "w5", "--project", world.project),
              "permission_denied: creating a worker token needs the admin role")
    one_error(cli(VIEWER, "workers", "token", "list", "--project", world.project), "listing worker tokens")


def test_workers_list_speaks_in_enum_words(cli: Callable[..., Result], world: World) -> None:
    workers = {w["name"]: w for w in listed(cli(VIEWER, "workers", "list", "--json"))}
    worker = workers["project-worker"]
    assert (worker["state"], worker["capacity"]["transports"]) == ("online", ["udp"])
    assert worker["last_heartbeat"] is None and worker["running_endpoints"] == 0


@pytest.mark.parametrize("argv", [["orgs", "list"], ["projects", "list"], ["users", "list"], ["whoami"],
                                  ["tokens", "list", "--all"], ["workers", "token", "list", "--all"],
                                  ["workers", "list"]], ids=" ".join)
def test_every_json_speaks_in_enum_words(cli: Callable[..., Result], argv: list[str]) -> None:
    listed(cli(OWNER, *argv, "--json"))
