"""The metrics catalog: every per-endpoint per-second metric, defined once.

The protobuf message ``EndpointMetrics`` (protos/callmeter/v1/endpoint_metrics.proto), the
ClickHouse columns and docs/metrics.md are generated from this list by ``make proto``; edit
here, never there. Field numbers are the list position plus one, so append new metrics at the
end and never reorder or delete one (mark it ``deprecated`` instead): stored data and old
workers depend on the numbers.

Values travel as integers in a fixed unit (``scale`` says how many units make one ``unit``),
so that a quiet endpoint-second costs a few bytes: proto3 omits zeros, varints stay short. An
in-call endpoint-second must stay within 250 bytes on the stream (tests/worker/test_catalog_real.py
measures it): choose units whose usual values are small, and report 0 where nothing happened.
``sample_values`` gives a sample back in units, telling a measured 0 from a metric not measured.

Every metric is measured or derived from pjsua2 (``source`` names where from); none is padding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

ProtoType = Literal["uint32", "sint32", "uint64", "bool"]
Kind = Literal["gauge", "counter", "state"]


@dataclass(frozen=True)
class Metric:
    name: str
    proto_type: ProtoType
    kind: Kind  # gauge: value at the end of the second; counter: increase during the second; state: a code
    unit: str
    description: str
    scale: int = 1  # stored integer = value * scale
    deprecated: bool = False
    source: str = ""  # where the worker gets it: the pjsua2 field or callback, or the derivation


def _m(name: str, proto_type: ProtoType, kind: Kind, unit: str, description: str, source: str,
       scale: int = 1) -> Metric:
    return Metric(name, proto_type, kind, unit, description, scale, source=source)


# Sources named in several metrics.
_CALL_TSX = "pjsua2 Call.onCallTsxState (sipstats.py)"
_REG = "pjsua2 Account.onRegState (sipstats.py)"
_RX = "pjsua2 StreamStat.rtcp.rxStat"
_TX = "pjsua2 StreamStat.rtcp.txStat (far end's RTCP RR)"
_JB = "pjsua2 StreamStat.jbuf"
_INFO = "pjsua2 Call.getStreamInfo()"
_EMODEL = "callmeter.common.emodel.rating()"
# Some values are about "the call": the phone's connected call if it has one, else its newest.
# Stream values come from the newest audio stream; lifetime statistics (min/mean/max) cover that
# stream since it started, as pjmedia keeps them (a hold or re-INVITE starts a new stream).

METRICS: tuple[Metric, ...] = (
    # Registration
    _m("registered", "bool", "state", "", "The endpoint holds a valid registration at the end of the second.",
       "pjsua2 Account.onRegState: 2xx with expiration > 0"),
    _m("register_attempts", "uint32", "counter", "", "REGISTER transactions the scenario started (the initial "
       "REGISTER and the un-REGISTER; pjsua's own refreshes are register_refreshes).", "pjsua2 Account.onRegStarted"),
    _m("register_failures", "uint32", "counter", "", "REGISTER transactions that ended without 2xx.",
       "pjsua2 Account.onRegState: code not 2xx"),
    _m("register_last_code", "uint32", "state", "", "Final SIP code of the newest REGISTER transaction.",
       "pjsua2 OnRegStateParam.code"),
    _m("register_time_ms", "uint32", "gauge", "ms", "Time from REGISTER to its final response, newest transaction "
       "the scenario started (pjsua does not report when its own refreshes start).",
       "pjsua2 Account.onRegStarted -> onRegState"),
    # Calls
    _m("calls_attempted", "uint32", "counter", "", "INVITEs sent (callers) or received (callees).",
       "pjsua2 Call.makeCall / Account.onIncomingCall"),
    _m("calls_connected", "uint32", "counter", "", "Calls that reached the confirmed state.",
       "pjsua2 Call.onCallState: CONFIRMED"),
    _m("calls_failed", "uint32", "counter", "", "Calls that ended without connecting.",
       "pjsua2 Call.onCallState: DISCONNECTED before CONFIRMED"),
    _m("call_last_code", "uint32", "state", "", "Final SIP code of the newest call's INVITE.",
       "pjsua2 CallInfo.lastStatusCode"),
    _m("call_active", "bool", "state", "", "A call is connected at the end of the second.",
       "pjsua2 Call.onCallState: CONFIRMED and not DISCONNECTED"),
    _m("setup_time_ms", "uint32", "gauge", "ms", "INVITE to 200 OK of the newest connected call.",
       "pjsua2 Call.onCallState: INVITE -> CONFIRMED"),
    _m("ring_time_ms", "uint32", "gauge", "ms", "INVITE to first 18x of the newest call (post-dial delay).",
       "pjsua2 Call.onCallState: INVITE -> EARLY 18x"),
    # Media, receive direction
    _m("rx_packets", "uint32", "counter", "", "RTP packets received.", f"{_RX}.pkt"),
    _m("rx_bytes", "uint32", "counter", "B", "RTP payload bytes received.", f"{_RX}.bytes"),
    _m("rx_lost", "uint32", "counter", "", "RTP packets lost in the receive direction (sequence gaps).",
       f"{_RX}.loss"),
    _m("rx_discarded", "uint32", "counter", "", "RTP packets received but discarded (late, duplicate, bad).",
       f"{_RX}.discard + {_JB}.discard / frames per packet"),
    _m("rx_reordered", "uint32", "counter", "", "RTP packets received out of order.", f"{_RX}.reorder"),
    _m("rx_jitter_us", "uint32", "gauge", "ms", "Interarrival jitter of received RTP (RFC 3550).",
       f"{_RX}.jitterUsec.last", 1000),
    _m("rx_loss_pct", "uint32", "gauge", "%", "Loss in the receive direction over the second.",
       "rx_lost / (rx_packets + rx_lost)", 100),
    # Media, send direction (as the far end reports it in RTCP)
    _m("tx_packets", "uint32", "counter", "", "RTP packets sent.", "pjsua2 StreamStat.rtcp.txStat.pkt"),
    _m("tx_bytes", "uint32", "counter", "B", "RTP payload bytes sent.", "pjsua2 StreamStat.rtcp.txStat.bytes"),
    _m("tx_lost", "uint32", "counter", "", "Sent packets the far end reports lost (RTCP RR).", f"{_TX}.loss"),
    _m("tx_jitter_us", "uint32", "gauge", "ms", "Jitter the far end reports for our stream (RTCP RR).",
       f"{_TX}.jitterUsec.last", 1000),
    _m("tx_loss_pct", "uint32", "gauge", "%", "Loss the far end reports for our stream.",
       f"{_TX}.loss and .pkt between the two newest reports", 100),
    # Round trip and quality
    _m("rtt_us", "uint32", "gauge", "ms", "Round-trip time from RTCP (last SR/RR).",
       "pjsua2 StreamStat.rtcp.rttUsec.last", 1000),
    _m("jb_delay_ms", "uint32", "gauge", "ms", "Jitter-buffer delay, average over the second.",
       f"{_JB}.size x frame length, read every 200 ms"),
    _m("r_factor", "uint32", "gauge", "", "E-model R factor (ITU-T G.107) for the second.", f"{_EMODEL}.r", 100),
    _m("mos", "uint32", "gauge", "",
       "Listening-conversational MOS (MOS-CQ) from the R factor (ITU-T G.107 Annex B).",
       "G.107 Annex B on r_factor", 100),
    # --- Added with the full catalog (field 29 on). ---
    # The call
    _m("call_state", "uint32", "state", "",
       "INVITE session state of the call at the end of the second (pjsip_inv_state): 1 calling, 2 incoming, "
       "3 early, 4 connecting, 5 confirmed, 6 disconnected; 0 no call.", "pjsua2 CallInfo.state (onCallState)"),
    _m("call_connected_s", "uint32", "gauge", "s", "How long the call has been connected, at the end of the second.",
       "pjsua2 CallInfo.connectDuration"),
    _m("call_setup_s", "uint32", "gauge", "s", "How long the call has been setting up (calling, ringing) at the end "
       "of the second; 0 once connected.", "pjsua2 CallInfo.totalDuration before CONFIRMED", 10),
    _m("media_hold", "uint32", "state", "", "Hold state of the call's audio: 1 held by this endpoint, 2 held by the far end; "
       "0 not held.", "pjsua2 CallMediaInfo.status (LOCAL_HOLD, REMOTE_HOLD)"),
    _m("media_dir", "uint32", "state", "", "Direction of the call's audio when not both ways: 1 send only, 2 receive only, "
       "3 inactive; 0 both ways (or no audio).", "pjsua2 CallMediaInfo.dir"),
    _m("calls_answered", "uint32", "counter", "", "Incoming calls this endpoint answered with 2xx (callees); "
       "more than calls_connected means an ACK never came.", _CALL_TSX + ": 2xx sent to an initial INVITE"),
    _m("calls_ended", "uint32", "counter", "", "Connected calls that ended (hung up either side).",
       "pjsua2 Call.onCallState: DISCONNECTED after CONFIRMED"),
    _m("call_end_code", "uint32", "gauge", "", "SIP code with which a connected call ended (200 for a BYE; 408, "
       "481, ... when it broke), in the second it ended.", "pjsua2 CallInfo.lastStatusCode at DISCONNECTED"),
    # SIP responses to INVITEs (initial and re-INVITEs), by class
    *(_m(f"invite_rx_{c}xx", "uint32", "counter", "", f"{c}xx responses received to INVITEs this endpoint sent "
         "(except those pjsua answers itself, see invite_retries).",
         _CALL_TSX + ": UAC INVITE, RX_MSG; a final one that ends the call: Call.onCallState DISCONNECTED")
      for c in range(1, 7)),
    *(_m(f"invite_tx_{c}xx", "uint32", "counter", "", f"{c}xx responses this endpoint sent to INVITEs it received.",
         _CALL_TSX + ": UAS INVITE, TX_MSG; a final one that ends the call: Call.onCallState DISCONNECTED")
      for c in range(1, 7)),
    _m("invite_retries", "uint32", "counter", "", "INVITEs pjsua sent again after a response it handled itself "
       "(e.g. a 401/407 digest challenge, answered with the phone's credentials); that response is not in "
       "invite_rx_*.", _CALL_TSX + ": a second UAC INVITE before the first's final response"),
    # SIP timings of the call's transactions (each reported in the second it completes)
    _m("trying_time_ms", "uint32", "gauge", "ms", "INVITE sent to 100 Trying received (callers).",
       _CALL_TSX + ": UAC INVITE CALLING -> 100", 10),
    _m("answer_time_ms", "uint32", "gauge", "ms", "INVITE received to 2xx sent (callees; includes the answer delay).",
       "pjsua2 Account.onIncomingCall -> Call.onCallTsxState 2xx sent"),
    _m("ack_time_ms", "uint32", "gauge", "ms", "2xx sent to its ACK received (callees).",
       _CALL_TSX + ": UAS INVITE 2xx sent -> terminated by the ACK", 10),
    _m("call_fail_time_ms", "uint32", "gauge", "ms", "INVITE sent to its final failure response (3xx-6xx).",
       _CALL_TSX + ": UAC INVITE CALLING -> Call.onCallState DISCONNECTED by a final >= 300"),
    _m("reinvites_sent", "uint32", "counter", "", "re-INVITEs sent (hold, unhold, media updates).",
       _CALL_TSX + ": UAC INVITE on a confirmed call"),
    _m("reinvites_received", "uint32", "counter", "", "re-INVITEs received.",
       _CALL_TSX + ": UAS INVITE on a confirmed call"),
    _m("reinvite_time_ms", "uint32", "gauge", "ms", "re-INVITE sent to its final response.",
       _CALL_TSX + ": UAC re-INVITE CALLING -> final", 10),
    _m("byes_sent", "uint32", "counter", "", "BYEs sent (this endpoint hung up a connected call).",
       "pjsua2 Call.hangup of a confirmed call (sipstats.py)"),
    _m("byes_received", "uint32", "counter", "", "BYEs received (the far end hung up).", _CALL_TSX + ": UAS BYE"),
    _m("cancels_sent", "uint32", "counter", "", "CANCELs sent: outgoing calls hung up before an answer.",
       "pjsua2 Call.hangup before CONFIRMED (sipstats.py)"),
    _m("cancels_received", "uint32", "counter", "", "CANCELs received.", _CALL_TSX + ": UAS CANCEL"),
    _m("infos_sent", "uint32", "counter", "", "INFO requests sent (e.g. SIP INFO DTMF).", _CALL_TSX + ": UAC INFO"),
    _m("infos_received", "uint32", "counter", "", "INFO requests received.", _CALL_TSX + ": UAS INFO"),
    _m("info_time_ms", "uint32", "gauge", "ms", "INFO sent to its final response.", _CALL_TSX + ": UAC INFO", 10),
    _m("sip_transport_errors", "uint32", "counter", "",
       "SIP requests (call transactions, REGISTERs) that could not be sent: e.g. TCP/TLS connection refused.",
       _CALL_TSX + " / onCallState: TRANSPORT_ERROR; " + _REG + ": no response, code not 408"),
    _m("sip_timeouts", "uint32", "counter", "",
       "SIP transactions (calls, REGISTERs) that got no final response before their timer (Timer B/F, 32 s).",
       _CALL_TSX + " / onCallState: TERMINATED by TIMER before COMPLETED; " + _REG + ": 408 without response"),
    # DTMF
    _m("dtmf_sent_rfc2833", "uint32", "counter", "", "DTMF digits sent as RFC 2833/4733 telephone events.",
       "pjsua2 Call.sendDtmf (RFC2833 method)"),
    _m("dtmf_sent_info", "uint32", "counter", "", "DTMF digits sent as SIP INFO.", "pjsua2 Call.sendDtmf (SIP_INFO method)"),
    _m("dtmf_received_rfc2833", "uint32", "counter", "", "DTMF digits received as RFC 2833/4733 telephone events.",
       "pjsua2 Call.onDtmfDigit (method RFC2833)"),
    _m("dtmf_received_info", "uint32", "counter", "", "DTMF digits received as SIP INFO.",
       "pjsua2 Call.onDtmfDigit (method SIP_INFO)"),
    _m("dtmf_received_duration_ms", "uint32", "gauge", "ms", "Duration of the newest DTMF digit received, at its end.",
       "pjsua2 Call.onDtmfEvent (flag IS_END).duration"),
    # Registration details
    *(_m(f"register_{c}xx", "uint32", "counter", "", f"REGISTERs whose final response from the registrar was {c}xx "
         "(after any digest challenge pjsua answered itself).", _REG + ": code with a response") for c in range(2, 7)),
    _m("register_refreshes", "uint32", "counter", "", "REGISTER refreshes pjsua sent on its own before the expiry, "
       "counted when they complete.", _REG + ": a final response while registered, no un-REGISTER started"),
    _m("unregisters", "uint32", "counter", "", "Un-REGISTERs (expires 0) started.",
       "pjsua2 Account.onRegStarted (renew false)"),
    _m("registrations_lost", "uint32", "counter", "", "Registrations that ended without an un-REGISTER "
       "(a refresh failed or was refused).", _REG + ": registered -> not registered, no unregister started"),
    _m("register_refresh_in_s", "uint32", "gauge", "s", "Seconds until pjsua refreshes the registration.",
       "pjsua2 AccountInfo.regExpiresSec (pjsip_regc next_reg)"),
    _m("register_expiry_left_s", "uint32", "gauge", "s", "Seconds the registration has left before it expires.",
       _REG + ": granted expiration - time since that 2xx"),
    _m("register_granted_s", "uint32", "gauge", "s", "Expiry the registrar granted in the newest 2xx to REGISTER.",
       "pjsua2 OnRegStateParam.expiration"),
    _m("register_bindings", "uint32", "gauge", "", "Contact bindings the registrar listed in its newest 2xx to REGISTER "
       "(this and other devices of the AOR).", "pjsua2 OnRegStateParam.rdata.wholeMsg: Contact headers"),
    # Codec and stream
    _m("tx_pt", "uint32", "state", "", "RTP payload type this endpoint sends.", f"{_INFO}.txPt"),
    _m("rx_pt", "uint32", "state", "", "RTP payload type this endpoint expects.", f"{_INFO}.rxPt"),
    _m("dtmf_tx_pt", "uint32", "state", "", "Payload type of RFC 2833 telephone events sent; 0 not negotiated.",
       f"{_INFO}.audTxEventPt"),
    _m("dtmf_rx_pt", "uint32", "state", "", "Payload type of RFC 2833 telephone events received; 0 not negotiated.",
       f"{_INFO}.audRxEventPt"),
    _m("clock_rate_khz", "uint32", "state", "kHz", "Codec clock rate.", f"{_INFO}.codecClockRate", 10),
    _m("ptime_ms", "uint32", "state", "ms", "Audio per RTP packet (packetization time).",
       f"{_INFO}.audCodecParam: info.frameLen x setting.frmPerPkt"),
    _m("codec_bitrate_kbps", "uint32", "state", "kbit/s", "Codec average bit rate.",
       f"{_INFO}.audCodecParam.info.avgBps"),
    _m("srtp_active", "bool", "state", "", "The audio stream is SRTP (RTP/SAVP).", f"{_INFO}.proto has PROFILE_SRTP"),
    _m("stream_age_s", "uint32", "gauge", "s", "Age of the newest audio stream, which its lifetime statistics "
       "(min/mean/max) cover: it restarts with a hold or re-INVITE.", "pjsua2 StreamStat.rtcp.start"),
    _m("media_streams_ended", "uint32", "counter", "", "Audio streams that ended (hang-up, or a re-INVITE that "
       "recreated them).", "pjsua2 Call.onStreamDestroyed"),
    _m("rtp_source_mismatch", "bool", "state", "", "RTP arrives from another address than the far end's SDP gave "
       "(NAT; pjmedia then sends to the source).", "pjsua2 Call.getMedTransportInfo().srcRtpName vs "
       f"{_INFO}.remoteRtpAddress"),
    _m("rtcp_source_mismatch", "bool", "state", "", "RTCP arrives from another address than the SDP implies.",
       f"pjsua2 Call.getMedTransportInfo().srcRtcpName vs {_INFO}.remoteRtcpAddress"),
    # Receive direction, measured here
    _m("rx_duplicates", "uint32", "counter", "", "Duplicate RTP packets received.", f"{_RX}.dup"),
    _m("rx_seq_discarded", "uint32", "counter", "", "RTP packets dropped for a bad sequence number (part of rx_discarded).",
       f"{_RX}.discard"),
    _m("rx_loss_periods", "uint32", "counter", "", "Loss bursts in the receive direction (runs of lost packets).",
       f"{_RX}.lossPeriodUsec.n"),
    _m("rx_loss_period_min_ms", "uint32", "gauge", "ms", "Shortest receive loss burst of the stream.",
       f"{_RX}.lossPeriodUsec.min"),
    _m("rx_loss_period_mean_ms", "uint32", "gauge", "ms", "Mean receive loss burst of the stream.",
       f"{_RX}.lossPeriodUsec.mean"),
    _m("rx_loss_period_max_ms", "uint32", "gauge", "ms", "Longest receive loss burst of the stream.",
       f"{_RX}.lossPeriodUsec.max"),
    _m("rx_loss_period_last_ms", "uint32", "gauge", "ms", "Newest receive loss burst.", f"{_RX}.lossPeriodUsec.last"),
    _m("rx_jitter_min_ms", "uint32", "gauge", "ms", "Lowest receive jitter of the stream (pjmedia starts its estimate "
       "after 25 packets, from |D|/16 in whole samples).", f"{_RX}.jitterUsec.min", 10),
    _m("rx_jitter_mean_ms", "uint32", "gauge", "ms", "Mean receive jitter of the stream.", f"{_RX}.jitterUsec.mean", 10),
    _m("rx_jitter_max_ms", "uint32", "gauge", "ms", "Highest receive jitter of the stream.", f"{_RX}.jitterUsec.max", 10),
    _m("rtcp_sent", "uint32", "counter", "", "RTCP reports (SR/RR) this endpoint sent.", f"{_RX}.updateCount"),
    _m("rtcp_tx_interval_s", "uint32", "gauge", "s", "Interval between this endpoint's two newest RTCP reports "
       "(reported in the second of the newer).", f"{_RX}.update", 10),
    # Send direction, as the far end reports it (RTCP receiver reports)
    _m("rtcp_received", "uint32", "counter", "", "RTCP reports received with a report block about our stream.",
       f"{_TX}.updateCount"),
    _m("rtcp_rx_interval_s", "uint32", "gauge", "s", "Interval between the two newest RTCP reports received "
       "(reported in the second of the newer).", f"{_TX}.update", 10),
    _m("tx_jitter_min_ms", "uint32", "gauge", "ms", "Lowest jitter the far end reported for our stream.",
       f"{_TX}.jitterUsec.min", 10),
    _m("tx_jitter_mean_ms", "uint32", "gauge", "ms", "Mean jitter the far end reported for our stream.",
       f"{_TX}.jitterUsec.mean", 10),
    _m("tx_jitter_max_ms", "uint32", "gauge", "ms", "Highest jitter the far end reported for our stream.",
       f"{_TX}.jitterUsec.max", 10),
    _m("tx_loss_periods", "uint32", "counter", "", "Far-end reports that announced new losses of our packets.",
       f"{_TX}.lossPeriodUsec.n"),
    _m("tx_loss_period_min_ms", "uint32", "gauge", "ms", "Fewest packets (as time) lost between two far-end reports "
       "that announced losses.", f"{_TX}.lossPeriodUsec.min"),
    _m("tx_loss_period_mean_ms", "uint32", "gauge", "ms", "Mean of the same.", f"{_TX}.lossPeriodUsec.mean"),
    _m("tx_loss_period_max_ms", "uint32", "gauge", "ms", "Most of the same.", f"{_TX}.lossPeriodUsec.max"),
    _m("tx_loss_period_last_ms", "uint32", "gauge", "ms", "Newest of the same.", f"{_TX}.lossPeriodUsec.last"),
    # Round trip
    _m("rtt_samples", "uint32", "counter", "", "RTCP round-trip measurements (RR answering our SR).",
       "pjsua2 StreamStat.rtcp.rttUsec.n"),
    _m("rtt_min_ms", "uint32", "gauge", "ms", "Lowest RTCP round trip of the stream.", "pjsua2 StreamStat.rtcp.rttUsec.min", 10),
    _m("rtt_mean_ms", "uint32", "gauge", "ms", "Mean RTCP round trip of the stream.", "pjsua2 StreamStat.rtcp.rttUsec.mean", 10),
    _m("rtt_max_ms", "uint32", "gauge", "ms", "Highest RTCP round trip of the stream.", "pjsua2 StreamStat.rtcp.rttUsec.max", 10),
    # Jitter buffer (receive direction)
    _m("jb_size_frames", "uint32", "gauge", "", "Frames in the jitter buffer at the end of the second.", f"{_JB}.size"),
    _m("jb_prefetch_frames", "uint32", "gauge", "", "Current prefetch (frames the buffer waits for before playing).",
       f"{_JB}.prefetch"),
    _m("jb_burst_frames", "uint32", "gauge", "", "Current burst level the buffer adapts to, in frames.", f"{_JB}.burst"),
    _m("jb_avg_delay_ms", "uint32", "gauge", "ms", "Mean jitter-buffer delay of the stream.", f"{_JB}.avgDelayMsec"),
    _m("jb_min_delay_ms", "uint32", "gauge", "ms", "Lowest jitter-buffer delay of the stream.", f"{_JB}.minDelayMsec"),
    _m("jb_max_delay_ms", "uint32", "gauge", "ms", "Highest jitter-buffer delay of the stream.", f"{_JB}.maxDelayMsec"),
    _m("jb_dev_delay_ms", "uint32", "gauge", "ms", "Standard deviation of the jitter-buffer delay of the stream.",
       f"{_JB}.devDelayMsec"),
    _m("jb_avg_burst_frames", "uint32", "gauge", "", "Mean burst of the stream, in frames.", f"{_JB}.avgBurst"),
    _m("jb_lost_frames", "uint32", "counter", "", "Frames the jitter buffer found missing (concealed by PLC).",
       f"{_JB}.lost"),
    _m("jb_discarded_frames", "uint32", "counter", "", "Frames the jitter buffer discarded (late or too many).",
       f"{_JB}.discard"),
    _m("jb_empty_events", "uint32", "counter", "", "Times the player found the jitter buffer empty.", f"{_JB}.empty"),
    _m("jb_frame_bytes", "uint32", "state", "B", "Size of one jitter-buffer frame.", f"{_JB}.frameSize"),
    _m("jb_min_prefetch_frames", "uint32", "state", "", "Lowest prefetch the buffer may adapt to.", f"{_JB}.minPrefetch"),
    _m("jb_max_prefetch_frames", "uint32", "state", "", "Highest prefetch the buffer may adapt to.", f"{_JB}.maxPrefetch"),
    _m("jb_delay_max_ms", "uint32", "gauge", "ms", "Highest jitter-buffer delay among the second's readings.",
       f"{_JB}.size x frame length, read every 200 ms"),
    # Audio signal
    _m("audio_level_sent_pct", "uint32", "gauge", "%", "Level of the audio the call sends, at the end of the second.",
       "pjsua2 AudioMedia.getRxLevel() of the call (bridge -> call)"),
    _m("audio_level_received_pct", "uint32", "gauge", "%", "Level of the audio received from the far end, at the end "
       "of the second.", "pjsua2 AudioMedia.getTxLevel() of the call (call -> bridge)"),
    _m("media_start_ms", "uint32", "gauge", "ms", "INVITE (sent or received) to the call's audio stream starting "
       "(SDP negotiated, media connected).", "pjsua2 Call.onCallMediaState, as the scenario connects the audio"),
    _m("first_rtp_ms", "uint32", "gauge", "ms", "INVITE (sent or received) to the first RTP packet received "
       "(time to audio; resolution: the engine's poll interval).", f"{_RX}.pkt polled every loop"),
    # E-model, receive direction (inputs and parts of r_factor)
    _m("emodel_delay_ms", "uint32", "gauge", "ms", "One-way delay Ta the E-model used: RTT/2 + ptime + jitter buffer.",
       "rtt (median of 3) / 2 + ptime_ms + jb_delay_ms"),
    _m("emodel_id", "uint32", "gauge", "", "Delay impairment Id.", f"{_EMODEL}.id", 10),
    _m("emodel_ie_eff", "uint32", "gauge", "", "Effective equipment impairment Ie,eff (codec and loss).",
       f"{_EMODEL}.ie_eff", 10),
    _m("emodel_burst_r", "uint32", "gauge", "", "Burst ratio BurstR of the second's loss (1 random, >1 bursty); "
       "0 without loss.", "callmeter.common.emodel.burst_ratio(rx loss, rx_lost / rx_loss_periods)", 100),
    _m("r_factor_lq", "uint32", "gauge", "", "Listening R: R without the delay impairment.", f"{_EMODEL}.r_lq", 100),
    _m("mos_lq", "uint32", "gauge", "", "Listening-quality MOS (MOS-LQ) from r_factor_lq.", "G.107 Annex B on r_factor_lq",
       100),
    # E-model, send direction (from the far end's RTCP reports; its jitter buffer is unknown here)
    _m("tx_emodel_delay_ms", "uint32", "gauge", "ms", "One-way delay for the send direction: RTT/2 + ptime "
       "(without the far end's jitter buffer).", "rtt (median of 3) / 2 + ptime_ms"),
    _m("tx_emodel_id", "uint32", "gauge", "", "Delay impairment Id, send direction.", f"{_EMODEL}.id", 10),
    _m("tx_emodel_ie_eff", "uint32", "gauge", "", "Ie,eff on the loss the far end reports.", f"{_EMODEL}.ie_eff", 10),
    _m("tx_mos", "uint32", "gauge", "", "MOS-CQ of the send direction (an upper bound: the far end's jitter buffer "
       "is not counted).", f"G.107 Annex B on {_EMODEL}.r for tx_loss_pct", 100),
    _m("tx_mos_lq", "uint32", "gauge", "", "MOS-LQ of the send direction.",
       f"G.107 Annex B on {_EMODEL}.r_lq for tx_loss_pct", 100),
    # The load generator's own state (callmeter/common/generator_load.py): one sample per engine
    # per second carries the engine's figures (its first phone's), one per run per second on each
    # worker the supervisor's; 0 on the others.
    _m("engine_lag_ms", "uint32", "gauge", "ms", "How late after the second ended the engine's loop took its "
       "samples: the generator's own lateness (a starved CPU, a slow callback).",
       "engine loop: wall clock at sampling - end of the second (engine.py)", 10),
    _m("engine_cpu_pct", "uint32", "gauge", "%", "CPU the engine process used in the second, in percent of one core.",
       "time.process_time() of the engine process over the second (engine.py)"),
    _m("worker_lag_ms", "uint32", "gauge", "ms", "How late the worker's supervisor loop ran in the second (worst "
       "wake-up of a 50 ms timer).", "services/worker/loop_lag.py"),
    # The endpoint's outcome so far (callmeter/common/outcomes.py): its newest sample holds how it ended.
    _m("outcome", "uint32", "state", "", "How the endpoint's scenario has gone so far: 0 running without a "
       "failure, 1 success, 2 warnings, 3 registration failed, 4 call failed, 5 negotiation failed, 6 timeout, "
       "7 teardown error, 8 not called, 9 engine error, 10 callee failed (callmeter.v1.EndpointOutcome). The first "
       "failure decides it.",
       "the scenario driver (scenario.py)"),
    _m("outcome_code", "uint32", "state", "", "The final SIP code received with the failure that decided the "
       "outcome; 0 when there was none (a timeout, a local error).", "the scenario driver (scenario.py)"),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}

#: Metrics of which a low value is the bad one: quality scores, and what a working call should
#: have (a registration, connected calls, media received). For every other metric a high value is
#: worse (times, jitter, loss, failures, errors). The worst endpoints of a run are ordered by this.
LOW_IS_WORSE: frozenset[str] = frozenset({
    "mos", "mos_lq", "tx_mos", "tx_mos_lq", "r_factor", "r_factor_lq",
    "registered", "calls_connected", "calls_answered", "call_active", "call_connected_s",
    "rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "audio_level_received_pct",
})


# When a metric's 0 is a measurement (a value other than 0 always is), for sample_values. Without
# an entry: a counter's 0 always is (nothing happened), a gauge's or a state's while a call is connected.
_ZERO_MEASURED: dict[str, Callable[[Any], bool]] = {
    **dict.fromkeys(("registered", "call_active", "call_state", "outcome"), lambda m: True),
    # 0 is no event in the second, no SIP code, nothing computed (a MOS is never below 1)
    **dict.fromkeys(("register_last_code", "call_last_code", "call_end_code", "outcome_code", "register_time_ms",
                     "setup_time_ms", "ring_time_ms", "trying_time_ms", "answer_time_ms", "ack_time_ms",
                     "call_fail_time_ms", "reinvite_time_ms", "info_time_ms", "dtmf_received_duration_ms",
                     "media_start_ms", "first_rtp_ms", "rtcp_tx_interval_s", "rtcp_rx_interval_s", "call_setup_s",
                     "dtmf_tx_pt", "dtmf_rx_pt", "mos", "mos_lq", "tx_mos", "tx_mos_lq", "rtt_us",
                     *(f"{d}_loss_period_{p}_ms" for d in ("rx", "tx") for p in ("min", "mean", "max", "last")),
                     "engine_lag_ms", "engine_cpu_pct", "worker_lag_ms"), lambda m: False),
    **dict.fromkeys(("register_refresh_in_s", "register_expiry_left_s", "register_granted_s", "register_bindings"),
                    lambda m: m.registered),
    "rx_loss_pct": lambda m: m.rx_packets + m.rx_lost > 0,
    # The E-model's parts when it rated the second; the far end's figures once it has reported.
    **dict.fromkeys(("r_factor", "r_factor_lq", "emodel_delay_ms", "emodel_id", "emodel_ie_eff", "emodel_burst_r"),
                    lambda m: m.mos > 0),
    **dict.fromkeys(("tx_emodel_delay_ms", "tx_emodel_id", "tx_emodel_ie_eff", "tx_loss_pct", "tx_jitter_us",
                     "tx_jitter_min_ms", "tx_jitter_mean_ms", "tx_jitter_max_ms"), lambda m: m.tx_mos > 0),
    **dict.fromkeys(("rtt_min_ms", "rtt_mean_ms", "rtt_max_ms"), lambda m: m.rtt_us > 0),
}


def sample_values(metrics: Any) -> dict[str, float | int | bool]:
    """An ``EndpointMetrics`` message as people and scripts read it: each measured metric in its
    unit (``mos`` 4.38, ``clock_rate_khz`` 8.0, ``rx_jitter_us`` in ms as the catalog gives it),
    in catalog order, a 0 included where it was measured; a metric not measured in the second
    (no call for a quality figure, no event for a time, no RTCP round trip yet) is left out.
    Every output of single samples uses this (`callmeter worker --local`'s sample lines)."""
    values: dict[str, float | int | bool] = {}
    for metric in METRICS:
        stored = getattr(metrics, metric.name)
        rule = _ZERO_MEASURED.get(metric.name)
        zero_measured = rule(metrics) if rule else metric.kind == "counter" or metrics.call_active
        if not metric.deprecated and (stored or zero_measured):
            values[metric.name] = stored if metric.scale == 1 else stored / metric.scale
    return values
