"""Fixtures that start real dependencies on loopback: NATS, PostgreSQL databases, a dev PKI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from callmeter.common.stores.database import scratch_database
from callmeter.common.stores.nats import EmbeddedNats
from callmeter.common.tls import DevPki, ensure_dev_pki
from tests.procs import create_metrics_streams

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/"


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A nats-server child with JetStream on a free port, its store in tmp_path, and the streams
    metrics-ingest would have created (a gateway waits for them)."""
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    create_metrics_streams(server.url)
    yield server
    server.stop()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh uuid-named database on the machine's PostgreSQL, dropped afterwards."""
    with scratch_database(POSTGRES, "cm_test") as url:
        yield url


@pytest.fixture
def pki(tmp_path: Path) -> DevPki:
    return ensure_dev_pki(tmp_path / "tls")
