"""Quality gates against a run summary: the metrics a gate may name, the verdict and its reasons.

Pure functions over ``RunSummary`` messages. The api validates gates against ``GATE_METRICS``;
the orchestrator judges a run's summary with ``judge``, and ``callmeter worker --local`` judges
its own summary with the same function.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

from callmeter.v1 import results_pb2, runs_pb2, tests_pb2


def _pct(part: float, whole: float) -> float | None:
    return 100.0 * part / whole if whole else None


# Gate metric → how to read it from a GroupSummary (None: not measurable, e.g. no calls).
METRICS: dict[str, Callable[[results_pb2.GroupSummary], float | None]] = {
    "mos_avg": lambda g: g.mos_avg if g.calls_connected else None,
    "mos_min": lambda g: g.mos_min if g.calls_connected else None,
    "loss_pct": lambda g: g.loss_pct if g.calls_connected else None,
    "jitter_ms_p95": lambda g: g.jitter_ms_p95 if g.calls_connected else None,
    "rtt_ms_p95": lambda g: g.rtt_ms_p95 if g.calls_connected else None,
    "setup_ms_p95": lambda g: g.setup_ms_p95 if g.calls_connected else None,
    "calls_failed_pct": lambda g: _pct(g.calls_failed, g.calls_attempted),
    "calls_connected_pct": lambda g: _pct(g.calls_connected, g.calls_attempted),
    "registered_pct": lambda g: _pct(g.registered, g.endpoints),
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


def gate_text(gate: tests_pb2.QualityGate) -> str:
    """The gate as written: "mos_avg >= 4" or "group callers: loss_pct < 1"."""
    symbol = COMPARISONS.get(gate.comparison, ("?", None))[0]
    text = f"{gate.metric} {symbol} {gate.threshold:g}"
    return f"group {gate.group}: {text}" if gate.group else text


def judge(summary: results_pb2.RunSummary, gates: list[tests_pb2.QualityGate]) -> tuple[int, list[str]]:
    """Fills summary.gates; returns (Verdict, reasons for a FAIL). No gates is a PASS."""
    groups = {group.group: group for group in summary.groups}
    reasons: list[str] = []
    del summary.gates[:]
    for gate in gates:
        text = gate_text(gate)
        scope = groups.get(gate.group) if gate.group else summary.total
        read = METRICS.get(gate.metric)
        value = read(scope) if scope is not None and read is not None else None
        compare = COMPARISONS.get(gate.comparison)
        passed = value is not None and compare is not None and compare[1](value, gate.threshold)
        summary.gates.append(results_pb2.GateResult(gate=text, observed=value or 0.0, passed=passed))
        if not passed:
            reasons.append(f"{text}: not measured" if value is None else f"{text}: observed {value:.3g}")
    return (runs_pb2.VERDICT_FAIL if reasons else runs_pb2.VERDICT_PASS), reasons
