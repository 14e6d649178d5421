"""``callmeter_orchestrator_runs{state}`` on a real state store: counted at scrape time, by the leader only."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from callmeter.common.stores.database import create_database_engine
from callmeter.state.bootstrap import bootstrap_local
from callmeter.state.migrate import upgrade
from callmeter.state.models import Run, Test, TestVersion
from callmeter.v1 import runs_pb2, tests_pb2
from services.orchestrator.leadership import Leadership
from services.orchestrator.metrics import RunsByState


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 's.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = create_database_engine(url)
    upgrade(engine)
    yield engine
    engine.dispose()


def add_runs(engine: Engine, *states: int) -> None:
    project_id = bootstrap_local(engine, existing_worker_token=None).project_id
    with Session(engine) as session, session.begin():
        test = Test(project_id=project_id, name=uuid.uuid4().hex, current_version=1)
        session.add(test)
        session.flush()
        session.add(TestVersion(test_id=test.id, version=1, spec=tests_pb2.TestSpec(name="t").SerializeToString()))
        session.flush()  # the version before its runs
        session.add_all(Run(test_id=test.id, test_version=1, project_id=project_id, state=runs_pb2.RunState.Name(state))
                        for state in states)


def scrape(registry: CollectorRegistry) -> dict[str, dict[str, float]]:
    """Each family's samples in the exposition text, by their label values."""
    text = generate_latest(registry).decode()
    return {family.name: {",".join(sample.labels.values()): sample.value for sample in family.samples}
            for family in text_string_to_metric_families(text)}


def test_runs_are_counted_by_state_on_the_leader_only(engine: Engine) -> None:
    add_runs(engine, runs_pb2.RUN_STATE_QUEUED, runs_pb2.RUN_STATE_QUEUED, runs_pb2.RUN_STATE_RUNNING,
             runs_pb2.RUN_STATE_TIMED_OUT)
    leadership = Leadership(engine)
    registry = CollectorRegistry()
    registry.register(RunsByState(engine, leadership))
    try:
        assert scrape(registry) == {}  # standing by: no query, no series
        assert leadership.hold()
        assert scrape(registry) == {"callmeter_orchestrator_runs": {
            "queued": 2, "dispatching": 0, "running": 1, "collecting": 0, "finished": 0, "failed": 0, "cancelled": 0,
            "timed_out": 1}}
        add_runs(engine, runs_pb2.RUN_STATE_FINISHED)
        assert scrape(registry)["callmeter_orchestrator_runs"]["finished"] == 1  # read at each scrape
    finally:
        leadership.release()


def test_a_store_that_fails_leaves_out_only_this_metric(tmp_path: Path) -> None:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'empty.db'}")  # no runs table: every query fails
    leadership = Leadership(engine)
    assert leadership.hold()
    registry = CollectorRegistry()
    registry.register(RunsByState(engine, leadership))
    Gauge("other", "another metric of the same registry", registry=registry).set(1)
    try:
        assert scrape(registry) == {"other": {"": 1}}
    finally:
        engine.dispose()
