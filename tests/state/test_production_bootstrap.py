"""`callmeter bootstrap` against the machine's PostgreSQL: the first organization, its owner and
a token that authenticates, once; a second run creates nothing; bad databases are one line."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from callmeter.cli import bootstrap as bootstrap_cli
from callmeter.cli.main import build_parser
from callmeter.common.errors import CallmeterError, ErrorCode
from callmeter.common.stores.database import create_database_engine
from callmeter.common.tokens import hash_secret
from callmeter.state.migrate import MIGRATIONS, current_revision, upgrade
from callmeter.state.models import ApiToken, Organization, Project, RoleBinding, User
from services.api.auth import OWNER, Principal, authenticate
from tests.procs import base_env, callmeter_command

pytestmark = pytest.mark.postgres

HEAD = ScriptDirectory(str(MIGRATIONS)).get_current_head()
PASSWORD = "hunter2-never-shown"


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    engine = create_database_engine(postgres_url)
    yield engine
    engine.dispose()


def bootstrap(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], list[str]]:
    """`callmeter bootstrap ARGS` in this process: exit code, stdout lines, stderr lines."""
    parser = argparse.ArgumentParser(prog="callmeter")
    bootstrap_cli.add_parser(parser.add_subparsers(required=True))
    parsed = parser.parse_args(["bootstrap", *args])
    code = parsed.handler(parsed)
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def principal(engine: Engine, token: str) -> Principal:
    with Session(engine) as session:
        return authenticate(session, token)


def organization_id(engine: Engine, name: str) -> str:
    with Session(engine) as session:
        return session.scalars(sa.select(Organization.id).where(Organization.name == name)).one()


def row_counts(engine: Engine) -> dict[str, int]:
    with Session(engine) as session:
        return {model.__tablename__: session.scalar(sa.select(sa.func.count()).select_from(model)) or 0
                for model in (Organization, User, RoleBinding, ApiToken, Project)}


def test_first_run_migrates_and_prints_one_owner_token_that_authenticates(
        capsys: pytest.CaptureFixture[str], engine: Engine, postgres_url: str) -> None:
    assert current_revision(engine) is None

    code, out, err = bootstrap(capsys, "--database-url", postgres_url, "--organization", "acme", "--owner", "alice")

    assert code == 0, err
    [token] = out
    assert token.startswith("cma_")
    assert not any(token in line for line in err)
    assert current_revision(engine) == HEAD
    assert f"callmeter bootstrap: migrated the schema from nothing to {HEAD}" in err
    caller = principal(engine, token)
    assert caller.user.name == "alice"
    assert caller.role_on_organization(organization_id(engine, "acme")) == OWNER
    with Session(engine) as session:  # only the hash is stored
        assert session.scalar(sa.select(ApiToken.secret_hash)) == hash_secret(token)


def test_an_older_schema_is_migrated_first(capsys: pytest.CaptureFixture[str], engine: Engine,
                                           postgres_url: str) -> None:
    upgrade(engine, "0002")

    code, _, err = bootstrap(capsys, "--database-url", postgres_url, "--organization", "acme", "--owner", "alice")

    assert code == 0, err
    assert f"callmeter bootstrap: migrated the schema from 0002 to {HEAD}" in err
    assert current_revision(engine) == HEAD


def test_a_second_run_creates_nothing_and_prints_no_token(capsys: pytest.CaptureFixture[str], engine: Engine,
                                                          postgres_url: str) -> None:
    args = ("--database-url", postgres_url, "--organization", "acme", "--owner", "alice", "--project", "pbx")
    _, [token], _ = bootstrap(capsys, *args)
    before = row_counts(engine)

    code, out, err = bootstrap(capsys, *args)

    assert code == 0, err
    assert out == []
    assert row_counts(engine) == before == {"organizations": 1, "users": 1, "role_bindings": 1, "api_tokens": 1,
                                            "projects": 1}
    assert any("organization 'acme'" in line and "exists with owner(s) 'alice'" in line for line in err), err
    assert any("found project 'pbx'" in line for line in err), err
    assert not any("migrated" in line for line in err), err
    assert principal(engine, token).user.name == "alice"


def test_new_owner_token_revokes_only_the_bootstrap_token(capsys: pytest.CaptureFixture[str], engine: Engine,
                                                          postgres_url: str) -> None:
    args = ("--database-url", postgres_url, "--organization", "acme", "--owner", "alice")
    _, [lost], _ = bootstrap(capsys, *args)
    kept = "cma_a-token-alice-made-through-the-api"
    with Session(engine) as session, session.begin():
        alice = principal(engine, lost).user.id
        session.add(ApiToken(user_id=alice, name="ci", secret_hash=hash_secret(kept)))

    code, out, err = bootstrap(capsys, *args, "--new-owner-token")

    assert code == 0, err
    [token] = out
    assert token != lost
    assert "callmeter bootstrap: revoked 1 earlier bootstrap token(s) of 'alice'" in err
    assert principal(engine, token).user.id == alice
    with pytest.raises(CallmeterError) as refused:
        principal(engine, lost)
    assert refused.value.code == ErrorCode.UNAUTHENTICATED
    assert principal(engine, kept).user.id == alice


def test_another_owner_is_refused_unless_added(capsys: pytest.CaptureFixture[str], engine: Engine,
                                               postgres_url: str) -> None:
    bootstrap(capsys, "--database-url", postgres_url, "--organization", "acme", "--owner", "alice")
    before = row_counts(engine)

    code, out, err = bootstrap(capsys, "--database-url", postgres_url, "--organization", "acme", "--owner", "bob")

    assert (code, out) == (2, [])
    assert err == ["callmeter: error: organization 'acme' exists with owner(s) 'alice', not 'bob'; "
                   "pass --add-owner to make 'bob' another owner"]
    assert row_counts(engine) == before

    code, [token], err = bootstrap(capsys, "--database-url", postgres_url, "--organization", "acme",
                                   "--owner", "bob", "--add-owner")

    assert code == 0, err
    caller = principal(engine, token)
    assert caller.user.name == "bob" and caller.role_on_organization(organization_id(engine, "acme")) == OWNER
    _, out, err = bootstrap(capsys, "--database-url", postgres_url, "--organization", "acme", "--owner", "bob")
    assert out == [] and any("exists with owner(s) 'alice', 'bob'" in line for line in err), err


def test_a_second_organization_is_refused(capsys: pytest.CaptureFixture[str], engine: Engine,
                                          postgres_url: str) -> None:
    """A typo in the organization's name would make another organization and owner: refused."""
    bootstrap(capsys, "--database-url", postgres_url, "--organization", "acme", "--owner", "alice")
    before = row_counts(engine)

    code, out, err = bootstrap(capsys, "--database-url", postgres_url, "--organization", "acne", "--owner", "alice")

    assert (code, out) == (2, [])
    assert err == ["callmeter: error: no organization 'acne', and the database has 1 other(s) ('acme'): bootstrap "
                   "makes the first one only; an owner creates more through the API"]
    assert row_counts(engine) == before


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("url", [
    "nonsense",
    f"mysql://root:{PASSWORD}@127.0.0.1/callmeter",
    f"postgresql://postgres:{PASSWORD}@127.0.0.1:not-a-port/callmeter",
    f"postgresql://postgres:{PASSWORD}@127.0.0.1:{{port}}/callmeter",  # nothing listens there
    "postgresql://postgres@127.0.0.1:5432/cm_test_no_such_database",
], ids=["not-a-url", "not-postgresql", "bad-port", "unreachable", "no-such-database"])
def test_a_database_that_cannot_be_used_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], url: str) -> None:
    code, out, err = bootstrap(capsys, "--database-url", url.format(port=free_port()), "--organization", "acme",
                               "--owner", "alice")

    assert (code, out) == (2, [])
    [line] = err
    assert line.startswith("callmeter: error: --database-url: ") and PASSWORD not in line, line


