"""Fixtures of the API tests: a migrated SQLite state store holding a small world."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from callmeter.common.stores.database import create_database_engine
from callmeter.state.migrate import ensure_schema
from tests.api.world import World, build_world
from tests.procs import ServiceProcess, start_service


def world_on(url: str) -> World:
    engine = create_database_engine(url)
    ensure_schema(engine)
    return build_world(engine)


@contextmanager
def api_alone(tmp: Path, prepare: Callable[[World], None] = lambda _world: None) -> Iterator[tuple[World, ServiceProcess]]:
    """A real API process on a world of its own (``prepare`` adds to it before the start), with no
    orchestrator or metrics-ingest behind it; it must stop cleanly."""
    url = f"sqlite:///{tmp / 'state.db'}"
    world = world_on(url)
    prepare(world)
    api = start_service("api", tmp, {"CALLMETER_DATABASE_URL": url, "CALLMETER_ORCHESTRATOR_ADDRESS": "127.0.0.1:1",
                                     "CALLMETER_METRICS_ADDRESS": "127.0.0.1:1"})
    try:
        yield world, api
    finally:
        code = api.terminate()
        world.engine.dispose()
    assert code == 0, api.log()[-2000:]


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
