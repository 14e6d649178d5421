"""The verdict rule (docs/verdict.md): nothing happened is an ERROR, not measured is not 0, the default gate."""

from __future__ import annotations

from pathlib import Path

import pytest

from callmeter.common.directions import BETTER, HIGHER_IS_BETTER, LOWER_IS_BETTER, SAME, WORSE, direction
from callmeter.common.verdict import DEFAULT_GATE, GATE_METRICS, LOCAL_MODE, METRICS, Baseline, judge, observed_text
from callmeter.v1 import results_pb2, runs_pb2, tests_pb2


def summary(**total: float) -> results_pb2.RunSummary:
    return results_pb2.RunSummary(total=results_pb2.GroupSummary(endpoints=10, **total), groups=[
        results_pb2.GroupSummary(group="callers", endpoints=10, mos_avg=3.1, calls_attempted=1, calls_connected=1)])


def gate(metric: str, comparison: int, threshold: float, group: str = "") -> tests_pb2.QualityGate:
    return tests_pb2.QualityGate(metric=metric, comparison=comparison, threshold=threshold, group=group)


def test_all_gates_hold_is_a_pass() -> None:
    result = summary(mos_avg=4.3, loss_pct=0.1, calls_attempted=10, calls_connected=10)
    verdict, reasons = judge(result, [gate("mos_avg", tests_pb2.COMPARISON_GE, 4.0),
                                      gate("calls_failed_pct", tests_pb2.COMPARISON_EQ, 0)], 10, 0)
    assert verdict == runs_pb2.VERDICT_PASS and reasons == []
    assert [(g.passed, g.observed) for g in result.gates] == [(True, 4.3), (True, 0.0)]


def test_failed_gates_give_reasons_with_observed_values() -> None:
    result = summary(mos_avg=4.3, calls_attempted=10, calls_connected=10)
    verdict, reasons = judge(result, [gate("mos_avg", tests_pb2.COMPARISON_GE, 4.0, group="callers")], 10, 0)
    assert verdict == runs_pb2.VERDICT_FAIL
    assert reasons == ["group callers: mos_avg >= 4: observed 3.1"]


def test_a_gate_on_what_was_not_measured_fails_and_has_no_observed_value() -> None:
    result = summary(calls_attempted=3, calls_failed=3)
    verdict, reasons = judge(result, [gate("mos_avg", tests_pb2.COMPARISON_GE, 1)], 10, 0)
    assert verdict == runs_pb2.VERDICT_FAIL and reasons == ["mos_avg >= 1: not measured"]
    assert not result.gates[0].HasField("observed")


def test_a_measured_zero_is_a_value_not_a_missing_one() -> None:
    result = summary(calls_attempted=3, calls_connected=3, loss_pct=0.0)
    verdict, _ = judge(result, [gate("loss_pct", tests_pb2.COMPARISON_LE, 0)], 10, 0)
    assert verdict == runs_pb2.VERDICT_PASS and result.gates[0].HasField("observed")


def test_no_endpoint_ran_is_an_error_not_a_pass_even_without_gates() -> None:
    # The worker refused the assignment (a credential it lacks): no sample at all.
    result = results_pb2.RunSummary(total=results_pb2.GroupSummary())
    verdict, reasons = judge(result, [], 4, 4)
    assert verdict == runs_pb2.VERDICT_ERROR
    assert reasons == ["no endpoint ran: none of the 4 planned endpoints reported a measurement"]
    verdict, _ = judge(result, [gate("mos_avg", tests_pb2.COMPARISON_GE, 4)], 4, 4)
    assert verdict == runs_pb2.VERDICT_ERROR and not result.gates, "gates are not judged on nothing"


def test_endpoints_that_attempted_nothing_are_an_error() -> None:
    verdict, reasons = judge(summary(), [], 10, 0)
    assert verdict == runs_pb2.VERDICT_ERROR and "no call and no registration" in reasons[0]
    verdict, _ = judge(summary(register_attempted=10, registered=10), [], 10, 0)
    assert verdict == runs_pb2.VERDICT_PASS, "a registration-only run that registered passes"


