"""The read side: SQL over the metrics tables, as plain functions of a clickhouse-connect client.

Every query reads ``FINAL``, so a sample stored twice (a replayed batch) counts once. Stored
values are the catalog's scaled integers; results are divided by ``Metric.scale`` into the
metric's unit. Percentiles use quantileExactInclusive: exact, interpolated like NumPy's
default percentile.

Run summaries (GetRunSummary, WatchRun's progress, trends) read the rollups, not the raw rows:
rollup_group_seconds adds each group-second's sums up and merges its exact quantile states,
rollup_endpoints gives the endpoints. What they
count is defined in schema.py (GROUP_SECOND_COLUMNS), per group and for the whole run:
- mos_avg, mos_min: over seconds with a call active and a MOS computed (mos > 0; a MOS is
  never below 1, so 0 means "not computed yet");
- jitter_ms_p95: over seconds with a call active; rtt_ms_p95: the same, where RTCP gave an
  RTT (rtt_us > 0);
- setup_ms_p95: over seconds in which a call connected and reported its setup time, so each
  call weighs once, however long it lasted;
- endpoint_seconds: the endpoints reporting in each second, added up over the seconds;
- overloaded_s (the run's total) and workers: the load generator's own load (worker_loads);
- failures_by_code: each second's calls_failed filed under that second's call_last_code (see
  schema.failure_code_sql).
- registered, register_attempted: endpoints that held a registration, or sent a REGISTER, in
  any second of the run (read from endpoint_seconds without FINAL: a replayed row names the
  same endpoint again, which a distinct count ignores; only three narrow columns are read);
- outcomes, endpoints_failed: each endpoint's outcome in its newest second (rollup_endpoints),
  counted by callmeter/common/outcomes.py;
- a quality figure over no qualifying rows is not measured: the field is left unset.
Series and top endpoints read endpoint_seconds (any metric, any aggregate, one endpoint), as
does the export of a run's endpoint-seconds (samples_page), a page at a time.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

from callmeter.catalog import BY_NAME, METRICS, Metric
from callmeter.common import outcomes
from callmeter.common.generator_load import CARRIES_LOAD_SQL, OVERLOADED_SQL
from callmeter.common.verdict import measured
from callmeter.v1 import endpoint_metrics_pb2, results_pb2
from services.metrics.schema import (
    ACTIVE,
    ENDPOINTS_TABLE,
    GROUP_SECONDS_TABLE,
    P95,
    QUALITY_MEASURED,
    RUNS_TABLE,
    SAMPLES_TABLE,
    quote,
)

AGGREGATES = {
    "avg": "avg({c})",
    "min": "min({c})",
    "max": "max({c})",
    "sum": "sum({c})",
    "p50": "quantileExactInclusive(0.5)({c})",
    "p95": "quantileExactInclusive(0.95)({c})",
    "p99": "quantileExactInclusive(0.99)({c})",
}

#: GroupSummary fields a trend can follow (its numbers; not the group name or the code map).
TREND_FIELDS = tuple(
    f.name for f in results_pb2.GroupSummary.DESCRIPTOR.fields
    # completeness is the orchestrator's figure; overloaded_s is read with the run's workers, the
    # outcomes with the run's plan
    if f.name not in ("group", "failures_by_code", "completeness_pct", "overloaded_s", "outcomes", "endpoints_failed")
)


def _p95(column: str) -> str:
    """NaN over no rows: not measured."""
    return f"quantileExactInclusiveMerge({P95})({column})"


_MOS_SCALE = BY_NAME["mos"].scale

# A call between two of the run's groups is counted by both: attempted by the caller, and as an
# incoming call by the callee. The run's call counts are therefore the placing groups' (those not
# among the run's answering groups), unless they placed none: callees answering an outside caller.
_PLACING = "NOT has(answering_groups, `group`)"

_SUMMARY_SQL = f"""
SELECT run_id, `group`, grouping(`group`) AS is_total,
  sum(calls_attempted), sum(calls_connected), sum(calls_failed), sumMap(failures_by_code),
  sumIf(calls_attempted, {_PLACING}), sumIf(calls_connected, {_PLACING}), sumIf(calls_failed, {_PLACING}),
  sumMapIf(failures_by_code, {_PLACING}),
  sum(mos_count), sum(mos_sum) / sum(mos_count) / {_MOS_SCALE},
  minIf(mos_min, mos_count > 0) / {_MOS_SCALE},
  {_p95('jitter_ms')},
  sum(rx_lost), sum(rx_packets),
  {_p95('rtt_ms')},
  {_p95('setup_ms')},
  sum(endpoints)
