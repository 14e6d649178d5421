"""Which way is better for each run summary figure: the one rule that `runs compare`, relative
quality gates (callmeter/common/verdict.py) and anything else that says "better" or "worse" use.

A MOS, completeness and the shares of connected calls and of registered endpoints are better
higher; every other gate metric (jitter, loss, RTT, setup time, failures, overloaded seconds) is
better lower. Of the endpoints' outcomes, more successes are better and more of any other outcome
worse. (Per-endpoint catalog metrics have their own rule, callmeter/catalog.py LOW_IS_WORSE.)
"""

from __future__ import annotations

import math

from callmeter.common.outcomes import SUCCESS

#: Gate metrics (callmeter/common/verdict.py METRICS) of which a higher value is better.
HIGHER_IS_BETTER: frozenset[str] = frozenset({"mos_avg", "mos_min", "completeness_pct", "calls_connected_pct",
                                              "registered_pct"})
#: Gate metrics of which a lower value is better.
LOWER_IS_BETTER: frozenset[str] = frozenset({"jitter_ms_p95", "loss_pct", "rtt_ms_p95", "setup_ms_p95",
                                             "overloaded_s", "calls_failed_pct", "endpoints_failed",
                                             "endpoints_failed_pct"})

BETTER, WORSE, SAME = "better", "worse", "same"


def higher_is_better(metric: str) -> bool:
    """True for a gate metric that is better higher; KeyError for a name that is no gate metric."""
    if metric in HIGHER_IS_BETTER:
        return True
    if metric in LOWER_IS_BETTER:
        return False
    raise KeyError(metric)


def outcome_higher_is_better(outcome: int) -> bool:
    """More endpoints of this outcome are better only for success."""
    return outcome == SUCCESS


def direction(change: float, higher_better: bool) -> str:
    """"better", "worse" or "same" for a change (new − old) of a figure that is better higher or lower."""
    if change == 0 or math.isclose(change, 0.0, abs_tol=1e-9):
        return SAME
    return BETTER if (change > 0) == higher_better else WORSE
