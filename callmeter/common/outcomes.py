"""Endpoint outcomes: how each endpoint's scenario ended, exactly one per endpoint per run.

The engine decides an endpoint's outcome as it goes (services/worker/engine/scenario.py) and
sends it in every sample; the newest stored sample holds how the endpoint ended. A run's summary
counts endpoints per outcome and SIP code (GroupSummary.outcomes). The rules, shared by the
engine, metrics-ingest, the orchestrator and local mode:
- the first failure decides; warnings give way to a failure, a failure to nothing;
- an endpoint that never reported its end (still UNSPECIFIED in its newest sample), or that
  never reported at all, is an engine error: the platform, not the system under test, lost it;
- a callee is NOT_CALLED when the calls it expected did not come; that is not a failure of its
  own when every caller that was to call it failed first (their failure is counted once, at the
  callers), and a call failure otherwise (the calls were lost on the way: ``resolve_not_called``);
- the other way round, a caller whose call failed or timed out while the callee it calls had
  failed to register, or was lost by its engine, is CALLEE_FAILED: that failure is the callee's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from callmeter.common.enum_words import word
from callmeter.common.start_waves import called_group
from callmeter.v1 import common_pb2, results_pb2, tests_pb2

RUNNING = common_pb2.ENDPOINT_OUTCOME_UNSPECIFIED
SUCCESS = common_pb2.ENDPOINT_OUTCOME_SUCCESS
WARNINGS = common_pb2.ENDPOINT_OUTCOME_WARNINGS
REGISTRATION_FAILED = common_pb2.ENDPOINT_OUTCOME_REGISTRATION_FAILED
CALL_FAILED = common_pb2.ENDPOINT_OUTCOME_CALL_FAILED
NEGOTIATION_FAILED = common_pb2.ENDPOINT_OUTCOME_NEGOTIATION_FAILED
TIMEOUT = common_pb2.ENDPOINT_OUTCOME_TIMEOUT
TEARDOWN_ERROR = common_pb2.ENDPOINT_OUTCOME_TEARDOWN_ERROR
NOT_CALLED = common_pb2.ENDPOINT_OUTCOME_NOT_CALLED
ENGINE_ERROR = common_pb2.ENDPOINT_OUTCOME_ENGINE_ERROR
CALLEE_FAILED = common_pb2.ENDPOINT_OUTCOME_CALLEE_FAILED

#: Outcomes that count as a failed endpoint (the default gate, endpoints_failed).
FAILED = frozenset({REGISTRATION_FAILED, CALL_FAILED, NEGOTIATION_FAILED, TIMEOUT, TEARDOWN_ERROR, ENGINE_ERROR})
#: A callee's outcomes that no call to it can get past.
UNREACHABLE = frozenset({REGISTRATION_FAILED, ENGINE_ERROR})
#: A caller's outcomes a callee that failed first explains.
CALL_FAILURES = frozenset({CALL_FAILED, TIMEOUT})
#: Final codes of a call refused for its offer: no common codec, SRTP or media setting.
NEGOTIATION_CODES = frozenset({488, 606})

_PHRASES = {
    SUCCESS: "success",
    WARNINGS: "completed with warnings",
    REGISTRATION_FAILED: "registration failed",
    CALL_FAILED: "call failed",
    NEGOTIATION_FAILED: "negotiation failed",
    TIMEOUT: "timeout (no final response)",
    TEARDOWN_ERROR: "teardown error",
    NOT_CALLED: "not called (its callers failed first)",
    ENGINE_ERROR: "worker/engine error",
    CALLEE_FAILED: "its callee failed first",
}


def outcome_word(outcome: int) -> str:
    """"registration_failed": the outcome as `--json` and JUnit name it."""
    return word(common_pb2.EndpointOutcome, outcome) if outcome != RUNNING else "running"


def outcome_text(outcome: int, sip_code: int = 0) -> str:
    """"registration failed (SIP 401)": the outcome as tables and reasons say it."""
    phrase = _PHRASES.get(outcome, outcome_word(outcome))
    return f"{phrase} (SIP {sip_code})" if sip_code else phrase


def worse(current: tuple[int, int], new: tuple[int, int]) -> tuple[int, int]:
    """The (outcome, SIP code) that stands when ``new`` happens after ``current``: the first
    failure; else warnings; else the newest."""
    decided = FAILED | {NOT_CALLED}
    if current[0] in decided:
        return current
    if new[0] in decided or current[0] != WARNINGS:
        return new
    return current


def ended(outcome: int) -> int:
    """An endpoint's outcome as counted once the run is over: one that never reported its end
    was lost by the load generator."""
    return ENGINE_ERROR if outcome == RUNNING else outcome


Endpoint = tuple[str, int]  # (group, index)
Decided = tuple[int, int]  # (EndpointOutcome, SIP code)


def resolve_not_called(outcomes: Mapping[Endpoint, Decided], planned: Mapping[str, int],
                       calls: Iterable[results_pb2.GroupCalls]) -> dict[Endpoint, Decided]:
    """The outcomes with each NOT_CALLED callee kept as such when every caller that was to call it
    (caller i calls callee i mod the callee group's size, services/worker/engine/plan.py) failed,
    and made a CALL_FAILED otherwise: its callers got through, its calls did not; and each caller
    whose call failed to a callee that had failed first made CALLEE_FAILED. A planned endpoint
    missing from ``outcomes`` never reported: an engine error."""
    resolved = dict(outcomes)
    callers_of: dict[Endpoint, list[Endpoint]] = {}
    for call in calls:
        callees = planned.get(call.callee, 0)
        for index in range(planned.get(call.caller, 0) if callees else 0):
            callers_of.setdefault((call.callee, index % callees), []).append((call.caller, index))
    for key, callers in callers_of.items():
        outcome = outcomes.get(key, (ENGINE_ERROR, 0))[0]
        if outcome == NOT_CALLED and not all(outcomes.get(c, (ENGINE_ERROR, 0))[0] in FAILED for c in callers):
            resolved[key] = (CALL_FAILED, 0)
        elif outcome in UNREACHABLE:
            for caller in callers:
                if outcomes.get(caller, (RUNNING, 0))[0] in CALL_FAILURES:
                    resolved[caller] = (CALLEE_FAILED, 0)
    for key, (outcome, _code) in outcomes.items():
        if outcome == NOT_CALLED and key not in callers_of:  # no caller of the run was to call it
            resolved[key] = (CALL_FAILED, 0)
    return resolved


def tally(reported: Mapping[Endpoint, Decided], planned: Mapping[str, int] | None,
          calls: Iterable[results_pb2.GroupCalls] = ()) -> dict[str, Counter[Decided]]:
    """Group → endpoints per (outcome, SIP code). With the run's plan, as the run ended: every
    planned endpoint once (ended(), resolve_not_called(); one that never reported is an engine
    error). Without it (a run in progress), the reported outcomes as they stand."""
    counts: dict[str, Counter[Decided]] = {}
    if planned is None:
        for (group, _index), decided in reported.items():
            counts.setdefault(group, Counter())[decided] += 1
        return counts
    resolved = resolve_not_called({key: (ended(o), code) for key, (o, code) in reported.items()}, planned, calls)
    for group, count in planned.items():
        counts[group] = Counter(resolved.get((group, index), (ENGINE_ERROR, 0)) for index in range(count))
    for (group, index), decided in resolved.items():
        if index >= planned.get(group, 0):  # reported, though not planned so: still counted once
            counts.setdefault(group, Counter())[decided] += 1
    return counts


def set_outcomes(summary: results_pb2.GroupSummary, counts: Counter[Decided]) -> None:
    """GroupSummary.outcomes (most endpoints first) and endpoints_failed from a tally."""
    del summary.outcomes[:]
    for (outcome, code), endpoints in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        summary.outcomes.append(results_pb2.OutcomeCount(outcome=outcome, sip_code=code, endpoints=endpoints))
    summary.endpoints_failed = sum(n for (outcome, _), n in counts.items() if outcome in FAILED)


def call_map(spec: tests_pb2.TestSpec) -> list[results_pb2.GroupCalls]:
    """Which group of the spec calls which ("group:NAME" call URIs)."""
    return [results_pb2.GroupCalls(caller=group.name, callee=called) for group in spec.groups
            if group.role == common_pb2.ENDPOINT_ROLE_CALLER and (called := called_group(group)) is not None]


def outcomes_text(summary: results_pb2.GroupSummary) -> str:
    """"45 success, 5 registration failed (SIP 401)": a summary's outcomes as tables say them."""
    return ", ".join(f"{count.endpoints} {outcome_text(count.outcome, count.sip_code)}" for count in summary.outcomes)


def outcomes_json(summary: results_pb2.GroupSummary) -> list[dict[str, object]]:
    """[{outcome: "call_failed", sip_code: 486 or null, endpoints: 3}]: a summary's outcomes for --json."""
    return [{"outcome": outcome_word(count.outcome), "sip_code": count.sip_code or None, "endpoints": count.endpoints}
            for count in summary.outcomes]