FROM {GROUP_SECONDS_TABLE} AS rollup FINAL
LEFT JOIN (SELECT run_id, argMax(answering_groups, started_at) AS answering_groups FROM {RUNS_TABLE}
           WHERE run_id IN {{runs:Array(String)}} GROUP BY run_id) AS runs USING (run_id)
WHERE run_id IN {{runs:Array(String)}}
GROUP BY GROUPING SETS ((run_id, `group`), (run_id))
"""

_ENDPOINTS_SQL = f"""
SELECT run_id, `group`, grouping(`group`), count()
FROM {ENDPOINTS_TABLE} FINAL
WHERE run_id IN {{runs:Array(String)}}
GROUP BY GROUPING SETS ((run_id, `group`), (run_id))
"""

_REGISTERED_SQL = f"""
SELECT run_id, `group`, grouping(`group`),
  uniqExactIf((`group`, endpoint), registered = 1), uniqExactIf((`group`, endpoint), register_attempts > 0)
FROM {SAMPLES_TABLE}
WHERE run_id IN {{runs:Array(String)}} AND (registered = 1 OR register_attempts > 0)
GROUP BY GROUPING SETS ((run_id, `group`), (run_id))
"""


_OUTCOMES_SQL = f"""
SELECT `group`, endpoint, outcome, outcome_code
FROM {ENDPOINTS_TABLE} FINAL
WHERE run_id = {{run_id:String}}
"""


def endpoint_outcomes(client, run_id: str) -> dict[tuple[str, int], tuple[int, int]]:  # type: ignore[no-untyped-def]
    """(group, endpoint) → (outcome, SIP code) in the endpoint's newest stored second."""
    rows = client.query(_OUTCOMES_SQL, parameters={"run_id": run_id}).result_rows
    return {(group, endpoint): (outcome, code) for group, endpoint, outcome, code in rows}


_WORKER_SECONDS_SQL = f"""
SELECT worker_id, count() FROM {SAMPLES_TABLE} FINAL WHERE run_id = {{run_id:String}} GROUP BY worker_id
"""

_LOAD_SQL = f"""
SELECT worker_id, grouping(worker_id),
  uniqExactIf(second, {OVERLOADED_SQL}), max(engine_lag_ms), max(worker_lag_ms), max(engine_cpu_pct)
FROM {SAMPLES_TABLE}
WHERE run_id = {{run_id:String}} AND {CARRIES_LOAD_SQL}
GROUP BY GROUPING SETS ((worker_id), ())
"""


def worker_loads(client, run_id: str) -> tuple[int | None, list[results_pb2.WorkerLoad]]:  # type: ignore[no-untyped-def]
    """The run's overloaded seconds (None if no worker measured its load) and each worker's load
    (callmeter/common/generator_load.py). Raw rows without FINAL: a replayed row repeats a second
    and a maximum, which neither a distinct count nor max changes."""
    total, workers = None, []
    for worker_id, is_total, overloaded_s, engine_lag, worker_lag, engine_cpu in client.query(
            _LOAD_SQL, parameters={"run_id": run_id}).result_rows:
        if is_total:
            total = overloaded_s
        else:
            workers.append(results_pb2.WorkerLoad(
                worker=worker_id, overloaded_s=overloaded_s,
                engine_lag_ms_max=engine_lag / BY_NAME["engine_lag_ms"].scale,
                worker_lag_ms_max=worker_lag / BY_NAME["worker_lag_ms"].scale,
                engine_cpu_pct_max=engine_cpu / BY_NAME["engine_cpu_pct"].scale))
    # The grand total comes even over no rows: measured only with some worker's.
    return (total if workers else None), sorted(workers, key=lambda w: w.worker)


def _set_measured(summary: results_pb2.GroupSummary, field: str, value: float | None) -> None:
    if value is not None and math.isfinite(value):
        setattr(summary, field, value)


