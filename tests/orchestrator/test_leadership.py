"""One orchestrator replica drives the runs: the PostgreSQL advisory lock, and its hand-over.

On the machine's PostgreSQL: two replicas in this process (one leads, the other stands by; a
release or a lost connection hands over), then two orchestrator processes (the leader SIGKILLed,
the other takes over). On SQLite the only replica leads.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from callmeter.common.stores.database import create_database_engine
from callmeter.common.stores.nats import EmbeddedNats
from callmeter.state.migrate import upgrade
from services.orchestrator.leadership import Leadership
from tests.procs import ServiceProcess, eventually, start_service

pytestmark = pytest.mark.timeout(120)


def engines(url: str, count: int) -> list[Engine]:
    """One engine per replica, as separate processes would have."""
    return [create_database_engine(url) for _ in range(count)]


@pytest.mark.postgres
def test_one_replica_leads_and_a_release_hands_over(postgres_url: str) -> None:
    first_engine, second_engine = engines(postgres_url, 2)
    first, second = Leadership(first_engine), Leadership(second_engine)
    try:
        assert first.hold() and first.hold(), "the leader keeps leading"
        assert not second.hold() and not second.hold(), "the other stands by"
        first.release()
        assert second.hold()
        assert not first.hold(), "the lock is the new leader's now"
    finally:
        for replica, engine in ((first, first_engine), (second, second_engine)):
            replica.release()
            engine.dispose()


@pytest.mark.postgres
def test_a_leader_whose_connection_is_lost_stops_leading_and_another_takes_over(postgres_url: str) -> None:
    first_engine, second_engine = engines(postgres_url, 2)
    first, second = Leadership(first_engine), Leadership(second_engine)
    try:
        assert first.hold() and not second.hold()
        with second_engine.connect() as admin:  # the database drops the leader's session
            terminated = admin.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = :key"),
                {"key": 0x6F726368}).scalars().all()
        assert terminated == [True]
        # pg_terminate_backend only signals the backend: the lock goes when it has exited.
        eventually(second.hold, timeout_s=10, message="the lock went with the leader's session")
        assert not first.hold(), "the old leader notices and stands by"
    finally:
        for replica, engine in ((first, first_engine), (second, second_engine)):
            replica.release()
            engine.dispose()


def test_on_sqlite_the_only_replica_leads(tmp_path: Path) -> None:
    [engine] = engines(f"sqlite:///{tmp_path / 'state.db'}", 1)
    try:
        assert Leadership(engine).hold()
    finally:
        engine.dispose()


def leading(orchestrator: ServiceProcess) -> int:
    return orchestrator.log().count("orchestrator_leading")


@pytest.mark.postgres
def test_two_orchestrator_processes_one_leads_and_the_other_takes_over_when_it_is_killed(
        postgres_url: str, tmp_path: Path, nats_server: EmbeddedNats) -> None:
    engine = create_database_engine(postgres_url)
    upgrade(engine)
    engine.dispose()
    env = {"CALLMETER_DATABASE_URL": postgres_url, "CALLMETER_NATS_URL": nats_server.url}
    first = start_service("orchestrator", tmp_path, env)
    second = start_service("orchestrator", tmp_path, env)
    try:
        eventually(lambda: leading(first) + leading(second) == 1, timeout_s=10, message="one leader")
        leader, standby = (first, second) if leading(first) else (second, first)
        os.kill(leader.process.pid, signal.SIGKILL)
        leader.process.wait()
        eventually(lambda: leading(standby) == 1, timeout_s=10, message="the standby leading")
    finally:
        for process in (first, second):
            if process.process.poll() is None:
                assert process.terminate() == 0, process.log()[-2000:]
