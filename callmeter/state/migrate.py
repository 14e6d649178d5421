"""Schema migrations, run programmatically: services call ``upgrade(engine)`` at start.

No alembic.ini is needed. To write a new revision after changing the models, autogenerate it
against a database at the current head and review it::

    with engine.begin() as connection:
        alembic.command.revision(alembic_config(connection), message="…", autogenerate=True)
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection, Engine

from callmeter.state.models import Base

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection) -> Config:
    """An Alembic Config for this package's migrations, running on ``connection`` (see env.py)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    # One transaction: on PostgreSQL a failed migration leaves nothing half-applied.
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), revision)


def downgrade(engine: Engine, revision: str) -> None:
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None before the first upgrade."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def schema_diff(engine: Engine) -> list:  # type: ignore[type-arg]
    """Alembic's differences between the database and the models; empty when they agree."""
    with engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), Base.metadata)


# Any fixed number: every callmeter process that migrates takes the same lock.
_MIGRATION_LOCK = 0x63616C6C  # "call"


def ensure_schema(engine: Engine) -> None:
    """Upgrades to head at service start. On PostgreSQL an advisory lock makes concurrent starts
    (api and orchestrator replicas) migrate one at a time; SQLite serializes writers itself."""
    if engine.dialect.name != "postgresql":
        upgrade(engine)
        return
    with engine.begin() as connection:
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        command.upgrade(alembic_config(connection), "head")
