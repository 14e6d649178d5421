"""Fixtures that start real dependencies on loopback: NATS, PostgreSQL databases, a dev PKI."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from callmeter.common.stores.database import create_database_engine
from callmeter.common.stores.nats import EmbeddedNats
from callmeter.common.tls import DevPki, ensure_dev_pki

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/"


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A nats-server child with JetStream on a free port, its store in tmp_path."""
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh uuid-named database on the machine's PostgreSQL, dropped afterwards."""
    name = f"cm_test_{uuid.uuid4().hex}"
    admin = create_database_engine(POSTGRES + "postgres").execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES + name
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pki(tmp_path: Path) -> DevPki:
    return ensure_dev_pki(tmp_path / "tls")