def test_without_gates_a_failed_endpoint_fails_the_default_gate() -> None:
    result = summary(register_attempted=10, registered=5)
    verdict, reasons = judge(result, [], 10, 5)
    assert verdict == runs_pb2.VERDICT_FAIL
    assert reasons == [f"{DEFAULT_GATE}: 5 of 10 endpoints failed"]
    assert [(g.gate, g.observed, g.passed) for g in result.gates] == [(DEFAULT_GATE, 5.0, False)]
    verdict, _ = judge(summary(register_attempted=10, registered=10), [], 10, 0)
    assert verdict == runs_pb2.VERDICT_PASS


def test_every_gate_metric_reads_a_summary_field() -> None:
    assert set(METRICS) == GATE_METRICS
    fields = {f.name for f in results_pb2.GroupSummary.DESCRIPTOR.fields}
    assert {metric for metric in GATE_METRICS if not metric.endswith("_pct")} <= fields
    measured = results_pb2.GroupSummary(endpoints=4, registered=4, calls_attempted=2, calls_connected=2, mos_avg=4,
                                        mos_min=4, jitter_ms_p95=1, loss_pct=0, rtt_ms_p95=1, setup_ms_p95=1,
                                        completeness_pct=100, overloaded_s=0,
                                        outcomes=[results_pb2.OutcomeCount(outcome=1, endpoints=4)])
    assert all(isinstance(read(measured), (int, float)) for read in METRICS.values())
    assert all(read(results_pb2.GroupSummary()) is None for name, read in METRICS.items() if name != "registered_pct")


def test_incomplete_results_are_an_error_and_a_gate_can_ask_for_more() -> None:
    result = summary(mos_avg=4.3, calls_attempted=10, calls_connected=10, completeness_pct=98.0)
    result.groups[0].completeness_pct = 98.0
    verdict, reasons = judge(result, [gate("mos_avg", tests_pb2.COMPARISON_GE, 4.0)], 10, 0)
    assert verdict == runs_pb2.VERDICT_ERROR and not result.gates
    assert reasons == ["results incomplete: 98.0 % of the run's endpoint-seconds were stored, less than 99 % "
                       "(group callers: 98.0 %); not judged"]
    assert judge(result, [], 10, 0, completeness_min_pct=95)[0] == runs_pb2.VERDICT_PASS
    result.total.completeness_pct = 99.5
    verdict, reasons = judge(result, [gate("completeness_pct", tests_pb2.COMPARISON_GE, 99.9)], 10, 0)
    assert verdict == runs_pb2.VERDICT_FAIL and reasons == ["completeness_pct >= 99.9: observed 99.5"]


def test_an_overloaded_worker_is_named_in_the_reasons_whatever_the_verdict_and_a_gate_can_fail_it() -> None:
    result = summary(mos_avg=4.3, calls_attempted=10, calls_connected=10, overloaded_s=42)
    result.workers.add(worker="w1", overloaded_s=42, engine_lag_ms_max=2300.4, worker_lag_ms_max=3, engine_cpu_pct_max=99)
    result.workers.add(worker="w2")  # measured, never overloaded: not named
    verdict, reasons = judge(result, [gate("mos_avg", tests_pb2.COMPARISON_GE, 4.0)], 10, 0)
    assert verdict == runs_pb2.VERDICT_PASS
    assert reasons == ["worker w1 was overloaded for 42 s (engine loop late by up to 2300 ms, supervisor by up to 3 ms, "
                       "an engine at up to 99 % CPU): results may reflect the load generator, not the system under test"]
    verdict, reasons = judge(result, [gate("overloaded_s", tests_pb2.COMPARISON_EQ, 0)], 10, 0)
    assert verdict == runs_pb2.VERDICT_FAIL and reasons[0] == "overloaded_s == 0: observed 42"


def relative(metric: str, group: str = "", **limit: float) -> tests_pb2.QualityGate:
    return tests_pb2.QualityGate(metric=metric, group=group, baseline=tests_pb2.BaselineLimit(**limit))


def baseline_run(**total: float) -> Baseline:
    return Baseline("b" * 32, summary(**total), chosen="last-pass: the newest earlier run of this test that passed")


