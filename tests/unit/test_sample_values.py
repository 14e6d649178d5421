"""catalog.sample_values: a sample in the catalog's units, 0 where measured, absent where not."""

from __future__ import annotations

from callmeter.catalog import _ZERO_MEASURED, BY_NAME, METRICS, sample_values
from callmeter.v1.endpoint_metrics_pb2 import EndpointMetrics


def test_every_metric_not_zero_is_given_in_its_unit() -> None:
    every = EndpointMetrics(**{m.name: True if m.proto_type == "bool" else 7 * m.scale for m in METRICS})
    values = sample_values(every)
    assert list(values) == [m.name for m in METRICS]
    assert all(values[m.name] == (True if m.proto_type == "bool" else 7) for m in METRICS), values


def test_the_wire_s_fixed_point_integers_become_units() -> None:
    """Seen: "mos": 438, "r_factor": 9200, "clock_rate_khz": 80 in `worker --local`'s lines."""
    values = sample_values(EndpointMetrics(call_active=True, rx_packets=50, mos=438, r_factor=9200, clock_rate_khz=80,
                                           rx_jitter_us=250, rtt_us=1500, setup_time_ms=12))
    assert (values["mos"], values["r_factor"], values["clock_rate_khz"]) == (4.38, 92.0, 8.0)
    assert (values["rx_jitter_us"], values["rtt_us"]) == (0.25, 1.5), "the catalog's unit for both is ms"
    assert values["setup_time_ms"] == 12 and isinstance(values["setup_time_ms"], int)
    assert values["call_active"] is True


def test_a_quiet_second_outside_a_call_has_its_counts_but_no_quality() -> None:
    values = sample_values(EndpointMetrics())
    assert values["calls_failed"] == 0 and values["rx_packets"] == 0, "a counter's 0 is measured: nothing happened"
    assert values["registered"] is False and values["call_active"] is False
    for name in ("mos", "r_factor", "rx_jitter_us", "rtt_us", "rx_loss_pct", "jb_delay_ms", "clock_rate_khz",
                 "setup_time_ms", "register_last_code", "register_expiry_left_s", "engine_cpu_pct"):
        assert name not in values, name


def test_in_a_call_a_zero_is_a_measurement_unless_nothing_was_computed() -> None:
    values = sample_values(EndpointMetrics(call_active=True, rx_packets=50, mos=420, tx_pt=0, rx_jitter_us=0))
    assert values["rx_jitter_us"] == 0 and values["rx_loss_pct"] == 0 and values["tx_pt"] == 0, "PCMU is type 0"
    assert values["r_factor_lq"] == 0, "rated by the E-model"
    for name in ("rtt_us", "rtt_min_ms", "tx_jitter_us", "tx_loss_pct", "tx_mos", "setup_time_ms", "first_rtp_ms"):
        assert name not in values, f"{name}: no RTCP round trip, no far-end report, no event this second"
    unrated = sample_values(EndpointMetrics(call_active=True))
    assert "r_factor" not in unrated and "rx_loss_pct" not in unrated, "nothing received: nothing rated"


def test_registration_figures_are_measured_while_registered() -> None:
    assert sample_values(EndpointMetrics(registered=True))["register_expiry_left_s"] == 0
    assert "register_expiry_left_s" not in sample_values(EndpointMetrics(registered=False))


def test_every_rule_names_a_catalog_metric() -> None:
    assert set(_ZERO_MEASURED) <= set(BY_NAME)
