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
4. A relative gate (QualityGate.baseline) compares the figure with the same figure of the
   test's baseline run (``Baseline``: the orchestrator finds it, local mode has none): it fails
   with "no baseline run" when there is none, "not measured" when either run lacks the figure.
FAIL if a gate did not hold, else PASS. Cancelled and timed-out runs are not judged (ERROR).
Whatever the verdict, a worker that was overloaded adds a reason saying so
(callmeter/common/generator_load.py); a gate on overloaded_s makes it fail the run.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
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


#: TestSpec.baseline: the newest earlier run of the test that finished with a PASS.
LAST_PASS = "last-pass"


@dataclass(frozen=True)
class Baseline:
    """The run a test's relative gates are judged against, or why there is none."""

    run_id: str = ""
    #: Its stored summary; None when there is no baseline run.
    summary: results_pb2.RunSummary | None = None
    #: Why there is none, as each relative gate's reason says it.
    missing: str = "no baseline run"
    #: How it was chosen, for the run's reasons: "last-pass: the newest earlier run of this test that passed".
    chosen: str = ""


#: No baseline run was looked for or found.
NO_BASELINE = Baseline()
#: `callmeter worker --local` has no runs to compare with.
LOCAL_MODE = Baseline(missing="no baseline in local mode")


def is_relative(gate: tests_pb2.QualityGate) -> bool:
    """Whether the gate is judged against the baseline run rather than a threshold."""
    return gate.HasField("baseline")


def gate_text(gate: tests_pb2.QualityGate) -> str:
    """The gate as written, the same in every run (JUnit names its testcase so): "mos_avg >= 4",
    "group callers: loss_pct < 1", "setup_ms_p95 at most 20 % above the baseline"."""
    if is_relative(gate):
        kind = gate.baseline.WhichOneof("limit") or "max_rise"
        amount = getattr(gate.baseline, kind)
        limit = f"{amount:g} %" if kind.endswith("_pct") else f"{amount:g}"
        side = "below" if kind.startswith("max_drop") else "above"
        text = f"{gate.metric} at most {limit} {side} the baseline"
    else:
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
          endpoints_failed: int, completeness_min_pct: float = COMPLETENESS_MIN_PCT,
          baseline: Baseline = NO_BASELINE) -> tuple[int, list[str]]:
    """Fills summary.gates; returns (Verdict, reasons for an ERROR or a FAIL, the baseline run the
    relative gates were judged against, and the generator's overload whatever the verdict)."""
    verdict, reasons = _judge(summary, gates, endpoints_planned, endpoints_failed, completeness_min_pct, baseline)
    return verdict, reasons + load_reasons(summary)


def _judge(summary: results_pb2.RunSummary, gates: list[tests_pb2.QualityGate], endpoints_planned: int,
           endpoints_failed: int, completeness_min_pct: float, baseline: Baseline) -> tuple[int, list[str]]:
    del summary.gates[:]
    why_not = nothing_happened(summary, endpoints_planned) or incomplete(summary, completeness_min_pct)
    if why_not is not None:
        return runs_pb2.VERDICT_ERROR, [why_not]
    if not gates:
        passed = endpoints_failed == 0
        summary.gates.append(results_pb2.GateResult(gate=DEFAULT_GATE, observed=endpoints_failed, passed=passed))
        reasons = [] if passed else [f"{DEFAULT_GATE}: {endpoints_failed} of {endpoints_planned} endpoints failed"]
        return (runs_pb2.VERDICT_PASS if passed else runs_pb2.VERDICT_FAIL), reasons
    reasons = []
    for gate in gates:
        value, text, base = _figure(summary, gate), gate_text(gate), None
        if is_relative(gate):
            passed, why, base = _relative(gate, value, baseline)
        else:
            why = ""
            compare = COMPARISONS.get(gate.comparison)
            passed = value is not None and compare is not None and compare[1](value, gate.threshold)
        result = results_pb2.GateResult(gate=text, passed=passed)
        if value is not None:
            result.observed = value
        if base is not None:
            result.baseline = base
        summary.gates.append(result)
        if not passed:
            why = why or ("not measured" if value is None else f"observed {value:.3g}")
            reasons.append(f"{text}: {why}")
    verdict = runs_pb2.VERDICT_FAIL if reasons else runs_pb2.VERDICT_PASS
    if baseline.summary is not None and any(is_relative(gate) for gate in gates):
        reasons.append(f"baseline: run {baseline.run_id}" + (f" ({baseline.chosen})" if baseline.chosen else ""))
    return verdict, reasons


def _figure(summary: results_pb2.RunSummary, gate: tests_pb2.QualityGate) -> float | None:
    """The gate's metric in the summary, for its group or the whole run; None when not measured."""
    scope = next((g for g in summary.groups if g.group == gate.group), None) if gate.group else summary.total
    read = METRICS.get(gate.metric)
    return read(scope) if scope is not None and read is not None else None


def _relative(gate: tests_pb2.QualityGate, value: float | None,
              baseline: Baseline) -> tuple[bool, str, float | None]:
    """(whether it held, why not, the baseline's figure) of a gate relative to the baseline run."""
    if baseline.summary is None:
        return False, baseline.missing, None
    base = _figure(baseline.summary, gate)
    if base is None:
        return False, f"not measured in baseline run {baseline.run_id}", None
    if value is None:
        return False, "not measured", base
    kind = gate.baseline.WhichOneof("limit") or ""
    change = value - base
    in_pct = kind.endswith("_pct") and base != 0
    shown = round(100 * change / abs(base), 1) if in_pct else round(change, 3)
    shown_text = (f"{shown:+g}" if shown else "0") + (" %" if in_pct else "")
    moved = -change if kind.startswith("max_drop") else change  # toward the side the gate limits
    limit = getattr(gate.baseline, kind) if kind else 0.0
    allowed = limit * abs(base) / 100 if kind.endswith("_pct") else limit
    passed = bool(kind) and (moved <= allowed or math.isclose(moved, allowed, rel_tol=1e-9, abs_tol=1e-12))
    return passed, f"observed {value:.3g}, baseline {base:g} (change {shown_text})", base


def observed_text(gate: results_pb2.GateResult) -> str:
    """"observed 4.2", "observed 4.12 (baseline 4.3)" or "not measured", as every output words it."""
    value, base = measured(gate, "observed"), measured(gate, "baseline")
    if value is None:
        return "not measured"
    return f"observed {value:g}" + (f" (baseline {base:g})" if base is not None else "")