def group_summaries(client, run_ids: Sequence[str]) -> dict[str, dict[str, results_pb2.GroupSummary]]:  # type: ignore[no-untyped-def]
    """run_id → group → GroupSummary; the whole run's summary is under the group ''.

    Runs without samples are absent.
    """
    params = {"runs": list(run_ids)}
    found: dict[str, dict[str, results_pb2.GroupSummary]] = {}

    def summary(run_id: str, group: str, is_total: int) -> results_pb2.GroupSummary:
        key = "" if is_total else group
        return found.setdefault(run_id, {}).setdefault(key, results_pb2.GroupSummary(group=key))

    for (run_id, group, is_total, attempted, connected, failed, by_code, *placed, mos_count, mos_avg, mos_min,
         jitter_p95, lost, received, rtt_p95, setup_p95, endpoint_seconds) in client.query(
            _SUMMARY_SQL, parameters=params).result_rows:
        s = summary(run_id, group, is_total)
        s.endpoint_seconds = endpoint_seconds
        if is_total and placed[0]:
            attempted, connected, failed, by_code = placed
        s.calls_attempted, s.calls_connected, s.calls_failed = attempted, connected, failed
        s.failures_by_code.update(by_code)
        if mos_count:
            s.mos_avg, s.mos_min = mos_avg, mos_min
        _set_measured(s, "jitter_ms_p95", jitter_p95)
        _set_measured(s, "loss_pct", 100.0 * lost / (received + lost) if received + lost else None)
        _set_measured(s, "rtt_ms_p95", rtt_p95)
        _set_measured(s, "setup_ms_p95", setup_p95)
    for run_id, group, is_total, endpoints in client.query(_ENDPOINTS_SQL, parameters=params).result_rows:
        summary(run_id, group, is_total).endpoints = endpoints
    for run_id, group, is_total, registered, attempted in client.query(_REGISTERED_SQL,
                                                                       parameters=params).result_rows:
        s = summary(run_id, group, is_total)
        s.registered, s.register_attempted = registered, attempted
    return found


def run_summary(client, run_id: str, groups: Sequence[str], planned: Mapping[str, int] | None = None,  # type: ignore[no-untyped-def]
                calls: Sequence[results_pb2.GroupCalls] = ()) -> results_pb2.RunSummary:
    """The run and each group: the groups asked for first (zeros if they sent nothing), then others.
    Outcomes are counted as the run ended when its plan is given (outcomes.tally)."""
    by_group = group_summaries(client, [run_id]).get(run_id, {})
    total = by_group.pop("", results_pb2.GroupSummary())
    counts = outcomes.tally(endpoint_outcomes(client, run_id), planned, calls)
    names = list(dict.fromkeys(groups)) + sorted((set(by_group) | set(counts)) - set(groups))
    overloaded_s, workers = worker_loads(client, run_id)
    if overloaded_s is not None:
        total.overloaded_s = overloaded_s
    if planned is not None:  # the run's end: each worker's stored share, for its completeness
        loads = {load.worker: load for load in workers}
        for worker_id, seconds in client.query(_WORKER_SECONDS_SQL, parameters={"run_id": run_id}).result_rows:
            loads.setdefault(worker_id, results_pb2.WorkerLoad(worker=worker_id)).endpoint_seconds = seconds
        workers = sorted(loads.values(), key=lambda load: load.worker)
    summary = results_pb2.RunSummary(
        run_id=run_id, total=total,
        groups=[by_group.get(name) or results_pb2.GroupSummary(group=name) for name in names], workers=workers,
    )
    for group in summary.groups:
        outcomes.set_outcomes(group, counts.get(group.group, Counter()))
    outcomes.set_outcomes(summary.total, sum(counts.values(), Counter()))
    return summary


def series(client, run_id: str, metric: Metric, aggregate: str, step_s: int, group: str,  # type: ignore[no-untyped-def]
           endpoint: int) -> list[results_pb2.SeriesPoint]:
    """``aggregate`` of the metric over every endpoint-second of the scope in each ``step_s`` bucket.

    An empty group means the whole run; endpoint -1 means every endpoint of the scope.
    """
    where = ["run_id = {run_id:String}"]
    if group:
        where.append("`group` = {group:String}")
    if endpoint >= 0:
        where.append("endpoint = {endpoint:UInt32}")
    value = AGGREGATES[aggregate].format(c=quote(metric.name))
    sql = (f"SELECT intDiv(toUnixTimestamp(second), {{step:UInt32}}) * {{step:UInt32}} AS bucket, "
           f"{value} / {metric.scale} FROM {SAMPLES_TABLE} FINAL WHERE {' AND '.join(where)} "
           "GROUP BY bucket ORDER BY bucket")
    rows = client.query(sql, parameters={"run_id": run_id, "group": group, "endpoint": max(endpoint, 0),
                                         "step": step_s}).result_rows
    return [results_pb2.SeriesPoint(second=bucket, value=value) for bucket, value in rows]


