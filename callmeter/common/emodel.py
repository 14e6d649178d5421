"""ITU-T G.107 E-model: transmission rating R and MOS from delay, packet loss and codec.

Pure functions of numbers (no pjsua2), implementing G.107 (06/2015) clause 7 with its default
values (Table 3) for everything the worker cannot measure: loudness ratings, room noise, sidetone,
echo loss. With every default, R = 93.2 and MOS = 4.41.

The worker feeds it, per endpoint-second: the one-way mouth-to-ear delay (half the RTCP round trip
plus packetization plus jitter-buffer delay), the receive-direction packet loss, how bursty that
loss was, and the codec's equipment impairment Ie and packet-loss robustness Bpl.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# G.107 Table 3 default values.
SLR = 8.0  # send loudness rating, dB
RLR = 2.0  # receive loudness rating, dB
STMR = 15.0  # sidetone masking rating, dB
LSTR = 18.0  # listener sidetone rating, dB
DS = 3.0  # D-value of telephone, send side
DR = 3.0  # D-value of telephone, receive side
TELR = 65.0  # talker echo loudness rating, dB
WEPL = 110.0  # weighted echo path loss, dB
QDU = 1.0  # number of quantization distortion units
NC = -70.0  # circuit noise referred to the 0 dBr point, dBm0p
NFOR = -64.0  # noise floor at the receive side, dBmp
PS = 35.0  # room noise at the send side, dB(A)
PR = 35.0  # room noise at the receive side, dB(A)
A = 0.0  # advantage factor

# G.107 Table 3 default robustness when nothing better is known; irrelevant without loss.
DEFAULT_BPL = 1.0


@dataclass(frozen=True)
class CodecImpairment:
    ie: float  # equipment impairment factor without loss
    bpl: float  # packet-loss robustness factor with the codec's loss concealment
    bpl_no_plc: float  # ... and without it (a lost frame is played as silence)


# Keyed by pjmedia's codec name (the part of the codec id before the first "/"), upper case.
# pjmedia conceals lost frames for every one of these in its default configuration: each
# codec's default CodecParam has setting.plc = 1 and the stream calls the codec's recover()
# for a frame the jitter buffer finds missing (G.711 through pjmedia_plc, a WSOLA concealer).
CODECS: dict[str, CodecImpairment] = {
    # G.711: Ie 0 (G.113 Table I.1); Bpl 25.1 with PLC (G.711 Appendix I), 4.3 without
    # (G.113 Table I.3, random loss).
    "PCMU": CodecImpairment(ie=0.0, bpl=25.1, bpl_no_plc=4.3),
    "PCMA": CodecImpairment(ie=0.0, bpl=25.1, bpl_no_plc=4.3),
    # GSM 06.10 full rate, 13 kbit/s: Ie 20 (G.113 Table I.1). G.113 gives no Bpl for the full
    # rate codec; provisional: 10.0, its value for GSM-EFR (Table I.3), the same family.
    "GSM": CodecImpairment(ie=20.0, bpl=10.0, bpl_no_plc=4.3),
    # iLBC (RFC 3951): no ITU-T values. Provisional: Ie 11 of G.729A (G.113 Table I.1), which
    # RFC 3951's authors rate it against; Bpl 25.1 of G.711 with PLC, because iLBC codes every
    # frame independently so that its loss response is "similar to PCM with PLC" (RFC 3951 sec. 1).
    "ILBC": CodecImpairment(ie=11.0, bpl=25.1, bpl_no_plc=4.3),
    # Speex (narrowband mode; the 16/32 kHz modes are scored the same on this narrowband
    # scale): no ITU-T values. Provisional: G.729A's Ie 11 and Bpl 19.0 (G.113 Tables I.1 and
    # I.3), a CELP codec of similar rate whose predictive state also carries loss forward.
    "SPEEX": CodecImpairment(ie=11.0, bpl=19.0, bpl_no_plc=4.3),
    # G.722 (64 kbit/s, wideband): G.113 rates it only on the wideband scale of G.107.1, whose
    # R reaches 129. This module reports the narrowband G.107 scale, on which a wideband codec
    # can at best match G.711: we give G.722 G.711's values (Ie 0, Bpl 25.1 with PLC), so its
    # MOS is comparable with G.711's and claims no wideband advantage.
    "G722": CodecImpairment(ie=0.0, bpl=25.1, bpl_no_plc=4.3),
}


def codec_impairment(codec: str) -> CodecImpairment | None:
    """Ie/Bpl for a pjmedia codec name or id ("PCMU", "speex/16000/1"); None if unknown."""
    return CODECS.get(codec.split("/", 1)[0].upper())


def burst_ratio(loss_pct: float, mean_burst_packets: float) -> float:
    """BurstR (G.107 clause 7.5): mean observed loss-burst length over the mean length expected
    for random loss at the same rate, 1 / (1 - Ppl). 1 for random loss, above 1 for bursty."""
    ppl = min(max(loss_pct, 0.0), 100.0) / 100.0
    if ppl <= 0.0 or mean_burst_packets <= 0.0:
        return 1.0
    return max(1.0, mean_burst_packets * (1.0 - ppl))


def r_factor(
    *,
    one_way_delay_ms: float = 0.0,
    loss_pct: float = 0.0,
    burst_r: float = 1.0,
    ie: float = 0.0,
    bpl: float = DEFAULT_BPL,
) -> float:
    """R = Ro - Is - Id - Ie,eff + A (G.107 clause 7.1).

    one_way_delay_ms is the mouth-to-ear delay Ta, taken also as the echo path delay T with the
    round trip Tr = 2 T, as G.107 does for a connection without separate echo paths.
    """
    return rating(one_way_delay_ms=one_way_delay_ms, loss_pct=loss_pct, burst_r=burst_r, ie=ie, bpl=bpl).r


@dataclass(frozen=True)
class Rating:
    """R and the impairments it was made of (G.107 clause 7.1)."""

    r: float  # Ro - Is - Id - Ie,eff + A: the conversational rating
    r_lq: float  # Ro - Is - Ie,eff + A: listening only, without the delay impairment Id
    id: float  # delay impairment (talker echo, listener echo, absolute delay)
    ie_eff: float  # effective equipment impairment: the codec plus packet loss


def rating(
    *,
    one_way_delay_ms: float = 0.0,
    loss_pct: float = 0.0,
    burst_r: float = 1.0,
    ie: float = 0.0,
    bpl: float = DEFAULT_BPL,
) -> Rating:
    """R as r_factor() computes it, with its delay and equipment impairments and the listening
    rating R_LQ, which leaves the delay impairment out (RFC 3611 4.7.5: MOS-LQ excludes the
    effects of delay, MOS-CQ includes them)."""
    t = max(one_way_delay_ms, 0.0)
    ro, no = _basic_signal_to_noise()
    listening = ro - _simultaneous_impairment(ro, no, t) - (ie_eff := _ie_eff(ie, bpl, loss_pct, burst_r)) + A
    delay = _delay_impairment(ro, no, t, t, 2 * t)
    return Rating(r=listening - delay, r_lq=listening, id=delay, ie_eff=ie_eff)


def mos_from_r(r: float) -> float:
    """Estimated conversational MOS from R (G.107 Annex B, equation B-4)."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6


