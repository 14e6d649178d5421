"""Configuration and state: SQLAlchemy 2 on SQLite (embedded) or PostgreSQL through psycopg 3."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from callmeter.common.errors import ConfigError

SCHEMES = ("sqlite", "postgresql")


def normalize_database_url(url: str, setting: str) -> str:
    """Accepts sqlite:///PATH and postgresql://…; the PostgreSQL driver is always psycopg 3."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is no number. The URL may hold a password: not shown
        raise ConfigError(setting, "not a database URL; use sqlite:///PATH or postgresql://USER@HOST:PORT/DB") from None
    backend = parsed.get_backend_name()
    if backend not in SCHEMES:
        raise ConfigError(setting, f"unknown scheme {parsed.drivername!r}; use sqlite:///PATH or postgresql://HOST/DB")
    if backend == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def create_database_engine(url: str, setting: str = "CALLMETER_DATABASE_URL", check: bool = True) -> Engine:
    """An Engine for the URL; with ``check``, a failed first connection is a ConfigError."""
    url = normalize_database_url(url, setting)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = sa.create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5})
    if check:
        try:
            with engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
        except SQLAlchemyError as exc:
            engine.dispose()
            reason = str(exc.orig if getattr(exc, "orig", None) else exc).strip().splitlines()[0]
            raise ConfigError(setting, f"cannot connect to {parsed.render_as_string()}: {reason}") from None
    return engine


@contextlib.contextmanager
def scratch_database(server_url: str, prefix: str) -> Iterator[str]:
    """A new uuid-named database on the PostgreSQL server at ``server_url`` (ending in "/"), dropped
    afterwards with its connections; for tests and benchmarks. ConfigError if the server does not answer."""
    name = f"{prefix}_{uuid.uuid4().hex}"
    admin = create_database_engine(server_url + "postgres").execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            yield server_url + name
        finally:
            with admin.connect() as connection:
                connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL lets the api read while the orchestrator writes; foreign keys are off by default.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
