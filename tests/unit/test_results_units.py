"""The pure parts of the results: which way is worse, the CLI's step, CSV cells and codes table."""

from __future__ import annotations

import argparse

import pytest

from callmeter.catalog import BY_NAME, LOW_IS_WORSE
from callmeter.cli.results import codes_text, csv_row, export_header, step_seconds
from callmeter.common import outcomes
from callmeter.v1 import endpoint_metrics_pb2, results_pb2, runs_pb2


def test_low_is_worse_names_catalog_metrics_and_keeps_quality_scores_low() -> None:
    assert LOW_IS_WORSE <= set(BY_NAME)
    assert {"mos", "r_factor", "mos_lq", "tx_mos"} <= LOW_IS_WORSE
    assert not {"rx_jitter_us", "rx_loss_pct", "rtt_us", "setup_time_ms", "calls_failed"} & LOW_IS_WORSE


@pytest.mark.parametrize(("text", "seconds"), [("5s", 5), ("5", 5), ("60s", 60), ("86400s", 86400)])
def test_step_is_a_whole_duration(text: str, seconds: int) -> None:
    assert step_seconds(text) == seconds


@pytest.mark.parametrize("text", ["0s", "-5s", "2.5s", "86401s", "5m", "soon", ""])
def test_step_refuses_what_is_not_a_whole_number_of_seconds(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        step_seconds(text)


def test_a_csv_row_is_in_units_with_empty_cells_where_not_measured() -> None:
    sample = results_pb2.EndpointSample(group="callers", endpoint=3, second=1_700_000_000,
                                        metrics=endpoint_metrics_pb2.EndpointMetrics(
                                            registered=True, call_active=True, mos=438, rx_jitter_us=2500))
    header = export_header()
    row = dict(zip(header, csv_row(sample, header[3:]), strict=True))
    assert (row["group"], row["endpoint"], row["second"]) == ("callers", 3, 1_700_000_000)
    assert (row["mos"], row["rx_jitter_us"], row["registered"]) == (4.38, 2.5, 1)
    assert row["rx_packets"] == 0, "a counter's 0 is measured"
    assert row["setup_time_ms"] == "" and row["rtt_us"] == "", "no event, no RTCP: not measured"


def test_codes_table_names_each_outcome_and_code() -> None:
    group = runs_pb2.GroupCodes(group="callers", calls_attempted=3, calls_failed=2, failures_by_code={0: 1, 486: 1},
                                outcomes=[results_pb2.OutcomeCount(outcome=outcomes.CALL_FAILED, sip_code=486,
                                                                   endpoints=2)])
    text = codes_text(runs_pb2.RunCodes(run_id="r", groups=[group], total=runs_pb2.GroupCodes()))
    assert text.splitlines() == ["run r: endpoints by outcome", "group    endpoints  outcome",
                                 "callers          2  call failed (SIP 486)", "", "failed calls by final SIP code",
                                 "group    SIP code  calls", "callers      none      1", "callers       486      1"]
    assert codes_text(runs_pb2.RunCodes(run_id="r")).splitlines()[1::3] == ["no outcome reported yet",
                                                                           "no call failed"]
