"""Per-second EndpointMetrics of each phone, from its records and pjmedia's stream statistics.

Counters are increases during the second: the difference between cumulative stream counters
now and at the previous sample, plus what a stream had when it was destroyed (captured by
onStreamDestroyed). Gauges are the value at the end of the second, except the jitter-buffer
delay, which averages readings taken every JB_READ_INTERVAL_S. MOS and R come from the E-model
on the second's receive loss and the one-way delay: half the RTCP round trip + packetization +
jitter-buffer delay. The round trip is the median of the newest RTT_WINDOW RTCP measurements
(0 until the first): pjmedia reports a single absurd round trip after a re-INVITE (seen: 980 ms
on loopback after a hold), which would otherwise sink the MOS until the next report.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, fields

import pjsua2 as pj

from callmeter.common import emodel
from callmeter.v1 import endpoint_metrics_pb2, results_pb2
from services.worker.engine.phone import CallRecord, Phone

JB_READ_INTERVAL_S = 0.2
RTT_WINDOW = 3


@dataclass
class Totals:
    """Cumulative counters of one audio stream."""

    rx_packets: int = 0
    rx_bytes: int = 0
    rx_lost: int = 0
    rx_loss_events: int = 0
    rx_discarded: int = 0
    rx_reordered: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    tx_lost: int = 0

    @classmethod
    def of(cls, stat: pj.StreamStat, frames_per_packet: int) -> Totals:
        rx, tx = stat.rtcp.rxStat, stat.rtcp.txStat
        return cls(
            rx_packets=rx.pkt, rx_bytes=rx.bytes, rx_lost=rx.loss, rx_loss_events=rx.lossPeriodUsec.n,
            # Bad or duplicate packets (RTCP) plus late ones the jitter buffer dropped (it counts frames).
            rx_discarded=rx.discard + stat.jbuf.discard // frames_per_packet,
            rx_reordered=rx.reorder, tx_packets=tx.pkt, tx_bytes=tx.bytes, tx_lost=tx.loss,
        )

    def minus(self, other: Totals) -> Totals:
        # Loss can shrink when a late packet arrives after its gap was counted: never negative.
        return Totals(**{f.name: max(0, getattr(self, f.name) - getattr(other, f.name)) for f in fields(self)})

    def add(self, other: Totals) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class CallMeter:
    """Sampling state of one call's audio stream."""

    def __init__(self, call: pj.Call, media_index: int) -> None:
        info = call.getStreamInfo(media_index)
        param = info.audCodecParam
        self.codec = info.codecName
        self.frame_ms = param.info.frameLen
        self.frames_per_packet = max(param.setting.frmPerPkt, 1)
        self.impairment = emodel.codec_impairment(self.codec)
        self.plc = bool(param.setting.plc)
        self.last = Totals()
        self.jb_readings: list[float] = []
        # Far-end loss report (RTCP RR): values at the previous report, and the loss between the two newest.
        self.rr_updates = 0
        self.rr_tx = (0, 0)
        self.tx_loss_pct: float | None = None
        self.rtt_count = 0
        self.rtts_us: deque[int] = deque(maxlen=RTT_WINDOW)

    @property
    def ptime_ms(self) -> int:
        return self.frame_ms * self.frames_per_packet

    def read_jb(self, stat: pj.StreamStat) -> None:
        self.jb_readings.append(stat.jbuf.size * self.frame_ms)

    @property
    def rtt_ms(self) -> float:
        """The round trip the E-model uses (see the module's doc)."""
        return statistics.median(self.rtts_us) / 1000 if self.rtts_us else 0.0

    def take(self, stat: pj.StreamStat) -> Totals:
        """The increase since the previous take; remembers the newest RTCP reports."""
        now = Totals.of(stat, self.frames_per_packet)
        rtt = stat.rtcp.rttUsec
        if rtt.n != self.rtt_count:
            self.rtt_count = rtt.n
            self.rtts_us.append(rtt.last)
        tx = stat.rtcp.txStat
        if tx.updateCount != self.rr_updates:
            sent, lost = now.tx_packets - self.rr_tx[0], now.tx_lost - self.rr_tx[1]
            self.tx_loss_pct = 100.0 * max(lost, 0) / sent if sent > 0 else None
            self.rr_updates, self.rr_tx = tx.updateCount, (now.tx_packets, now.tx_lost)
        delta = now.minus(self.last)
        self.last = now
        return delta


