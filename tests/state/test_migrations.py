"""The migrations build exactly the models' schema, on SQLite and on PostgreSQL, and undo it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from callmeter.common.stores.database import create_database_engine
from callmeter.state import models
from callmeter.state.migrate import MIGRATIONS, current_revision, downgrade, schema_diff, upgrade
from callmeter.v1 import runs_pb2, tests_pb2

MODEL_TABLES = set(models.Base.metadata.tables)
HEAD = ScriptDirectory(str(MIGRATIONS)).get_current_head()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty database of each backend: a file for SQLite, a uuid-named database on PostgreSQL."""
    url = (f"sqlite:///{tmp_path / 'state.db'}" if request.param == "sqlite"
           else request.getfixturevalue("postgres_url"))
    engine = create_database_engine(url)
    yield engine
    engine.dispose()


def table_names(engine: Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_upgrade_builds_the_models_schema(engine: Engine) -> None:
    assert current_revision(engine) is None

    upgrade(engine)

    assert current_revision(engine) == HEAD
    assert table_names(engine) == MODEL_TABLES | {"alembic_version"}
    assert schema_diff(engine) == []


def test_rows_round_trip(engine: Engine) -> None:
    upgrade(engine)
    spec = tests_pb2.TestSpec(name="smoke", description="two phones")
    started = datetime(2026, 1, 2, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    before = datetime.now(UTC)
    with Session(engine) as session, session.begin():
        organization = models.Organization(name="acme")
        session.add(organization)
        session.flush()
        project = models.Project(organization_id=organization.id, name="pbx")
        session.add(project)
        session.flush()
        test = models.Test(project_id=project.id, name="smoke", current_version=1)
        session.add(test)
        session.flush()
        session.add(models.TestVersion(test_id=test.id, version=1, spec=spec.SerializeToString()))
        session.flush()
        run = models.Run(
            test_id=test.id, test_version=1, project_id=project.id, reasons=["gate failed"], started_at=started
        )
        session.add(run)
        session.flush()
        run_id, test_id = run.id, test.id

    with Session(engine) as session:
        run = session.get_one(models.Run, run_id)
        version = session.get_one(models.TestVersion, (test_id, 1))
        test = session.get_one(models.Test, test_id)
        assert len(run_id) == 32 and int(run_id, 16) >= 0
        assert run.state == runs_pb2.RunState.Name(runs_pb2.RUN_STATE_QUEUED)
        assert run.verdict == runs_pb2.Verdict.Name(runs_pb2.VERDICT_UNSPECIFIED)
        assert run.reasons == ["gate failed"]
        assert run.summary is None
        assert test.archived is False
        assert tests_pb2.TestSpec.FromString(version.spec) == spec
        # Timestamps come back aware, in UTC, on both backends.
        assert run.started_at == started and run.started_at.tzinfo == UTC
        assert before <= run.created_at <= datetime.now(UTC)
        assert run.created_at.tzinfo == UTC

    # A run must point at a version that exists.
    with pytest.raises(sa.exc.IntegrityError), Session(engine) as session, session.begin():
        session.add(models.Run(test_id=test_id, test_version=2, project_id=test.project_id))


def test_role_binding_has_exactly_one_scope(engine: Engine) -> None:
    upgrade(engine)
    with Session(engine) as session, session.begin():
        organization = models.Organization(name="acme")
        user = models.User(name="ada")
        session.add_all([organization, user])
        session.flush()
        project = models.Project(organization_id=organization.id, name="pbx")
        session.add(project)
        session.flush()
        ids = {"user_id": user.id, "organization_id": organization.id, "project_id": project.id}

    for scope in ({"organization_id": ids["organization_id"], "project_id": ids["project_id"]}, {}):
        with pytest.raises(sa.exc.IntegrityError, match="one_scope"), Session(engine) as session, session.begin():
            session.add(models.RoleBinding(user_id=ids["user_id"], role="ROLE_VIEWER", **scope))

    with Session(engine) as session, session.begin():
        session.add(models.RoleBinding(user_id=ids["user_id"], role="ROLE_OWNER", organization_id=ids["organization_id"]))
    # A second binding of the same user on the same scope is refused.
    with pytest.raises(sa.exc.IntegrityError), Session(engine) as session, session.begin():
        session.add(models.RoleBinding(user_id=ids["user_id"], role="ROLE_VIEWER", organization_id=ids["organization_id"]))

    # Deleting the organization takes its projects and grants with it (foreign keys are enforced).
    with Session(engine) as session, session.begin():
        session.execute(sa.delete(models.Organization))
    with Session(engine) as session:
        assert session.scalars(sa.select(models.Project)).all() == []
        assert session.scalars(sa.select(models.RoleBinding)).all() == []


def test_downgrade_to_base_removes_everything_and_upgrade_again(engine: Engine) -> None:
    upgrade(engine)

    downgrade(engine, "base")

    assert current_revision(engine) is None
    assert table_names(engine) == {"alembic_version"}
    # The comparison is not vacuous: it now reports every model table as missing.
    missing = {diff[1].name for diff in schema_diff(engine) if diff[0] == "add_table"}
    assert missing == MODEL_TABLES

    upgrade(engine)

    assert current_revision(engine) == HEAD
    assert table_names(engine) == MODEL_TABLES | {"alembic_version"}
    assert schema_diff(engine) == []
