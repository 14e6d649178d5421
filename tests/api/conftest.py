"""Fixtures of the API tests: a migrated SQLite state store holding a small world."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from callmeter.common.stores.database import create_database_engine
from callmeter.state.migrate import ensure_schema
from tests.api.world import World, build_world


def world_on(url: str) -> World:
    engine = create_database_engine(url)
    ensure_schema(engine)
    return build_world(engine)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Shared by a module's tests: World.call rolls every handler call back."""
    built = world_on(f"sqlite:///{tmp_path_factory.mktemp('state') / 'state.db'}")
    yield built
    built.engine.dispose()


@pytest.fixture
def fresh_world(tmp_path) -> Iterator[World]:  # type: ignore[no-untyped-def]
    """A world of its own, for tests that commit."""
    built = world_on(f"sqlite:///{tmp_path / 'state.db'}")
    yield built
    built.engine.dispose()
