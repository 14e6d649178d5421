"""Per-second EndpointMetrics of each phone: every metric of callmeter/catalog.py.

Sources: the phone's records (phone.py), its SIP records (sipstats.py), and pjsua2's call,
account, stream and jitter-buffer information, read once a second (the jitter-buffer size and
the first RTP packet more often, see `Sampler.poll`).

Counters are increases during the second: the difference between cumulative stream counters
now and at the previous sample, plus what a stream had when it was destroyed (captured by
onStreamDestroyed). Gauges are the value at the end of the second, except the jitter-buffer
delay, which averages readings taken every JB_READ_INTERVAL_S (and its maximum), and times of
events (SIP transactions, first RTP, RTCP intervals), reported in the second they complete.
Stream statistics (min/mean/max) are pjmedia's, over the newest audio stream since it started.

MOS and R come from the E-model on the second's receive loss and the one-way delay: half the
RTCP round trip + packetization + jitter-buffer delay. The round trip is the median of the
newest RTT_WINDOW RTCP measurements (0 until the first): pjmedia reports a single absurd round
trip after a re-INVITE (seen: 980 ms on loopback after a hold), which would otherwise sink the
MOS until the next report. The send direction gets its own E-model from the loss the far end
reports, with RTT/2 + packetization as delay (the far end's jitter buffer is not known here).
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from dataclasses import dataclass, fields

import pjsua2 as pj

from callmeter.common import emodel
from callmeter.v1 import endpoint_metrics_pb2, results_pb2
from services.worker.engine.phone import CallRecord, Phone, elapsed_ms

JB_READ_INTERVAL_S = 0.2
RTT_WINDOW = 3
_U32 = 2**32 - 1
# CallMediaInfo.status -> media_hold; CallMediaInfo.dir -> media_dir (catalog codes).
_HOLD = {pj.PJSUA_CALL_MEDIA_LOCAL_HOLD: 1, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD: 2}
_DIRECTION = {pj.PJMEDIA_DIR_ENCODING_DECODING: 0, pj.PJMEDIA_DIR_ENCODING: 1, pj.PJMEDIA_DIR_DECODING: 2,
              pj.PJMEDIA_DIR_NONE: 3}


@dataclass
class Totals:
    """Cumulative counters of one audio stream; the names are the catalog's counters."""

    rx_packets: int = 0
    rx_bytes: int = 0
    rx_lost: int = 0
    rx_loss_periods: int = 0
    rx_discarded: int = 0
    rx_reordered: int = 0
    rx_duplicates: int = 0
    rx_seq_discarded: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    tx_lost: int = 0
    tx_loss_periods: int = 0
    rtcp_sent: int = 0
    rtcp_received: int = 0
    rtt_samples: int = 0
    jb_lost_frames: int = 0
    jb_discarded_frames: int = 0
    jb_empty_events: int = 0

    @classmethod
    def of(cls, stat: pj.StreamStat, frames_per_packet: int) -> Totals:
        rtcp, jb = stat.rtcp, stat.jbuf
        rx, tx = rtcp.rxStat, rtcp.txStat
        return cls(
            rx_packets=rx.pkt, rx_bytes=rx.bytes, rx_lost=rx.loss, rx_loss_periods=rx.lossPeriodUsec.n,
            # Bad or duplicate packets (RTCP) plus late ones the jitter buffer dropped (it counts frames).
            rx_discarded=rx.discard + jb.discard // frames_per_packet,
            rx_reordered=rx.reorder, rx_duplicates=rx.dup, rx_seq_discarded=rx.discard,
            tx_packets=tx.pkt, tx_bytes=tx.bytes, tx_lost=tx.loss, tx_loss_periods=tx.lossPeriodUsec.n,
            # pjmedia counts an update of the receive statistics per report it sends, of the send
            # statistics per report block it receives (rtcp.c).
            rtcp_sent=rx.updateCount, rtcp_received=tx.updateCount, rtt_samples=rtcp.rttUsec.n,
            jb_lost_frames=jb.lost, jb_discarded_frames=jb.discard, jb_empty_events=jb.empty,
        )

    def minus(self, other: Totals) -> Totals:
        # Loss can shrink when a late packet arrives after its gap was counted: never negative.
        return Totals(**{f.name: max(0, getattr(self, f.name) - getattr(other, f.name)) for f in fields(self)})

    def add(self, other: Totals) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class ReportClock:
    """Interval between the newest RTCP reports of one direction (RtcpStreamStat.update/updateCount)."""

    def __init__(self) -> None:
        self.count = 0
        self.at = 0.0

    def interval_ms(self, stream: pj.RtcpStreamStat) -> int | None:
        """The mean interval of the reports since the last call, if there were any after a first one."""
        count, at = stream.updateCount, stream.update.sec + stream.update.msec / 1000
        previous_count, previous_at = self.count, self.at
        if count == previous_count:
            return None
        self.count, self.at = count, at
        if count < previous_count or previous_count == 0:  # a new stream, or its first report
            return None
        return max(0, round((at - previous_at) * 1000 / (count - previous_count)))


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
        self.sent_reports, self.received_reports = ReportClock(), ReportClock()
        # Event values of the stream, reported in the second they happen.
        self.events: dict[str, int] = {}
        self.first_rtp_seen = False
        record: CallRecord | None = getattr(call, "record", None)  # phone.PhoneCall's
        if record is not None:
            self.events["media_start_ms"] = elapsed_ms(time.monotonic() - record.started)

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
        rtcp = stat.rtcp
        rtt = rtcp.rttUsec
        if rtt.n != self.rtt_count:
            self.rtt_count = rtt.n
            if rtt.n > 0:
                self.rtts_us.append(rtt.last)
        tx = rtcp.txStat
        if tx.updateCount != self.rr_updates:
            sent, lost = now.tx_packets - self.rr_tx[0], now.tx_lost - self.rr_tx[1]
            self.tx_loss_pct = 100.0 * max(lost, 0) / sent if sent > 0 else None
            self.rr_updates, self.rr_tx = tx.updateCount, (now.tx_packets, now.tx_lost)
        for name, clock, stream in (("rtcp_tx_interval_s", self.sent_reports, rtcp.rxStat),
                                    ("rtcp_rx_interval_s", self.received_reports, tx)):
            interval = clock.interval_ms(stream)
            if interval is not None:
                self.events[name] = round(interval / 100)  # tenths of a second
        delta = now.minus(self.last)
        self.last = now
        return delta

    def stream_ended(self) -> None:
        """A destroyed stream's last counts were taken: a recreated one (re-INVITE) counts from zero."""
        self.last = Totals()
        self.rr_updates, self.rr_tx, self.rtt_count = 0, (0, 0), 0  # the round-trip window is kept
        self.sent_reports, self.received_reports = ReportClock(), ReportClock()