class Sampler:
    def __init__(self, phones: list[Phone]) -> None:
        self.phones = phones
        self._next_jb_read = 0.0

    def poll(self, now: float) -> None:
        """Reads jitter-buffer occupancy of live calls every JB_READ_INTERVAL_S."""
        if now < self._next_jb_read:
            return
        self._next_jb_read = now + JB_READ_INTERVAL_S
        for phone in self.phones:
            for record in phone.records:
                stat = _live_stat(record)
                if stat is not None and record.meter is not None:
                    record.meter.read_jb(stat)

    def sample(self, second: int) -> list[results_pb2.EndpointSample]:
        return [
            results_pb2.EndpointSample(group=phone.group, endpoint=phone.index, second=second, metrics=self._metrics(phone))
            for phone in self.phones
        ]

    def _metrics(self, phone: Phone) -> endpoint_metrics_pb2.EndpointMetrics:
        counters, state = phone.counters, phone.state
        m = endpoint_metrics_pb2.EndpointMetrics(
            registered=state.registered,
            register_attempts=counters.register_attempts,
            register_failures=counters.register_failures,
            register_last_code=state.register_last_code,
            calls_attempted=counters.calls_attempted,
            calls_connected=counters.calls_connected,
            calls_failed=counters.calls_failed,
            call_last_code=state.call_last_code,
            call_active=any(r.confirmed_at is not None and r.ended_at is None for r in phone.records),
            register_time_ms=state.register_time_ms or 0,
            setup_time_ms=state.setup_time_ms or 0,
            ring_time_ms=state.ring_time_ms or 0,
        )
        phone.counters = type(counters)()
        state.register_time_ms = state.setup_time_ms = state.ring_time_ms = None
        self._media(phone, m)
        return m

    def _media(self, phone: Phone, m: endpoint_metrics_pb2.EndpointMetrics) -> None:
        total = Totals()
        newest: tuple[CallMeter, pj.StreamStat] | None = None
        for record in phone.records:
            meter = record.meter
            if meter is None:
                continue
            for stat in record.final_stats:  # streams destroyed since the last sample
                total.add(meter.take(stat))
                meter.last = Totals()  # a recreated stream (re-INVITE) counts from zero
                newest = (meter, stat)
            record.final_stats.clear()
            stat = _live_stat(record)
            if stat is not None:
                meter.read_jb(stat)
                total.add(meter.take(stat))
                newest = (meter, stat)
        # Ended calls have been counted for the last time.
        phone.records = [r for r in phone.records if r.ended_at is None]
        if newest is None:
            return
        meter, stat = newest
        rtcp = stat.rtcp
        m.rx_packets, m.rx_bytes, m.rx_lost = total.rx_packets, total.rx_bytes, total.rx_lost
        m.rx_discarded, m.rx_reordered = total.rx_discarded, total.rx_reordered
        m.tx_packets, m.tx_bytes, m.tx_lost = total.tx_packets, total.tx_bytes, total.tx_lost
        m.rx_jitter_us = rtcp.rxStat.jitterUsec.last
        if rtcp.txStat.updateCount:
            m.tx_jitter_us = rtcp.txStat.jitterUsec.last
        if meter.tx_loss_pct is not None:
            m.tx_loss_pct = round(meter.tx_loss_pct * 100)
        m.rtt_us = rtcp.rttUsec.last if rtcp.rttUsec.n else 0
        jb_ms = sum(meter.jb_readings) / len(meter.jb_readings) if meter.jb_readings else 0.0
        meter.jb_readings.clear()
        m.jb_delay_ms = round(jb_ms)
        expected = total.rx_packets + total.rx_lost
        if expected == 0:
            return
        loss_pct = 100.0 * total.rx_lost / expected
        m.rx_loss_pct = round(loss_pct * 100)
        if meter.impairment is None:
            return  # a codec without E-model values (L16): no R, no MOS, rather than a made-up one
        bursts = total.rx_loss_events
        r = emodel.r_factor(
            one_way_delay_ms=meter.rtt_ms / 2 + meter.ptime_ms + jb_ms,
            loss_pct=loss_pct,
            burst_r=emodel.burst_ratio(loss_pct, total.rx_lost / bursts) if bursts else 1.0,
            ie=meter.impairment.ie,
            bpl=meter.impairment.bpl if meter.plc else meter.impairment.bpl_no_plc,
        )
        m.r_factor = round(max(r, 0.0) * 100)
        m.mos = round(emodel.mos_from_r(r) * 100)


def _live_stat(record: CallRecord) -> pj.StreamStat | None:
    """Statistics of the call's live audio stream, or None when it has none right now."""
    if record.call is None or record.audio_index is None or record.meter is None:
        return None
    try:
        return record.call.getStreamStat(record.audio_index)
    except pj.Error:  # no stream at this moment, e.g. while a re-INVITE recreates it
        return None