def _basic_signal_to_noise() -> tuple[float, float]:
    """Ro and the total noise No (clause 7.2)."""
    olr = SLR + RLR
    nos = PS - SLR - DS - 100 + 0.004 * (PS - olr - DS - 14) ** 2
    pre = PR + 10 * math.log10(1 + 10 ** ((10 - LSTR) / 10))
    nor = RLR - 121 + pre + 0.008 * (pre - 35) ** 2
    nfo = NFOR + RLR
    no = 10 * math.log10(10 ** (NC / 10) + 10 ** (nos / 10) + 10 ** (nor / 10) + 10 ** (nfo / 10))
    return 15 - 1.5 * (SLR + no), no


def _simultaneous_impairment(ro: float, no: float, t: float) -> float:
    """Is = Iolr + Ist + Iq (clause 7.3)."""
    olr = SLR + RLR
    xolr = olr + 0.2 * (64 + no - RLR)
    iolr = 20 * ((1 + (xolr / 8) ** 8) ** (1 / 8) - xolr / 8)
    stmro = -10 * math.log10(10 ** (-STMR / 10) + math.exp(-t / 4) * 10 ** (-TELR / 10))
    ist = (
        12 * (1 + ((stmro - 13) / 6) ** 8) ** (1 / 8)
        - 28 * (1 + ((stmro + 1) / 19.4) ** 35) ** (1 / 35)
        - 13 * (1 + ((stmro - 3) / 33) ** 13) ** (1 / 13)
        + 29
    )
    q = 37 - 15 * math.log10(QDU)
    g = 1.07 + 0.258 * q + 0.0602 * q**2
    y = (ro - 100) / 15 + 46 / 8.4 - g / 9
    z = 46 / 30 - g / 40
    iq = 15 * math.log10(1 + 10**y + 10**z)
    return iolr + ist + iq


def _delay_impairment(ro: float, no: float, t: float, ta: float, tr: float) -> float:
    """Id = Idte + Idle + Idd (clause 7.4) with the default delay sensitivity (sT 1, mT 100).

    The clause's corrections for a sidetone below 9 dB or above 20 dB do not apply at the
    default STMR of 15 dB.
    """
    terv = TELR - 40 * math.log10((1 + t / 10) / (1 + t / 150)) + 6 * math.exp(-0.3 * t**2)
    roe = -1.5 * (no - RLR)
    re = 80 + 2.5 * (terv - 14)
    idte = ((roe - re) / 2 + math.sqrt((roe - re) ** 2 / 4 + 100) - 1) * (1 - math.exp(-t))
    rle = 10.5 * (WEPL + 7) * (tr + 1) ** -0.25
    idle = (ro - rle) / 2 + math.sqrt((ro - rle) ** 2 / 4 + 169)
    if ta <= 100:
        idd = 0.0
    else:
        x = math.log10(ta / 100) / math.log10(2)
        idd = 25 * ((1 + x**6) ** (1 / 6) - 3 * (1 + (x / 3) ** 6) ** (1 / 6) + 2)
    return idte + idle + idd


def _ie_eff(ie: float, bpl: float, loss_pct: float, burst_r: float) -> float:
    """Ie,eff = Ie + (95 - Ie) * Ppl / (Ppl / BurstR + Bpl) (clause 7.5), Ppl in percent."""
    ppl = min(max(loss_pct, 0.0), 100.0)
    if ppl == 0.0:
        return ie
    return ie + (95 - ie) * ppl / (ppl / max(burst_r, 1.0) + bpl)
