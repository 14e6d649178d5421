"""The E-model against G.107's reference points and its monotonicity."""

from __future__ import annotations

import pytest

from callmeter.common import emodel


def test_all_defaults_give_the_standard_reference_values() -> None:
    r = emodel.r_factor()
    assert r == pytest.approx(93.2, abs=0.05)
    assert emodel.mos_from_r(r) == pytest.approx(4.41, abs=0.005)


def test_g711_at_two_percent_random_loss_with_and_without_concealment() -> None:
    g711 = emodel.codec_impairment("PCMU/8000/1")
    assert g711 is not None and g711.ie == 0
    with_plc = emodel.mos_from_r(emodel.r_factor(loss_pct=2, ie=g711.ie, bpl=g711.bpl))
    without = emodel.mos_from_r(emodel.r_factor(loss_pct=2, ie=g711.ie, bpl=g711.bpl_no_plc))
    assert with_plc == pytest.approx(4.24, abs=0.01)
    assert without == pytest.approx(3.26, abs=0.01)


def test_mos_mapping_ends_and_clamps() -> None:
    assert emodel.mos_from_r(-5) == 1.0
    assert emodel.mos_from_r(0) == 1.0
    assert emodel.mos_from_r(100) == 4.5
    assert emodel.mos_from_r(120) == 4.5
    assert emodel.mos_from_r(50) == pytest.approx(2.58, abs=0.005)


def test_quality_falls_as_delay_grows() -> None:
    delays = [0, 20, 50, 100, 150, 200, 300, 400, 600]
    rs = [emodel.r_factor(one_way_delay_ms=d) for d in delays]
    assert rs == sorted(rs, reverse=True)
    assert rs[-1] < rs[0] - 30  # long delays matter (Idd), short ones barely
    assert rs[0] - rs[3] < 3


def test_quality_falls_as_loss_grows_and_concealment_helps() -> None:
    g711 = emodel.CODECS["PCMA"]
    losses = [0, 0.5, 1, 2, 5, 10, 20, 50]
    with_plc = [emodel.r_factor(loss_pct=p, bpl=g711.bpl) for p in losses]
    without = [emodel.r_factor(loss_pct=p, bpl=g711.bpl_no_plc) for p in losses]
    assert with_plc == sorted(with_plc, reverse=True)
    assert without == sorted(without, reverse=True)
    assert all(a > b for a, b in zip(with_plc[1:], without[1:]))


def test_bursty_loss_hurts_more_than_random_loss() -> None:
    random_loss = emodel.r_factor(loss_pct=5, bpl=25.1, burst_r=1)
    bursty = emodel.r_factor(loss_pct=5, bpl=25.1, burst_r=3)
    assert bursty < random_loss


def test_burst_ratio() -> None:
    assert emodel.burst_ratio(0, 0) == 1.0
    assert emodel.burst_ratio(10, 1 / 0.9) == pytest.approx(1.0)  # random loss: bursts of 1/(1-p)
    assert emodel.burst_ratio(10, 4) == pytest.approx(3.6)
    assert emodel.burst_ratio(10, 1) == 1.0  # never below random


def test_codec_impairments() -> None:
    assert emodel.codec_impairment("GSM").ie == 20
    assert emodel.codec_impairment("speex/16000/1") == emodel.codec_impairment("SPEEX")
    assert emodel.codec_impairment("iLBC/8000/1") is emodel.CODECS["ILBC"]
    assert emodel.codec_impairment("G722/16000/1") is not None
    assert emodel.codec_impairment("L16/44100/1") is None
    # A worse codec never scores better at the same conditions.
    assert emodel.r_factor(ie=emodel.CODECS["GSM"].ie) < emodel.r_factor(ie=emodel.CODECS["PCMU"].ie)
