"""``callmeter_orchestrator_runs{state}``: runs by state, read from the database at each scrape.

One ``GROUP BY`` on the indexed ``runs.state`` per scrape, and only on the leading replica: every
replica reads the same database, so a sum over replicas is the count, and standbys cost nothing.
Every state but UNSPECIFIED has its series, at 0 when no run is in it. A database that does not
answer leaves the metric out of that scrape (and is logged); the rest of /metrics is served.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
import structlog
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine

from callmeter.common.enum_words import word
from callmeter.state.models import Run
from callmeter.v1 import runs_pb2
from services.orchestrator.leadership import Leadership

log = structlog.get_logger(__name__)

NAME = "callmeter_orchestrator_runs"
STATES = [state for state in runs_pb2.RunState.values() if state != runs_pb2.RUN_STATE_UNSPECIFIED]


class RunsByState(Collector):
    def __init__(self, engine: Engine, leadership: Leadership) -> None:
        self.engine = engine
        self.leadership = leadership

    def describe(self) -> Iterable[Metric]:
        """What ``collect`` yields, without querying (the registry asks when the collector joins it)."""
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        if not self.leadership.leading:
            return []
        try:
            with self.engine.connect() as connection:
                counts = dict(connection.execute(sa.select(Run.state, sa.func.count()).group_by(Run.state)).all())
        except sa.exc.SQLAlchemyError as exc:
            log.warning("runs_metric_failed", error=str(exc).strip().splitlines()[0])
            return []
        family = self._family()
        for state in STATES:
            family.add_metric([word(runs_pb2.RunState, state)], counts.get(runs_pb2.RunState.Name(state), 0))
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(NAME, "Runs by state (from the leading orchestrator replica)", labels=["state"])
