"""Placement of endpoints on workers."""

from __future__ import annotations

import pytest

from callmeter.common.errors import CallmeterError, ErrorCode
from callmeter.v1 import common_pb2, tests_pb2
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


def sites(callees: str = "b") -> tests_pb2.TestSpec:
    """Callers on site=a, callees on site=callees, under the test's selector tier=lab."""
    placed = spec(("callers", 3, ("PCMU",), UDP), ("callees", 3, ("PCMU",), UDP), selector={"tier": "lab"})
    placed.groups[0].worker_selector.add(key="site", value="a")
    placed.groups[1].worker_selector.add(key="site", value=callees)
    return placed


def test_each_group_goes_to_the_workers_of_its_own_selector() -> None:
    """The roomiest worker would take both groups, and one of the right site but not of the test's tier
    the callers."""
    workers = [worker("site-a", 10, site="a", tier="lab"), worker("site-b", 20, site="b", tier="lab"),
               worker("site-a-prod", 50, site="a", tier="prod")]
    assert place(sites(), workers) == [Slice("site-a", "callers", 0, 3), Slice("site-b", "callees", 0, 3)]


def test_a_group_whose_selector_no_worker_matches_is_the_shortfall_naming_it_and_its_labels() -> None:
    with pytest.raises(CallmeterError) as error:
        place(sites(callees="c"), [worker("site-a", 10, site="a", tier="lab"), worker("site-b", 10, site="b", tier="lab")])
    assert error.value.code == ErrorCode.RESOURCE_EXHAUSTED
    assert error.value.detail == (
        "not enough capacity: group 'callees': 3 of 3 endpoints found no worker with free capacity and labels "
        "tier=lab, site=c (2 online; site-b lacks label site=c, site-a lacks label site=c)")
