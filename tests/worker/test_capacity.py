"""What a worker offers: engines from CALLMETER_MAX_ENGINES, fewer when the RTP range cannot give
each its calls' ports, and a clear refusal when it cannot hold one engine.

Seen before: a 200-port range split over 32 engines left 3 RTP/RTCP pairs for 4 phones per
engine, and every fourth call failed as a bare "SIP 500"."""

from __future__ import annotations

import pytest

from callmeter.common.errors import ConfigError
from callmeter.v1 import engine_pb2
from services.worker.settings import WorkerSettings
from services.worker.supervisor import capacity_from, capacity_text

PROBED = engine_pb2.EngineReady(max_calls=4, max_accounts=8, codecs=["PCMU"])


def settings(port_min: int, port_max: int, max_engines: int) -> WorkerSettings:
    return WorkerSettings(rtp_port_min=port_min, rtp_port_max=port_max, max_engines=max_engines,
                          gateway_address="127.0.0.1:1", worker_token="cmw_x")


def test_a_wide_range_leaves_the_engine_count_as_set() -> None:
    s = settings(10000, 65535, 32)
    capacity = capacity_from(PROBED, s)
    assert (capacity.max_engines, capacity.max_endpoints) == (32, 128)
    assert capacity_text(capacity, s) == "128 endpoints: 32 engines × 4, limited by CALLMETER_MAX_ENGINES=32"


def test_a_narrow_range_gives_fewer_engines_each_with_its_calls_ports() -> None:
    s = settings(20000, 20199, 32)  # a 200-port firewall pinhole
    capacity = capacity_from(PROBED, s)
    assert (capacity.max_engines, capacity.max_endpoints) == (12, 48)  # 12 × 16 ports fit in 200
    assert "the RTP range 20000-20199 gives 12 engines of 16 ports each" in capacity_text(capacity, s)


def test_a_range_too_small_for_one_engine_names_both_settings() -> None:
    with pytest.raises(ConfigError) as refused:
        capacity_from(PROBED, settings(20000, 20009, 32))
    assert "CALLMETER_RTP_PORT_MIN/_MAX" in str(refused.value) and "holds 10 ports; one engine needs 16" in str(refused.value)