def test_no_database_named_is_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALLMETER_DATABASE_URL", raising=False)

    assert bootstrap(capsys, "--organization", "acme", "--owner", "alice") == (
        2, [], ["callmeter: error: no database: pass --database-url or set CALLMETER_DATABASE_URL"])


def test_a_schema_newer_than_this_version_is_refused(capsys: pytest.CaptureFixture[str], engine: Engine,
                                                     postgres_url: str) -> None:
    upgrade(engine)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = 'ffff_from_a_newer_callmeter'"))

    code, out, err = bootstrap(capsys, "--database-url", postgres_url, "--organization", "acme", "--owner", "alice")

    assert (code, out) == (2, [])
    [line] = err
    assert line.startswith("callmeter: error: cannot migrate the schema: ") and "ffff_from_a_newer_callmeter" in line
    assert row_counts(engine)["organizations"] == 0


def test_a_user_who_may_not_create_the_schema_is_one_line(capsys: pytest.CaptureFixture[str], engine: Engine,
                                                           postgres_url: str) -> None:
    """PostgreSQL 15 and later let only the database's owner create tables in `public`."""
    role = f"cm_test_{uuid.uuid4().hex}"
    with engine.begin() as connection:
        connection.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
    try:
        url = sa.engine.make_url(postgres_url).set(username=role).render_as_string(hide_password=False)
        code, out, err = bootstrap(capsys, "--database-url", url, "--organization", "acme", "--owner", "alice")
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text(f'DROP ROLE "{role}"'))

    assert (code, out) == (2, [])
    assert err == ["callmeter: error: the database failed: permission denied for schema public"], err
    assert current_revision(engine) is None


def bootstrap_command(*args: str) -> list[str]:
    """`callmeter bootstrap ARGS` as a process of its own: the console script's entry once
    callmeter/cli/main.py registers the subcommand, until then the same parser and handler."""
    commands = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    if "bootstrap" in commands.choices:
        return callmeter_command("bootstrap", *args)
    shim = ("import argparse, sys; from callmeter.cli import bootstrap; p = argparse.ArgumentParser(prog='callmeter'); "
            "bootstrap.add_parser(p.add_subparsers(required=True)); a = p.parse_args(sys.argv[1:]); "
            "sys.exit(a.handler(a))")
    return [sys.executable, "-c", shim, "bootstrap", *args]


def test_the_command_twice_in_processes_of_its_own(engine: Engine, postgres_url: str) -> None:
    """As a Job runs it: the URL from CALLMETER_DATABASE_URL, the token alone on stdout."""
    env = base_env(CALLMETER_DATABASE_URL=postgres_url)
    command = bootstrap_command("--organization", "acme", "--owner", "alice")

    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    assert first.returncode == 0, first.stderr
    [token] = first.stdout.splitlines()
    assert token not in first.stderr
    assert principal(engine, token).user.name == "alice"
    assert (second.returncode, second.stdout) == (0, ""), second.stderr
    assert "exists with owner(s) 'alice'" in second.stderr