def test_a_drop_within_the_limit_holds_and_one_beyond_it_fails_with_the_baseline_and_the_change() -> None:
    base = baseline_run(mos_avg=4.3, calls_attempted=10, calls_connected=10)
    result = summary(mos_avg=4.25, calls_attempted=10, calls_connected=10)
    verdict, reasons = judge(result, [relative("mos_avg", max_drop=0.1)], 10, 0, baseline=base)
    assert verdict == runs_pb2.VERDICT_PASS
    # The gate's text is the same in every run (JUnit names its testcase so); the baseline's figure beside it.
    assert [(g.gate, g.observed, g.baseline, g.passed) for g in result.gates] == [
        ("mos_avg at most 0.1 below the baseline", 4.25, 4.3, True)]
    assert observed_text(result.gates[0]) == "observed 4.25 (baseline 4.3)"
    assert reasons == [f"baseline: run {'b' * 32} (last-pass: the newest earlier run of this test that passed)"], \
        "the run's reasons name the baseline run, whatever the verdict"
    result = summary(mos_avg=4.12, calls_attempted=10, calls_connected=10)
    verdict, reasons = judge(result, [relative("mos_avg", max_drop=0.1)], 10, 0, baseline=base)
    assert verdict == runs_pb2.VERDICT_FAIL
    assert reasons[0] == "mos_avg at most 0.1 below the baseline: observed 4.12, baseline 4.3 (change -0.18)"
    assert [(g.observed, g.passed) for g in result.gates] == [(4.12, False)]
    # An absolute threshold of 4.0 would have let both runs pass: the relative gate is what catches it.
    assert judge(summary(mos_avg=4.12, calls_attempted=1), [tests_pb2.QualityGate(
        metric="mos_avg", comparison=tests_pb2.COMPARISON_GE, threshold=4.0)], 10, 0)[0] == runs_pb2.VERDICT_PASS


def test_a_drop_exactly_at_the_limit_holds_despite_floating_point() -> None:
    result = summary(mos_avg=4.1, calls_attempted=1)
    assert 4.2 - 4.1 > 0.1, "what the comparison must not trip over"
    verdict, _ = judge(result, [relative("mos_avg", max_drop=0.1)], 10, 0, baseline=baseline_run(mos_avg=4.2))
    assert verdict == runs_pb2.VERDICT_PASS


def test_a_rise_in_percent_of_the_baseline_for_a_group() -> None:
    base = baseline_run(calls_attempted=1)
    base.summary.groups[0].setup_ms_p95 = 200.0  # type: ignore[union-attr]
    gates = [relative("setup_ms_p95", group="callers", max_rise_pct=20)]
    result = summary(calls_attempted=1)
    result.groups[0].setup_ms_p95 = 235.0
    verdict, _ = judge(result, gates, 10, 0, baseline=base)
    assert verdict == runs_pb2.VERDICT_PASS
    assert result.gates[0].gate == "group callers: setup_ms_p95 at most 20 % above the baseline"
    result.groups[0].setup_ms_p95 = 260.0
    verdict, reasons = judge(result, gates, 10, 0, baseline=base)
    assert verdict == runs_pb2.VERDICT_FAIL
    assert reasons[0] == ("group callers: setup_ms_p95 at most 20 % above the baseline: observed 260, baseline 200 "
                          "(change +30 %)")
    result.groups[0].setup_ms_p95 = 150.0  # better: a rise limit does not mind a drop
    assert judge(result, gates, 10, 0, baseline=base)[0] == runs_pb2.VERDICT_PASS


def test_a_percent_of_a_zero_baseline_allows_no_rise() -> None:
    base = baseline_run(calls_attempted=10, calls_failed=0)
    gates = [relative("calls_failed_pct", max_rise_pct=50)]
    assert judge(summary(calls_attempted=10, calls_failed=0), gates, 10, 0, baseline=base)[0] == runs_pb2.VERDICT_PASS
    verdict, reasons = judge(summary(calls_attempted=10, calls_failed=1), gates, 10, 0, baseline=base)
    assert verdict == runs_pb2.VERDICT_FAIL
    assert reasons[0] == "calls_failed_pct at most 50 % above the baseline: observed 10, baseline 0 (change +10)"


