"""How an assignment's endpoints are split across engine processes. Pure, so it is tested alone.

An engine holds at most ``per_engine`` endpoints (each endpoint takes at most one account and one
call leg, and the wheel's compiled limits cap both), and codec priority is per engine process,
so groups whose codec preferences differ never share an engine.
"""

from __future__ import annotations

from callmeter.v1 import tests_pb2, workers_pb2


def pack(spec: tests_pb2.TestSpec, slices: list[workers_pb2.EndpointSlice],
         per_engine: int) -> list[list[workers_pb2.EndpointSlice]]:
    if per_engine < 1:
        raise ValueError("an engine must hold at least one endpoint")
    codecs = {group.name: tuple(c.lower() for c in group.codecs) for group in spec.groups}
    engines: list[list[workers_pb2.EndpointSlice]] = []
    room = 0
    engine_codecs: tuple[str, ...] | None = None
    for piece in slices:
        first, left = piece.first_index, piece.count
        group_codecs = codecs.get(piece.group, ())
        while left > 0:
            if room == 0 or (group_codecs and engine_codecs and group_codecs != engine_codecs):
                engines.append([])
                room, engine_codecs = per_engine, None
            take = min(room, left)
            engines[-1].append(workers_pb2.EndpointSlice(group=piece.group, first_index=first, count=take))
            engine_codecs = engine_codecs or group_codecs or None
            first, left, room = first + take, left - take, room - take
    return engines


def rtp_ranges(port_min: int, port_max: int, slots: int) -> list[tuple[int, int]]:
    """Disjoint RTP port ranges, one per engine slot, each starting on an even port (RTP even, RTCP odd)."""
    size = (port_max - port_min + 1) // slots
    size -= size % 2
    if size < 4:
        raise ValueError(f"the RTP port range {port_min}-{port_max} is too small for {slots} engines")
    start = port_min + port_min % 2
    return [(start + i * size, start + (i + 1) * size - 1) for i in range(slots)]
