"""Which orchestrator replica drives the runs: the one holding a PostgreSQL advisory lock.

Every replica serves OrchestratorService (submits, cancels, admissions, reports: each its own
transaction). Only the leader runs the conductor and the staleness sweep, so that two replicas
never dispatch, time out or collect the same run at once — a Deployment's rolling update runs two
for a while, and more replicas keep the platform driving runs when one dies.

The lock is held by a connection of its own. When the leader exits or loses the database, the
server drops the lock with the connection, and another replica takes it on its next try (every
tick). On SQLite, a store one process owns, the only replica leads.
"""

from __future__ import annotations

import sqlalchemy as sa
import structlog
from prometheus_client import Gauge
from sqlalchemy.engine import Connection, Engine

log = structlog.get_logger(__name__)

# Any fixed number, distinct from the migration lock (callmeter/state/migrate.py).
LEADER_LOCK = 0x6F726368  # "orch"

LEADING = Gauge("callmeter_orchestrator_leader", "1 while this orchestrator replica drives the runs, else 0")


class Leadership:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._connection: Connection | None = None
        self.leading = False

    def hold(self) -> bool:
        """Whether this replica leads now: keeps the lock it has, or tries to take it. Blocking."""
        leading = self._check() if self._connection is not None else self._try_take()
        if leading != self.leading:
            log.info("orchestrator_leading" if leading else "orchestrator_standing_by")
            self.leading = leading
            LEADING.set(int(leading))
        return leading

    def release(self) -> None:
        """Gives the lock up at once (another replica takes it on its next try)."""
        if self._connection is not None:
            try:  # unlocked here: the server drops a closed session's locks only once its backend has exited
                self._connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": LEADER_LOCK})
            except sa.exc.SQLAlchemyError:
                pass  # the session is gone, and its lock with it
            self._connection.invalidate()  # never pooled again
            self._connection.close()
            self._connection = None
        self.leading = False
        LEADING.set(0)

    def _check(self) -> bool:
        assert self._connection is not None
        try:
            self._connection.execute(sa.text("SELECT 1"))
            self._connection.commit()
            return True
        except sa.exc.DBAPIError as exc:  # the connection is gone, and the lock with it
            log.warning("orchestrator_leader_connection_lost", error=str(exc.orig).strip())
            self.release()
            return False

    def _try_take(self) -> bool:
        if self.engine.dialect.name != "postgresql":
            return True
        connection = self.engine.connect()
        try:
            taken = bool(connection.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": LEADER_LOCK}).scalar())
            connection.commit()  # the lock is the session's: it outlives the transaction
        except sa.exc.DBAPIError as exc:
            log.warning("orchestrator_leader_lock_failed", error=str(exc.orig).strip())
            connection.invalidate()
            connection.close()
            return False
        if taken:
            self._connection = connection
        else:
            connection.close()
        return taken