def test_not_measured_in_this_run_or_in_the_baseline_fails_never_as_zero() -> None:
    gates = [relative("mos_avg", max_drop=0.1)]
    result = summary(calls_attempted=3, calls_failed=3)  # no MOS: no call connected
    verdict, reasons = judge(result, gates, 10, 0, baseline=baseline_run(mos_avg=4.3))
    assert verdict == runs_pb2.VERDICT_FAIL and reasons[0] == "mos_avg at most 0.1 below the baseline: not measured"
    assert not result.gates[0].HasField("observed")
    result = summary(mos_avg=4.3, calls_attempted=3)
    verdict, reasons = judge(result, gates, 10, 0, baseline=baseline_run(calls_attempted=3))
    assert verdict == runs_pb2.VERDICT_FAIL
    assert reasons[0] == f"mos_avg at most 0.1 below the baseline: not measured in baseline run {'b' * 32}"
    assert result.gates[0].observed == 4.3
    verdict, reasons = judge(summary(mos_avg=4.3, calls_attempted=3), [relative("mos_avg", group="callees",
                                                                                max_drop=0.1)],
                             10, 0, baseline=baseline_run(mos_avg=4.3))
    assert verdict == runs_pb2.VERDICT_FAIL and reasons[0].endswith(": not measured in baseline run " + "b" * 32), \
        "a group neither run has"


def test_without_a_baseline_run_a_relative_gate_fails_and_says_why() -> None:
    gates = [tests_pb2.QualityGate(metric="mos_avg", comparison=tests_pb2.COMPARISON_GE, threshold=4.0),
             relative("mos_avg", max_drop=0.1)]
    result = summary(mos_avg=4.3, calls_attempted=1)
    verdict, reasons = judge(result, gates, 10, 0)
    assert verdict == runs_pb2.VERDICT_FAIL, "not a silent pass"
    assert reasons == ["mos_avg at most 0.1 below the baseline: no baseline run"]
    assert [g.passed for g in result.gates] == [True, False]
    missing = Baseline(missing="no baseline run: no earlier run of this test finished with a PASS")
    assert judge(result, gates, 10, 0, baseline=missing)[1] == [
        "mos_avg at most 0.1 below the baseline: no baseline run: no earlier run of this test finished with a PASS"]
    assert judge(result, gates, 10, 0, baseline=LOCAL_MODE)[1] == [
        "mos_avg at most 0.1 below the baseline: no baseline in local mode"]


def test_a_run_that_is_not_judged_names_no_baseline() -> None:
    verdict, reasons = judge(summary(), [relative("mos_avg", max_drop=0.1)], 10, 0, baseline=baseline_run(mos_avg=4))
    assert verdict == runs_pb2.VERDICT_ERROR and len(reasons) == 1 and "baseline" not in reasons[0]


def test_every_gate_metric_has_one_good_direction() -> None:
    assert HIGHER_IS_BETTER | LOWER_IS_BETTER == GATE_METRICS and not HIGHER_IS_BETTER & LOWER_IS_BETTER


@pytest.mark.parametrize(("change", "higher_better", "said"), [
    (0.2, True, BETTER), (-0.2, True, WORSE), (0.2, False, WORSE), (-0.2, False, BETTER), (0.0, True, SAME),
    (4.2 - 4.1 - 0.1, False, SAME)])
def test_direction_of_a_change(change: float, higher_better: bool, said: str) -> None:
    assert direction(change, higher_better) == said


def test_the_documents_name_the_metrics_that_are_better_higher() -> None:
    """The contract's comment (docs/test-file.md) and docs/verdict.md repeat directions.py's list."""
    root = Path(__file__).resolve().parents[2]
    limit = (root / "docs" / "test-file.md").read_text().split("## BaselineLimit")[1].split("\n\n")[1]
    verdict_doc = (root / "docs" / "verdict.md").read_text().split("## Baselines")[1].split("**The limit**")[1]
    for text in (limit, verdict_doc):
        assert {metric for metric in GATE_METRICS if metric in text.split("for the others")[0]} == HIGHER_IS_BETTER
