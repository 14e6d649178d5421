"""Placement of endpoints on workers, and the verdict from quality gates."""

from __future__ import annotations

import pytest

from callmeter.common.errors import CallmeterError, ErrorCode
from callmeter.common.verdict import judge
from callmeter.v1 import common_pb2, results_pb2, runs_pb2, tests_pb2
from services.orchestrator.placement import Candidate, Slice, place

UDP, TLS = common_pb2.TRANSPORT_UDP, common_pb2.TRANSPORT_TLS


def worker(name: str, free: int, codecs: tuple[str, ...] = ("PCMU/8000/1", "PCMA/8000/1"),
           transports: tuple[int, ...] = (UDP,), **labels: str) -> Candidate:
    return Candidate(worker_id=name, name=name, free=free, codecs=list(codecs), transports=set(transports),
                     labels=labels)


def spec(*groups: tuple[str, int, tuple[str, ...], int], selector: dict[str, str] | None = None) -> tests_pb2.TestSpec:
    return tests_pb2.TestSpec(
        groups=[tests_pb2.EndpointGroup(name=n, count=c, codecs=list(k), transport=t) for n, c, k, t in groups],
        worker_selector=[common_pb2.Label(key=k, value=v) for k, v in (selector or {}).items()])


def test_a_group_fills_the_roomiest_worker_first_and_spills_over() -> None:
    slices = place(spec(("a", 10, ("PCMU",), UDP)), [worker("small", 4), worker("big", 8)])
    assert slices == [Slice("big", "a", 0, 8), Slice("small", "a", 8, 2)]


def test_workers_without_the_codec_transport_or_labels_are_passed_over() -> None:
    workers = [worker("no-g722", 50), worker("no-tls", 50, codecs=("G722/16000/1",)),
               worker("wrong-region", 50, codecs=("G722/16000/1",), transports=(TLS,), region="us"),
               worker("ok", 5, codecs=("G722/16000/1",), transports=(UDP, TLS), region="eu")]
    slices = place(spec(("a", 5, ("G722",), TLS), selector={"region": "eu"}), workers)
    assert slices == [Slice("ok", "a", 0, 5)]


def test_shortfall_is_stated_per_group_with_reasons() -> None:
    with pytest.raises(CallmeterError) as error:
        place(spec(("a", 3, ("PCMU",), UDP), ("b", 6, ("opus",), UDP)), [worker("w", 4)])
    assert error.value.code == ErrorCode.RESOURCE_EXHAUSTED
    assert "group 'b': 6 of 6 endpoints" in error.value.detail
    assert "w lacks codec opus" in error.value.detail
    assert "group 'a'" not in error.value.detail


def summary(**total: float) -> results_pb2.RunSummary:
    return results_pb2.RunSummary(total=results_pb2.GroupSummary(**total),
                                  groups=[results_pb2.GroupSummary(group="callers", mos_avg=3.1, calls_connected=1)])


def gate(metric: str, comparison: int, threshold: float, group: str = "") -> tests_pb2.QualityGate:
    return tests_pb2.QualityGate(metric=metric, comparison=comparison, threshold=threshold, group=group)


def test_all_gates_hold_is_a_pass() -> None:
    result = summary(mos_avg=4.3, loss_pct=0.1, calls_attempted=10, calls_connected=10)
    verdict, reasons = judge(result, [gate("mos_avg", tests_pb2.COMPARISON_GE, 4.0),
                                      gate("calls_failed_pct", tests_pb2.COMPARISON_EQ, 0)])
    assert verdict == runs_pb2.VERDICT_PASS and reasons == []
    assert [g.passed for g in result.gates] == [True, True]


def test_failed_gates_give_reasons_with_observed_values() -> None:
    result = summary(mos_avg=4.3, calls_attempted=10, calls_connected=10)
    verdict, reasons = judge(result, [gate("mos_avg", tests_pb2.COMPARISON_GE, 4.0, group="callers")])
    assert verdict == runs_pb2.VERDICT_FAIL
    assert reasons == ["group callers: mos_avg >= 4: observed 3.1"]


def test_a_gate_on_what_was_not_measured_fails() -> None:
    verdict, reasons = judge(summary(calls_attempted=0), [gate("mos_avg", tests_pb2.COMPARISON_GE, 1)])
    assert verdict == runs_pb2.VERDICT_FAIL and reasons == ["mos_avg >= 1: not measured"]


def test_every_gate_metric_reads_a_summary_field() -> None:
    from callmeter.common.verdict import GATE_METRICS, METRICS

    assert set(METRICS) == GATE_METRICS
    fields = {f.name for f in results_pb2.GroupSummary.DESCRIPTOR.fields}
    assert {metric for metric in GATE_METRICS if not metric.endswith("_pct")} <= fields
    measured = results_pb2.GroupSummary(endpoints=4, registered=4, calls_attempted=2, calls_connected=2)
    assert all(isinstance(read(measured), float) for read in METRICS.values())
