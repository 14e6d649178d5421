"""Was the load generator itself the bottleneck? The rule, for the platform's summary
(services/metrics/queries.py) and for `callmeter worker --local` alike (docs/verdict.md).

Every second, each engine measures how late its loop took that second's samples
(``engine_lag_ms``) and the CPU it used (``engine_cpu_pct``), and the worker's supervisor how late
its own event loop ran (``worker_lag_ms``); they travel on one sample per engine (and per run) per
second. A second is overloaded on a worker when one of them reached its threshold below: the
calls' timing, the samples and the setup times then measure the generator as much as the system
under test.
"""

from __future__ import annotations

from callmeter.catalog import BY_NAME
from callmeter.v1 import endpoint_metrics_pb2, results_pb2

#: A loop this late (ms) misses SIP timers and RTP deadlines of its own.
OVERLOAD_LAG_MS = 200
#: An engine process using this much of one core (%) has no headroom left.
OVERLOAD_CPU_PCT = 90

# The thresholds in the stored integers (the catalog's scales).
_LIMITS = {"engine_lag_ms": OVERLOAD_LAG_MS * BY_NAME["engine_lag_ms"].scale,
           "worker_lag_ms": OVERLOAD_LAG_MS * BY_NAME["worker_lag_ms"].scale,
           "engine_cpu_pct": OVERLOAD_CPU_PCT * BY_NAME["engine_cpu_pct"].scale}
#: The same rule over the stored columns.
OVERLOADED_SQL = "(" + " OR ".join(f"{name} >= {limit}" for name, limit in _LIMITS.items()) + ")"
#: Samples that carry a load measurement at all.
CARRIES_LOAD_SQL = "(" + " OR ".join(f"{name} > 0" for name in _LIMITS) + ")"


def overloaded(metrics: endpoint_metrics_pb2.EndpointMetrics) -> bool:
    return any(getattr(metrics, name) >= limit for name, limit in _LIMITS.items())


def load_reasons(summary: results_pb2.RunSummary) -> list[str]:
    """One line per overloaded worker, worst first."""
    lines = []
    for load in sorted(summary.workers, key=lambda w: (-w.overloaded_s, w.worker)):
        if load.overloaded_s:
            lines.append(f"worker {load.worker} was overloaded for {load.overloaded_s} s (engine loop late by up to "
                         f"{load.engine_lag_ms_max:.0f} ms, supervisor by up to {load.worker_lag_ms_max:.0f} ms, an "
                         f"engine at up to {load.engine_cpu_pct_max:.0f} % CPU): results may reflect the load "
                         "generator, not the system under test")
    return lines


class LoadTally:
    """A worker's load from its samples as they come, as worker_loads (services/metrics/queries.py)
    reads it from the store: for `callmeter worker --local`'s summary."""

    def __init__(self) -> None:
        self.overloaded_seconds: set[int] = set()
        self.maxima = dict.fromkeys(_LIMITS, 0)
        self.measured = False

    def add(self, sample: results_pb2.EndpointSample) -> None:
        metrics = sample.metrics
        if not any(getattr(metrics, name) for name in _LIMITS):
            return
        self.measured = True
        for name in _LIMITS:
            self.maxima[name] = max(self.maxima[name], getattr(metrics, name))
        if overloaded(metrics):
            self.overloaded_seconds.add(sample.second)

    def load(self, worker: str) -> results_pb2.WorkerLoad | None:
        if not self.measured:
            return None
        unit = {name: value / BY_NAME[name].scale for name, value in self.maxima.items()}
        return results_pb2.WorkerLoad(worker=worker, overloaded_s=len(self.overloaded_seconds),
                                      engine_lag_ms_max=unit["engine_lag_ms"], worker_lag_ms_max=unit["worker_lag_ms"],
                                      engine_cpu_pct_max=unit["engine_cpu_pct"])


def load_json(load: results_pb2.WorkerLoad) -> dict[str, object]:
    """A worker's load as --json and local mode's summary give it."""
    return {"worker": load.worker, "overloaded_s": load.overloaded_s, "engine_lag_ms_max": load.engine_lag_ms_max,
            "worker_lag_ms_max": load.worker_lag_ms_max, "engine_cpu_pct_max": load.engine_cpu_pct_max,
            "endpoint_seconds": load.endpoint_seconds,
            "completeness_pct": load.completeness_pct if load.HasField("completeness_pct") else None}
