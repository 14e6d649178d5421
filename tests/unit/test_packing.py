"""Endpoints packed into engine processes; RTP port ranges split between engines; the uplink."""

from __future__ import annotations

import pytest

from callmeter.v1 import common_pb2, results_pb2, tests_pb2, workers_pb2
from services.worker.packing import PackingError, pack, rtp_ranges
from services.worker.uplink import Uplink


def slices(*pieces: tuple[str, int, int]) -> list[workers_pb2.EndpointSlice]:
    return [workers_pb2.EndpointSlice(group=g, first_index=f, count=c) for g, f, c in pieces]


def as_tuples(engines: list[list[workers_pb2.EndpointSlice]]) -> list[list[tuple[str, int, int]]]:
    return [[(s.group, s.first_index, s.count) for s in engine] for engine in engines]


def test_groups_with_the_same_codecs_share_engines_up_to_the_limit() -> None:
    spec = tests_pb2.TestSpec(groups=[tests_pb2.EndpointGroup(name="a", codecs=["PCMU"]),
                                      tests_pb2.EndpointGroup(name="b", codecs=["pcmu"])])
    engines = pack(spec, slices(("a", 0, 3), ("b", 10, 6)), per_engine=4)
    assert as_tuples(engines) == [[("a", 0, 3), ("b", 10, 1)], [("b", 11, 4)], [("b", 15, 1)]]


def test_groups_with_other_codecs_get_their_own_engine() -> None:
    spec = tests_pb2.TestSpec(groups=[tests_pb2.EndpointGroup(name="a", codecs=["PCMU"]),
                                      tests_pb2.EndpointGroup(name="b", codecs=["G722"])])
    assert as_tuples(pack(spec, slices(("a", 0, 2), ("b", 0, 2)), per_engine=4)) == [[("a", 0, 2)], [("b", 0, 2)]]


def test_rtp_ranges_are_disjoint_and_even() -> None:
    ranges = rtp_ranges(10001, 10100, 3)
    assert all(low % 2 == 0 for low, _ in ranges)
    assert all(a_high < b_low for (_, a_high), (b_low, _) in zip(ranges, ranges[1:]))
    assert ranges[-1][1] <= 10100
    with pytest.raises(ValueError, match="too small"):
        rtp_ranges(10000, 10010, 8)


def sample(n: int) -> results_pb2.EndpointSample:
    return results_pb2.EndpointSample(group="g", endpoint=n, second=1_700_000_000 + n)


def test_uplink_numbers_batches_and_forgets_them_when_acked() -> None:
    uplink = Uplink(max_bytes=1 << 20)
    uplink.add("r1", sample(1))
    uplink.add("r2", sample(2))
    first = uplink.seal()
    uplink.add("r1", sample(3))
    second = uplink.seal()
    assert [(b.run_id, b.sequence) for b in first + second] == [("r1", 1), ("r2", 1), ("r1", 2)]
    uplink.ack("r1", 1)
    assert [(b.run_id, b.sequence) for b in uplink.resend()] == [("r2", 1), ("r1", 2)]
    uplink.ack("r1", 2)
    assert uplink.is_drained("r1") and not uplink.is_drained("r2")


def test_uplink_drops_the_oldest_beyond_its_bound_and_counts_them() -> None:
    uplink = Uplink(max_bytes=100)
    for n in range(20):
        uplink.add("r", sample(n))
        uplink.seal()
    assert uplink.unacked_bytes <= 100
    assert uplink.dropped_samples == 20 - len(uplink.resend())
    assert uplink.resend()[-1].sequence == 20  # the newest are kept


def callees_on(port: int, name: str = "callees", codecs: tuple[str, ...] = ("PCMU",)) -> tests_pb2.EndpointGroup:
    group = tests_pb2.EndpointGroup(name=name, role=common_pb2.ENDPOINT_ROLE_CALLEE, codecs=list(codecs))
    group.target.aor = f"sip:callee{{n}}@127.0.0.1:{port}"
    return group


def test_callees_listening_on_one_port_share_one_engine() -> None:
    """Seen: callees split over two engines; the second could not bind the port ("Address already in use")."""
    callers = tests_pb2.EndpointGroup(name="callers", role=common_pb2.ENDPOINT_ROLE_CALLER, codecs=["PCMU"])
    spec = tests_pb2.TestSpec(groups=[callers, callees_on(5070)])
    engines = pack(spec, slices(("callers", 0, 2), ("callees", 0, 3)), per_engine=4)
    assert as_tuples(engines) == [[("callees", 0, 3)], [("callers", 0, 2)]]
    # Each callee on its own port ({n} in the port) packs as any group does.
    own = callees_on(0)
    own.target.aor, own.target.number_start = "sip:{n}@127.0.0.1:{n}", 5070
    spec = tests_pb2.TestSpec(groups=[callers, own])
    assert as_tuples(pack(spec, slices(("callers", 0, 2), ("callees", 0, 3)), per_engine=4)) == [
        [("callers", 0, 2), ("callees", 0, 2)], [("callees", 2, 1)]]


def test_more_callees_on_one_port_than_an_engine_holds_is_refused_with_the_way_out() -> None:
    spec = tests_pb2.TestSpec(groups=[callees_on(5070)])
    with pytest.raises(PackingError, match=r"'callees': 5 callees listen on SIP port 5070 .* at most 4; give each "
                                           r"callee its own port, e.g. target.aor sip:\{n\}@HOST:\{n\}"):
        pack(spec, slices(("callees", 0, 5)), per_engine=4)
    two = tests_pb2.TestSpec(groups=[callees_on(5070, "a"), callees_on(5070, "b", ("G722",))])
    with pytest.raises(PackingError, match="groups 'a', 'b' listen on SIP port 5070, so they share one engine"):
        pack(two, slices(("a", 0, 1), ("b", 0, 1)), per_engine=4)
