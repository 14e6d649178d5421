"""How an assignment's endpoints are split across engine processes. Pure, so it is tested alone.

An engine holds at most ``per_engine`` endpoints (each endpoint takes at most one account and one
call leg, and the wheel's compiled limits cap both), and codec priority is per engine process,
so groups whose codec preferences differ never share an engine. Callees that listen on one SIP
port (target.aor with a fixed port, no registrar) must share an engine, the one process that can
bind it: they get an engine of their own, or the assignment is refused (PackingError).
"""

from __future__ import annotations

from collections import defaultdict

from callmeter.v1 import common_pb2, tests_pb2, workers_pb2
from services.worker.engine.plan import fill, uri_host_port


class PackingError(ValueError):
    """The assignment's endpoints cannot be split over engines; the message says why and what to change."""


def pack(spec: tests_pb2.TestSpec, slices: list[workers_pb2.EndpointSlice],
         per_engine: int) -> list[list[workers_pb2.EndpointSlice]]:
    if per_engine < 1:
        raise ValueError("an engine must hold at least one endpoint")
    codecs = {group.name: tuple(c.lower() for c in group.codecs) for group in spec.groups}
    shared, slices = _sharing_a_port(spec, slices)
    engines = [_one_engine(port, pieces, per_engine, codecs, spec) for port, pieces in shared.items()]
    return engines + _pack(slices, per_engine, codecs)


def _pack(slices: list[workers_pb2.EndpointSlice], per_engine: int,
          codecs: dict[str, tuple[str, ...]]) -> list[list[workers_pb2.EndpointSlice]]:
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


Port = tuple[int, int]  # (Transport, port number)


def _listen_port(group: tests_pb2.EndpointGroup, index: int) -> Port | None:
    """The SIP transport and port a callee without a registrar listens on (as the engine's plan
    picks them), else None."""
    if group.role != common_pb2.ENDPOINT_ROLE_CALLEE or group.target.registrar or not group.target.aor:
        return None
    transport = group.transport or common_pb2.TRANSPORT_UDP
    default = 5061 if transport == common_pb2.TRANSPORT_TLS else 5060
    return transport, uri_host_port(fill(group.target.aor, index + group.target.number_start))[1] or default


def _sharing_a_port(spec: tests_pb2.TestSpec, slices: list[workers_pb2.EndpointSlice]) -> tuple[
        dict[Port, list[workers_pb2.EndpointSlice]], list[workers_pb2.EndpointSlice]]:
    """(port → the slices of the endpoints that listen on it with others, the other slices)."""
    groups = {group.name: group for group in spec.groups}
    ports: dict[tuple[str, int], Port | None] = {}
    listeners: defaultdict[Port, int] = defaultdict(int)
    for piece in slices:
        group = groups.get(piece.group)
        for index in range(piece.first_index, piece.first_index + piece.count):
            port = ports[(piece.group, index)] = _listen_port(group, index) if group is not None else None
            if port is not None:
                listeners[port] += 1
    shared: dict[Port, list[workers_pb2.EndpointSlice]] = {}
    rest: list[workers_pb2.EndpointSlice] = []
    for piece in slices:
        for index in range(piece.first_index, piece.first_index + piece.count):
            port = ports[(piece.group, index)]
            into = shared.setdefault(port, []) if port is not None and listeners[port] > 1 else rest
            if into and into[-1].group == piece.group and into[-1].first_index + into[-1].count == index:
                into[-1].count += 1
            else:
                into.append(workers_pb2.EndpointSlice(group=piece.group, first_index=index, count=1))
    return shared, rest


def _one_engine(port: Port, pieces: list[workers_pb2.EndpointSlice], per_engine: int,
                codecs: dict[str, tuple[str, ...]], spec: tests_pb2.TestSpec) -> list[workers_pb2.EndpointSlice]:
    names = list(dict.fromkeys(piece.group for piece in pieces))
    count = sum(piece.count for piece in pieces)
    if count > per_engine:
        aor = next(group.target.aor for group in spec.groups if group.name == names[0])
        raise PackingError(
            f"group {', '.join(map(repr, names))}: {count} callees listen on SIP port {port[1]} (target.aor {aor!r}), "
            f"but the one engine that can bind it holds at most {per_engine}; give each callee its own port, "
            "e.g. target.aor sip:{n}@HOST:{n} with target.number_start 5070")
    if len({codecs.get(name, ()) for name in names}) > 1:
        raise PackingError(f"groups {', '.join(map(repr, names))} listen on SIP port {port[1]}, so they share one engine, "
                           "but prefer different codecs (codec priority is per engine); give them different ports")
    return pieces


def rtp_ranges(port_min: int, port_max: int, slots: int) -> list[tuple[int, int]]:
    """Disjoint RTP port ranges, one per engine slot, each starting on an even port (RTP even, RTCP odd)."""
    size = (port_max - port_min + 1) // slots
    size -= size % 2
    if size < 4:
        raise ValueError(f"the RTP port range {port_min}-{port_max} is too small for {slots} engines")
    start = port_min + port_min % 2
    return [(start + i * size, start + (i + 1) * size - 1) for i in range(slots)]