class Sampler:
    def __init__(self, phones: list[Phone]) -> None:
        self.phones = phones
        self._next_jb_read = 0.0
        #: When poll() next has something to read, as Driver.wake_at (the past: a call awaits its
        #: first RTP packet, watched on every loop iteration).
        self.wake_at = math.inf

    def poll(self, now: float) -> None:
        """Between samples: watches for the first RTP packet of new calls on every loop iteration,
        and reads the jitter-buffer occupancy of live calls every JB_READ_INTERVAL_S."""
        read_jb = now >= self._next_jb_read
        if read_jb:
            self._next_jb_read = now + JB_READ_INTERVAL_S
        self.wake_at = self._next_jb_read
        for phone in self.phones:
            for record in phone.records:
                meter = record.meter
                if meter is None or (meter.first_rtp_seen and not read_jb):
                    continue
                stat = _live_stat(record)
                if stat is None:
                    continue
                if not meter.first_rtp_seen:
                    if stat.rtcp.rxStat.pkt > 0:
                        meter.first_rtp_seen = True
                        meter.events["first_rtp_ms"] = elapsed_ms(now - record.started)
                    else:
                        self.wake_at = now
                if read_jb:
                    meter.read_jb(stat)

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
            outcome=phone.outcome[0],
            outcome_code=phone.outcome[1],
        )
        phone.counters = type(counters)()
        state.register_time_ms = state.setup_time_ms = state.ring_time_ms = None
        counts, events = phone.sip.take()
        if counts["register_refreshes"]:
            # pjsua does not report when its own refreshes start (no onRegStarted): phone.py would
            # time one from the scenario's REGISTER, seconds earlier. No time rather than a wrong one.
            m.register_time_ms = 0
        for name, value in (*counts.items(), *events.items()):
            setattr(m, name, _u32(value))
        self._registration(phone, m)
        self._call(phone, m)
        self._media(phone, m)
        return m

    def _registration(self, phone: Phone, m: endpoint_metrics_pb2.EndpointMetrics) -> None:
        if not phone.state.registered:
            return
        m.register_expiry_left_s = phone.sip.expiry_left_s(time.monotonic())
        try:
            refresh_in = phone.getInfo().regExpiresSec
        except pj.Error:
            return
        if 0 <= refresh_in < 2**31:  # PJSIP_EXPIRES_NOT_SPECIFIED when pjsua does not refresh
            m.register_refresh_in_s = refresh_in

    def _call(self, phone: Phone, m: endpoint_metrics_pb2.EndpointMetrics) -> None:
        """The call's state: the connected call if there is one, else the newest."""
        if not phone.records:
            return
        record = next((r for r in reversed(phone.records) if r.confirmed_at is not None and r.ended_at is None),
                      phone.records[-1])
        m.call_state = record.state
        m.calls_ended = sum(r.ended_at is not None and r.confirmed_at is not None for r in phone.records)
        if record.call is None or record.ended_at is not None:
            return
        try:
            info = record.call.getInfo()  # keep it referenced: info.media points into it
        except pj.Error:
            return
        m.call_connected_s = _u32(info.connectDuration.sec)
        if record.confirmed_at is None:
            m.call_setup_s = _u32(info.totalDuration.sec * 10 + info.totalDuration.msec // 100)
        for media in info.media:
            if media.type == pj.PJMEDIA_TYPE_AUDIO and (record.audio_index is None or media.index == record.audio_index):
                if media.status != pj.PJSUA_CALL_MEDIA_NONE:
                    m.media_hold = _HOLD.get(media.status, 0)
                    m.media_dir = _DIRECTION.get(media.dir, 0)
                break

    def _media(self, phone: Phone, m: endpoint_metrics_pb2.EndpointMetrics) -> None:
        total = Totals()
        streams_ended = 0
        newest: tuple[CallMeter, pj.StreamStat, CallRecord | None] | None = None
        events: dict[str, int] = {}  # of every stream, the newest winning
        for record in phone.records:
            meter = record.meter
            if meter is None:
                continue
            for stat in record.final_stats:  # streams destroyed since the last sample
                total.add(meter.take(stat))
                meter.stream_ended()
                newest = (meter, stat, None)
            streams_ended += len(record.final_stats)
            record.final_stats.clear()
            stat = _live_stat(record)
            if stat is not None:
                meter.read_jb(stat)
                total.add(meter.take(stat))
                newest = (meter, stat, record)
            events.update(meter.events)
            meter.events.clear()
        # Ended calls have been counted for the last time.
        for record in phone.records:
            if record.ended_at is not None:
                phone.sip.forget(record)
        phone.records = [r for r in phone.records if r.ended_at is None]
        m.media_streams_ended = streams_ended
        if newest is None:
            return
        meter, stat, live = newest
        for name, value in events.items():
            setattr(m, name, _u32(value))
        for f in fields(total):
            setattr(m, f.name, _u32(getattr(total, f.name)))
        rtcp, jb = stat.rtcp, stat.jbuf
        rx, tx = rtcp.rxStat, rtcp.txStat
        if live is not None and rtcp.start.sec:
            m.stream_age_s = _u32(round(time.time() - rtcp.start.sec - rtcp.start.msec / 1000))
        m.rx_jitter_us = _u32(rx.jitterUsec.last)
        if tx.updateCount:
            m.tx_jitter_us = _u32(tx.jitterUsec.last)
        if meter.tx_loss_pct is not None:
            m.tx_loss_pct = round(meter.tx_loss_pct * 100)
        m.rtt_us = _u32(rtcp.rttUsec.last) if rtcp.rttUsec.n else 0
        _lifetime(m, "rx_jitter", rx.jitterUsec, ("min", "mean", "max"), 100)  # tenths of a ms
        _lifetime(m, "tx_jitter", tx.jitterUsec, ("min", "mean", "max"), 100)
        _lifetime(m, "rtt", rtcp.rttUsec, ("min", "mean", "max"), 100)
        _lifetime(m, "rx_loss_period", rx.lossPeriodUsec, ("min", "mean", "max", "last"), 1000)  # ms
        _lifetime(m, "tx_loss_period", tx.lossPeriodUsec, ("min", "mean", "max", "last"), 1000)
        m.jb_size_frames, m.jb_prefetch_frames, m.jb_burst_frames = jb.size, jb.prefetch, jb.burst
        m.jb_avg_delay_ms, m.jb_min_delay_ms = jb.avgDelayMsec, jb.minDelayMsec
        m.jb_max_delay_ms, m.jb_dev_delay_ms, m.jb_avg_burst_frames = jb.maxDelayMsec, jb.devDelayMsec, jb.avgBurst
        m.jb_frame_bytes, m.jb_min_prefetch_frames, m.jb_max_prefetch_frames = jb.frameSize, jb.minPrefetch, jb.maxPrefetch
        jb_ms = sum(meter.jb_readings) / len(meter.jb_readings) if meter.jb_readings else 0.0
        m.jb_delay_ms = round(jb_ms)
        m.jb_delay_max_ms = round(max(meter.jb_readings, default=0.0))
        meter.jb_readings.clear()
        if live is not None:
            _stream(live, m)
        self._send_quality(meter, m)
        self._receive_quality(meter, total, jb_ms, m)

    @staticmethod
    def _receive_quality(meter: CallMeter, total: Totals, jb_ms: float, m: endpoint_metrics_pb2.EndpointMetrics) -> None:
        expected = total.rx_packets + total.rx_lost
        if expected == 0:
            return
        loss_pct = 100.0 * total.rx_lost / expected
        m.rx_loss_pct = round(loss_pct * 100)
        if meter.impairment is None:
            return  # a codec without E-model values (L16): no R, no MOS, rather than a made-up one
        bursts = total.rx_loss_periods
        burst_r = emodel.burst_ratio(loss_pct, total.rx_lost / bursts) if bursts else 1.0
        delay_ms = meter.rtt_ms / 2 + meter.ptime_ms + jb_ms
        rating = emodel.rating(
            one_way_delay_ms=delay_ms, loss_pct=loss_pct, burst_r=burst_r, ie=meter.impairment.ie,
            bpl=meter.impairment.bpl if meter.plc else meter.impairment.bpl_no_plc,
        )
        m.r_factor, m.mos = _r(rating.r), _mos(rating.r)
        m.r_factor_lq, m.mos_lq = _r(rating.r_lq), _mos(rating.r_lq)
        m.emodel_delay_ms = round(delay_ms)
        m.emodel_id, m.emodel_ie_eff = _tenths(rating.id), _tenths(rating.ie_eff)
        if total.rx_lost:
            m.emodel_burst_r = round(burst_r * 100)

    @staticmethod
    def _send_quality(meter: CallMeter, m: endpoint_metrics_pb2.EndpointMetrics) -> None:
        """The E-model on the loss the far end reported between its two newest reports."""
        if meter.tx_loss_pct is None or meter.impairment is None:
            return
        delay_ms = meter.rtt_ms / 2 + meter.ptime_ms
        rating = emodel.rating(
            one_way_delay_ms=delay_ms, loss_pct=meter.tx_loss_pct, ie=meter.impairment.ie,
            bpl=meter.impairment.bpl if meter.plc else meter.impairment.bpl_no_plc,
        )
        m.tx_mos, m.tx_mos_lq = _mos(rating.r), _mos(rating.r_lq)
        m.tx_emodel_delay_ms = round(delay_ms)
        m.tx_emodel_id, m.tx_emodel_ie_eff = _tenths(rating.id), _tenths(rating.ie_eff)


def _stream(record: CallRecord, m: endpoint_metrics_pb2.EndpointMetrics) -> None:
    """What the call's live audio stream negotiated, its transport's sources, and its audio levels."""
    call, index = record.call, record.audio_index
    if call is None or index is None:
        return
    try:
        info = call.getStreamInfo(index)
        transport = call.getMedTransportInfo(index)
        audio = call.getAudioMedia(index)
        # pjsua2's names are the conference port's: its "rx" is what the bridge gives the call to
        # send, its "tx" what the call gives the bridge, i.e. what it received (pjsua.h).
        level_sent, level_received = audio.getRxLevel(), audio.getTxLevel()
    except pj.Error:
        return
    param = info.audCodecParam
    m.tx_pt, m.rx_pt = _u32(info.txPt), _u32(info.rxPt)
    m.dtmf_tx_pt, m.dtmf_rx_pt = _u32(info.audTxEventPt), _u32(info.audRxEventPt)
    m.clock_rate_khz = round(info.codecClockRate / 100)
    m.ptime_ms = param.info.frameLen * max(param.setting.frmPerPkt, 1)
    m.codec_bitrate_kbps = round(param.info.avgBps / 1000)
    m.srtp_active = bool(info.proto & pj.PJMEDIA_TP_PROFILE_SRTP)
    m.rtp_source_mismatch = _differs(transport.srcRtpName, info.remoteRtpAddress)
    m.rtcp_source_mismatch = _differs(transport.srcRtcpName, info.remoteRtcpAddress)
    m.audio_level_sent_pct, m.audio_level_received_pct = level_sent, level_received


def _differs(source: str, expected: str) -> bool:
    """Whether packets came from another address than expected (nothing received yet: no)."""
    return bool(source and expected and source != expected)


def _lifetime(m: endpoint_metrics_pb2.EndpointMetrics, stem: str, stat: pj.MathStat, parts: tuple[str, ...],
              divisor: int) -> None:
    """Sets {stem}_{part}_ms from a pjmedia statistic in µs divided by divisor (0 until it has a sample)."""
    if stat.n <= 0:
        return
    for part in parts:
        setattr(m, f"{stem}_{part}_ms", _u32(round(getattr(stat, part) / divisor)))


def _r(value: float) -> int:
    return round(max(value, 0.0) * 100)


def _tenths(value: float) -> int:
    return round(max(value, 0.0) * 10)


def _mos(r: float) -> int:
    return round(emodel.mos_from_r(r) * 100)


def _u32(value: int) -> int:
    return min(max(int(value), 0), _U32)


def _live_stat(record: CallRecord) -> pj.StreamStat | None:
    """Statistics of the call's live audio stream, or None when it has none right now."""
    if record.call is None or record.audio_index is None or record.meter is None:
        return None
    try:
        return record.call.getStreamStat(record.audio_index)
    except pj.Error:  # no stream at this moment, e.g. while a re-INVITE recreates it
        return None
