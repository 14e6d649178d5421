"""Endpoint outcomes in a run's summary, from stored samples: one outcome per planned endpoint,
counted per outcome and SIP code, the callees of failed callers "not called" and no failure."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from callmeter.common import outcomes
from callmeter.v1 import results_pb2
from services.metrics import queries
from services.metrics.batches import RowBuffer
from services.metrics.store import MetricsStore, insert_samples, refresh_rollups
from tests.metrics.helpers import make_batch, run

pytestmark = pytest.mark.timeout(120)

RUN = "run-outcomes"
SECOND = int(time.time()) - 60  # within the store's TTL


def store(client, batches: list[results_pb2.MetricBatch], token: str) -> None:  # type: ignore[no-untyped-def]
    buffer = RowBuffer()
    for batch in batches:
        buffer.add(batch)
    insert_samples(client, buffer.columns, token)
    refresh_rollups(client, buffer.keys())


def counts(summary: results_pb2.GroupSummary) -> dict[tuple[str, int], int]:
    return {(outcomes.outcome_word(c.outcome), c.sip_code): c.endpoints for c in summary.outcomes}


def test_five_wrong_passwords_fail_five_endpoints_not_ten(tmp_path: Path) -> None:
    """50 callers call 50 callees; callers 0-4 have a wrong password (401), so callees 0-4 are never
    called. Caller 50 was planned but never reported; callee 49's end never came."""
    final = [
        make_batch(RUN, "w1", 10, "callers", range(5), SECOND + 1,
                   outcome=outcomes.REGISTRATION_FAILED, outcome_code=401),
        make_batch(RUN, "w1", 11, "callers", range(5, 50), SECOND + 1, outcome=outcomes.SUCCESS),
        make_batch(RUN, "w2", 12, "callees", range(5), SECOND + 1, outcome=outcomes.NOT_CALLED),
        make_batch(RUN, "w2", 13, "callees", range(5, 49), SECOND + 1, outcome=outcomes.SUCCESS),
        make_batch(RUN, "w2", 14, "callees", range(49, 50), SECOND + 1),  # still running: its end was lost
    ]
    running = [make_batch(RUN, "w1", 1, "callers", range(50), SECOND),
               make_batch(RUN, "w2", 2, "callees", range(50), SECOND)]
    planned = {"callers": 51, "callees": 50}
    calls = [results_pb2.GroupCalls(caller="callers", callee="callees")]

    async def body() -> tuple[results_pb2.RunSummary, results_pb2.RunSummary]:
        metrics = MetricsStore(f"chdb://{tmp_path / 'metrics'}", ttl_days=30)
        await metrics.open()
        try:
            # The newest second first: an older second stored later must not undo an outcome.
            await metrics.call(store, final, "final")
            await metrics.call(store, running, "running")
            ended = await metrics.call(queries.run_summary, RUN, ["callers", "callees"], planned, calls)
            in_progress = await metrics.call(queries.run_summary, RUN, ["callers", "callees"])
            return ended, in_progress
        finally:
            await metrics.close()

    summary, in_progress = run(body())
    callers, callees = summary.groups
    assert counts(callers) == {("success", 0): 45, ("registration_failed", 401): 5, ("engine_error", 0): 1}
    assert counts(callees) == {("success", 0): 44, ("not_called", 0): 5, ("engine_error", 0): 1}
    assert (callers.endpoints_failed, callees.endpoints_failed, summary.total.endpoints_failed) == (6, 1, 7)
    assert counts(summary.total) == {("success", 0): 89, ("registration_failed", 401): 5, ("not_called", 0): 5,
                                     ("engine_error", 0): 2}
    assert [c.endpoints for c in summary.total.outcomes] == sorted((c.endpoints for c in summary.total.outcomes),
                                                                   reverse=True)
    # Without the plan (a run in progress) the outcomes are as they stand: nothing invented.
    assert counts(in_progress.groups[1]) == {("success", 0): 44, ("not_called", 0): 5, ("running", 0): 1}


def test_a_callee_not_called_although_its_caller_got_through_is_a_failed_call() -> None:
    reported = {("callers", 0): (outcomes.SUCCESS, 0), ("callers", 1): (outcomes.CALL_FAILED, 404),
                ("callees", 0): (outcomes.NOT_CALLED, 0), ("callees", 1): (outcomes.NOT_CALLED, 0)}
    calls = [results_pb2.GroupCalls(caller="callers", callee="callees")]
    tally = outcomes.tally(reported, {"callers": 2, "callees": 2}, calls)
    # Callee 0's caller connected somewhere: its call was lost on the way. Callee 1's caller failed.
    assert tally["callees"] == {(outcomes.CALL_FAILED, 0): 1, (outcomes.NOT_CALLED, 0): 1}
    # Two callers calling one callee: not called is explained only when both failed.
    two = outcomes.tally({("callers", 0): (outcomes.TIMEOUT, 0), ("callers", 1): (outcomes.SUCCESS, 0),
                          ("callees", 0): (outcomes.NOT_CALLED, 0)}, {"callers": 2, "callees": 1}, calls)
    assert two["callees"] == {(outcomes.CALL_FAILED, 0): 1}
    # No caller of the run calls it (an outside caller that never came): a failed call.
    alone = outcomes.tally({("callees", 0): (outcomes.NOT_CALLED, 0)}, {"callees": 1}, [])
    assert alone["callees"] == {(outcomes.CALL_FAILED, 0): 1}


def test_the_first_failure_decides_an_endpoints_outcome() -> None:
    decided = (outcomes.RUNNING, 0)
    for event in [(outcomes.WARNINGS, 0), (outcomes.CALL_FAILED, 486), (outcomes.TEARDOWN_ERROR, 0),
                  (outcomes.SUCCESS, 0)]:
        decided = outcomes.worse(decided, event)
    assert decided == (outcomes.CALL_FAILED, 486)
    assert outcomes.worse(outcomes.worse((outcomes.RUNNING, 0), (outcomes.WARNINGS, 0)), (outcomes.SUCCESS, 0)) == \
        (outcomes.WARNINGS, 0)
    assert outcomes.outcome_text(outcomes.REGISTRATION_FAILED, 401) == "registration failed (SIP 401)"
    assert outcomes.outcome_text(outcomes.TIMEOUT) == "timeout (no final response)"


def test_a_caller_whose_callee_failed_to_register_is_no_second_failure() -> None:
    """The reverse of the wrong passwords: callee 0 cannot register, so caller 0's call gets 404."""
    reported = {("callees", 0): (outcomes.REGISTRATION_FAILED, 401), ("callees", 1): (outcomes.SUCCESS, 0),
                ("callers", 0): (outcomes.CALL_FAILED, 404), ("callers", 1): (outcomes.SUCCESS, 0),
                ("callers", 2): (outcomes.TIMEOUT, 0)}  # callee 2 never reported: lost by its engine
    calls = [results_pb2.GroupCalls(caller="callers", callee="callees")]
    tally = outcomes.tally(reported, {"callers": 3, "callees": 3}, calls)
    assert tally["callers"] == {(outcomes.CALLEE_FAILED, 0): 2, (outcomes.SUCCESS, 0): 1}
    assert tally["callees"] == {(outcomes.REGISTRATION_FAILED, 401): 1, (outcomes.SUCCESS, 0): 1,
                                (outcomes.ENGINE_ERROR, 0): 1}
    summary = results_pb2.GroupSummary()
    outcomes.set_outcomes(summary, sum(tally.values(), Counter()))
    assert summary.endpoints_failed == 2  # the two callees; their callers' failures are theirs
