"""The verdict of a run: what it must have done to be judged at all, its quality gates, its reasons.

Pure functions over ``RunSummary`` messages, used by the orchestrator and by ``callmeter worker
--local`` alike. The rule (docs/verdict.md):

1. ERROR when nothing of the test happened: no endpoint reported a sample, or no call and no
   registration was attempted. Gates are not judged on nothing. ERROR too when the results are
   incomplete: fewer than COMPLETENESS_MIN_PCT of the endpoint-seconds measured (or, for parts
   the platform lost, planned) were stored.
2. Otherwise each quality gate is judged; a gate whose metric was never measured fails with
   "not measured" (never as 0).
3. A test without gates gets the default gate ``endpoints_failed == 0``: every endpoint ran its
   scenario without an error. It is shown among the gates like any other.
FAIL if a gate did not hold, else PASS. Cancelled and timed-out runs are not judged (ERROR).
Whatever the verdict, a worker that was overloaded adds a reason saying so
(callmeter/common/generator_load.py); a gate on overloaded_s makes it fail the run.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message

from callmeter.common.generator_load import load_reasons
from callmeter.v1 import results_pb2, runs_pb2, tests_pb2


def _pct(part: float, whole: float) -> float | None:
    return 100.0 * part / whole if whole else None


def measured(message: Message, field: str) -> Any:
    """The field's value, or None when it was not measured: an optional field left unset.
    Every output reads summary figures and gates' observed values through this."""
    if message.DESCRIPTOR.fields_by_name[field].has_presence and not message.HasField(field):
        return None
    return getattr(message, field)


def _measured(field: str) -> Callable[[results_pb2.GroupSummary], float | None]:
    return lambda g: measured(g, field)


# Gate metric → how to read it from a GroupSummary (None: not measured, e.g. no calls).
METRICS: dict[str, Callable[[results_pb2.GroupSummary], float | None]] = {
    **{name: _measured(name) for name in ("mos_avg", "mos_min", "loss_pct", "jitter_ms_p95", "rtt_ms_p95",
                                          "setup_ms_p95", "completeness_pct", "overloaded_s")},
    "calls_failed_pct": lambda g: _pct(g.calls_failed, g.calls_attempted),
    "calls_connected_pct": lambda g: _pct(g.calls_connected, g.calls_attempted),
    "registered_pct": lambda g: _pct(g.registered, g.endpoints),
    # Counted from the endpoints' outcomes (callmeter/common/outcomes.py), over the planned endpoints.
    "endpoints_failed": lambda g: g.endpoints_failed if g.outcomes else None,
    "endpoints_failed_pct": lambda g: _pct(g.endpoints_failed, sum(count.endpoints for count in g.outcomes)),
}

#: The metric names a quality gate may use: GroupSummary fields and ratios of them.
GATE_METRICS = frozenset(METRICS)

COMPARISONS: dict[int, tuple[str, Callable[[float, float], bool]]] = {
    tests_pb2.COMPARISON_LT: ("<", operator.lt),
    tests_pb2.COMPARISON_LE: ("<=", operator.le),
    tests_pb2.COMPARISON_GT: (">", operator.gt),
    tests_pb2.COMPARISON_GE: (">=", operator.ge),
    tests_pb2.COMPARISON_EQ: ("==", operator.eq),
}

#: Below this completeness (percent) a run is not judged; a gate on completeness_pct can ask more.
COMPLETENESS_MIN_PCT = 99.0

#: The gate of a test that sets none, as shown among the gates.
DEFAULT_GATE = "endpoints_failed == 0 (default gate: the test sets none)"


def gate_text(gate: tests_pb2.QualityGate) -> str:
    """The gate as written: "mos_avg >= 4" or "group callers: loss_pct < 1"."""
    symbol = COMPARISONS.get(gate.comparison, ("?", None))[0]
    text = f"{gate.metric} {symbol} {gate.threshold:g}"
    return f"group {gate.group}: {text}" if gate.group else text


def nothing_happened(summary: results_pb2.RunSummary, endpoints_planned: int) -> str | None:
    """Why the run cannot be judged, or None: no endpoint ran, or nothing was attempted."""
    total = summary.total
    if not total.endpoints:
        return f"no endpoint ran: none of the {endpoints_planned} planned endpoints reported a measurement"
    if not total.calls_attempted and not total.register_attempted:
        return "nothing of the test's scenario was attempted: no call and no registration"
    return None


def incomplete(summary: results_pb2.RunSummary, min_pct: float) -> str | None:
    """Why the results are too incomplete to judge, or None (also when completeness is not known)."""
    pct = measured(summary.total, "completeness_pct")
    if pct is None or pct >= min_pct:
        return None
    parts = [(f"group {g.group}", g) for g in summary.groups] + [(f"worker {w.worker}", w) for w in summary.workers]
    short = [f"{name}: {part.completeness_pct:.1f} %" for name, part in parts
             if measured(part, "completeness_pct") is not None and part.completeness_pct < min_pct]
    return (f"results incomplete: {pct:.1f} % of the run's endpoint-seconds were stored, less than "
            f"{min_pct:g} % ({', '.join(short)}); not judged")


def judge(summary: results_pb2.RunSummary, gates: list[tests_pb2.QualityGate], endpoints_planned: int,
          endpoints_failed: int, completeness_min_pct: float = COMPLETENESS_MIN_PCT) -> tuple[int, list[str]]:
    """Fills summary.gates; returns (Verdict, reasons for an ERROR or a FAIL, and the generator's
    overload whatever the verdict)."""
    verdict, reasons = _judge(summary, gates, endpoints_planned, endpoints_failed, completeness_min_pct)
    return verdict, reasons + load_reasons(summary)


def _judge(summary: results_pb2.RunSummary, gates: list[tests_pb2.QualityGate], endpoints_planned: int,
           endpoints_failed: int, completeness_min_pct: float) -> tuple[int, list[str]]:
    del summary.gates[:]
    why_not = nothing_happened(summary, endpoints_planned) or incomplete(summary, completeness_min_pct)
    if why_not is not None:
        return runs_pb2.VERDICT_ERROR, [why_not]
    if not gates:
        passed = endpoints_failed == 0
        summary.gates.append(results_pb2.GateResult(gate=DEFAULT_GATE, observed=endpoints_failed, passed=passed))
        reasons = [] if passed else [f"{DEFAULT_GATE}: {endpoints_failed} of {endpoints_planned} endpoints failed"]
        return (runs_pb2.VERDICT_PASS if passed else runs_pb2.VERDICT_FAIL), reasons
    groups = {group.group: group for group in summary.groups}
    reasons = []
    for gate in gates:
        text = gate_text(gate)
        scope = groups.get(gate.group) if gate.group else summary.total
        read = METRICS.get(gate.metric)
        value = read(scope) if scope is not None and read is not None else None
        compare = COMPARISONS.get(gate.comparison)
        passed = value is not None and compare is not None and compare[1](value, gate.threshold)
        result = results_pb2.GateResult(gate=text, passed=passed)
        if value is not None:
            result.observed = value
        summary.gates.append(result)
        if not passed:
            reasons.append(f"{text}: not measured" if value is None else f"{text}: observed {value:.3g}")
    return (runs_pb2.VERDICT_FAIL if reasons else runs_pb2.VERDICT_PASS), reasons


def observed_text(gate: results_pb2.GateResult) -> str:
    """"observed 4.2" or "not measured", as every output words it."""
    value = measured(gate, "observed")
    return "not measured" if value is None else f"observed {value:g}"
