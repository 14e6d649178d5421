"""The metrics catalog: every per-endpoint per-second metric, defined once.

The protobuf message ``EndpointMetrics`` (protos/callmeter/v1/endpoint_metrics.proto), the
ClickHouse columns and docs/metrics.md are generated from this list by ``make proto``; edit
here, never there. Field numbers are the list position plus one, so append new metrics at the
end and never reorder or delete one (mark it ``deprecated`` instead): stored data and old
workers depend on the numbers.

Values travel as integers in a fixed unit (``scale`` says how many units make one ``unit``),
so that a quiet endpoint-second costs a few bytes: proto3 omits zeros, varints stay short.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ProtoType = Literal["uint32", "sint32", "uint64", "bool"]
Kind = Literal["gauge", "counter", "state"]


@dataclass(frozen=True)
class Metric:
    name: str
    proto_type: ProtoType
    kind: Kind  # gauge: value at the end of the second; counter: increase during the second
    unit: str
    description: str
    scale: int = 1  # stored integer = value * scale
    deprecated: bool = False


def _m(name: str, proto_type: ProtoType, kind: Kind, unit: str, description: str, scale: int = 1) -> Metric:
    return Metric(name, proto_type, kind, unit, description, scale)


METRICS: tuple[Metric, ...] = (
    # Registration
    _m("registered", "bool", "state", "", "The endpoint holds a valid registration at the end of the second."),
    _m("register_attempts", "uint32", "counter", "", "REGISTER transactions started (initial and refreshes)."),
    _m("register_failures", "uint32", "counter", "", "REGISTER transactions that ended without 2xx."),
    _m("register_last_code", "uint32", "state", "", "Final SIP code of the newest REGISTER transaction."),
    _m("register_time_ms", "uint32", "gauge", "ms", "Time from REGISTER to its final response, newest transaction."),
    # Calls
    _m("calls_attempted", "uint32", "counter", "", "INVITEs sent (callers) or received (callees)."),
    _m("calls_connected", "uint32", "counter", "", "Calls that reached the confirmed state."),
    _m("calls_failed", "uint32", "counter", "", "Calls that ended without connecting."),
    _m("call_last_code", "uint32", "state", "", "Final SIP code of the newest call's INVITE."),
    _m("call_active", "bool", "state", "", "A call is connected at the end of the second."),
    _m("setup_time_ms", "uint32", "gauge", "ms", "INVITE to 200 OK of the newest connected call."),
    _m("ring_time_ms", "uint32", "gauge", "ms", "INVITE to first 18x of the newest call (post-dial delay)."),
    # Media, receive direction
    _m("rx_packets", "uint32", "counter", "", "RTP packets received."),
    _m("rx_bytes", "uint32", "counter", "B", "RTP payload bytes received."),
    _m("rx_lost", "uint32", "counter", "", "RTP packets lost in the receive direction (sequence gaps)."),
    _m("rx_discarded", "uint32", "counter", "", "RTP packets received but discarded (late, duplicate, bad)."),
    _m("rx_reordered", "uint32", "counter", "", "RTP packets received out of order."),
    _m("rx_jitter_us", "uint32", "gauge", "ms", "Interarrival jitter of received RTP (RFC 3550).", 1000),
    _m("rx_loss_pct", "uint32", "gauge", "%", "Loss in the receive direction over the second.", 100),
    # Media, send direction (as the far end reports it in RTCP)
    _m("tx_packets", "uint32", "counter", "", "RTP packets sent."),
    _m("tx_bytes", "uint32", "counter", "B", "RTP payload bytes sent."),
    _m("tx_lost", "uint32", "counter", "", "Sent packets the far end reports lost (RTCP RR)."),
    _m("tx_jitter_us", "uint32", "gauge", "ms", "Jitter the far end reports for our stream (RTCP RR).", 1000),
    _m("tx_loss_pct", "uint32", "gauge", "%", "Loss the far end reports for our stream.", 100),
    # Round trip and quality
    _m("rtt_us", "uint32", "gauge", "ms", "Round-trip time from RTCP (last SR/RR).", 1000),
    _m("jb_delay_ms", "uint32", "gauge", "ms", "Jitter-buffer delay, average over the second."),
    _m("r_factor", "uint32", "gauge", "", "E-model R factor (ITU-T G.107) for the second.", 100),
    _m("mos", "uint32", "gauge", "", "Listening-conversational MOS from the R factor (ITU-T G.107 Annex B).", 100),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}