def endpoint_value_sql(metric: Metric) -> str:
    """One number per endpoint for the whole run, by the metric's kind.

    counter: the sum; state: the value at the endpoint's last second; gauge: the mean over its
    seconds in a call (for MOS and R factor, those with a value), or over all its seconds if it
    never had one (so an endpoint that never got a call shows its idle value, usually 0).
    """
    column = quote(metric.name)
    if metric.kind == "counter":
        return f"sum({column})"
    if metric.kind == "state":
        return f"argMax({column}, second)"
    condition = QUALITY_MEASURED if metric.name in ("mos", "r_factor") else ACTIVE
    return f"if(countIf({condition}) > 0, avgIf({column}, {condition}), avg({column}))"


def top_endpoints(client, run_id: str, metric: Metric, ascending: bool, limit: int) -> list[results_pb2.EndpointValue]:  # type: ignore[no-untyped-def]
    """The ``limit`` worst endpoints of a run: highest values first, lowest with ``ascending``."""
    order = "ASC" if ascending else "DESC"
    sql = (f"SELECT `group`, endpoint, {endpoint_value_sql(metric)} / {metric.scale} AS value "
           f"FROM {SAMPLES_TABLE} FINAL WHERE run_id = {{run_id:String}} GROUP BY `group`, endpoint "
           f"ORDER BY value {order}, `group`, endpoint LIMIT {{limit:UInt32}}")
    rows = client.query(sql, parameters={"run_id": run_id, "limit": limit}).result_rows
    return [results_pb2.EndpointValue(group=group, endpoint=endpoint, value=value) for group, endpoint, value in rows]


def trend(client, test_id: str, field: str, limit: int) -> list[results_pb2.TrendPoint]:  # type: ignore[no-untyped-def]
    """A whole-run summary field (one of TREND_FIELDS) for the newest ``limit`` runs of a test.

    Runs come from run_tests (the orchestrator's run-start notices), newest first; runs that
    stored no samples are left out before the limit applies.
    """
    runs = client.query(
        f"SELECT run_id, toUnixTimestamp(started_at) AS started FROM {RUNS_TABLE} FINAL "
        "WHERE test_id = {test_id:String} AND run_id IN ("
        f"  SELECT DISTINCT run_id FROM {GROUP_SECONDS_TABLE} WHERE run_id IN ("
        f"    SELECT run_id FROM {RUNS_TABLE} WHERE test_id = {{test_id:String}})) "
        "ORDER BY started DESC, run_id DESC LIMIT {limit:UInt32}",
        parameters={"test_id": test_id, "limit": limit}).result_rows
    summaries = group_summaries(client, [run_id for run_id, _ in runs])
    # A run in which the field was not measured has no point (not a 0).
    return [results_pb2.TrendPoint(run_id=run_id, started_at=started, value=getattr(summaries[run_id][""], field))
            for run_id, started in runs
            if measured(summaries[run_id][""], field) is not None]


#: A page after a (group, endpoint, second) key, spelt out rather than as a tuple comparison so
#: that ClickHouse narrows the read by the table's primary key (run_id, group, endpoint, second).
_AFTER_KEY = ("(`group` > {group:String} OR (`group` = {group:String} AND (endpoint > {endpoint:UInt32} OR "
              "(endpoint = {endpoint:UInt32} AND second > toDateTime({second:UInt32})))))")


def _page_sql(where: str) -> str:
    return (f"SELECT `group`, endpoint, toUnixTimestamp(second), {', '.join(quote(m.name) for m in METRICS)} "
            f"FROM {SAMPLES_TABLE} FINAL WHERE {where} ORDER BY `group`, endpoint, second LIMIT {{limit:UInt32}}")


_FIRST_PAGE_SQL = _page_sql("run_id = {run_id:String}")
_NEXT_PAGE_SQL = _page_sql(f"run_id = {{run_id:String}} AND {_AFTER_KEY}")


def samples_page(client, run_id: str, after: results_pb2.EndpointSample | None,  # type: ignore[no-untyped-def]
                 limit: int) -> list[results_pb2.EndpointSample]:
    """Up to ``limit`` endpoint-seconds of a run, each once (FINAL), in (group, endpoint, second)
    order, from the one after ``after`` (from the first with None); metrics as stored."""
    parameters: dict[str, object] = {"run_id": run_id, "limit": limit}
    if after is not None:
        parameters.update(group=after.group, endpoint=after.endpoint, second=after.second)
    rows = client.query(_FIRST_PAGE_SQL if after is None else _NEXT_PAGE_SQL, parameters=parameters).result_rows
    return [results_pb2.EndpointSample(
        group=group, endpoint=endpoint, second=second,
        metrics=endpoint_metrics_pb2.EndpointMetrics(**{m.name: v for m, v in zip(METRICS, values, strict=True) if v}))
        for group, endpoint, second, *values in rows]
