"""What a worker offers: engines from CALLMETER_MAX_ENGINES or, unset, from the machine's CPUs and
memory; fewer when the RTP range cannot give each its calls' ports, and a clear refusal when it
cannot hold one engine.

Seen before: a 200-port range split over 32 engines left 3 RTP/RTCP pairs for 4 phones per
engine, and every fourth call failed as a bare "SIP 500"; and the default pool (16 engines a
core) offered 128 endpoints on a 2-core machine that held 512 legs with no loss."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from callmeter.common.errors import ConfigError
from callmeter.v1 import engine_pb2
from services.worker.pool_size import Machine, this_machine
from services.worker.settings import WorkerSettings
from services.worker.supervisor import capacity_from, capacity_text

PROBED = engine_pb2.EngineReady(max_calls=4, max_accounts=8, codecs=["PCMU"])


def settings(port_min: int, port_max: int, max_engines: int | None) -> WorkerSettings:
    return WorkerSettings(rtp_port_min=port_min, rtp_port_max=port_max, max_engines=max_engines,
                          gateway_address="127.0.0.1:1", worker_token="cmw_x")


def test_a_wide_range_leaves_the_engine_count_as_set() -> None:
    s = settings(10000, 65535, 32)
    capacity = capacity_from(PROBED, s)
    assert (capacity.max_engines, capacity.max_endpoints) == (32, 128)
    assert capacity_text(capacity, s) == ("128 endpoints: 32 engines × 4, limited by CALLMETER_MAX_ENGINES=32 "
                                          "(also: 3471 by the RTP range 10000-65535 at 16 ports an engine)")


def test_a_narrow_range_gives_fewer_engines_each_with_its_calls_ports() -> None:
    s = settings(20000, 20199, 32)  # a 200-port firewall pinhole
    capacity = capacity_from(PROBED, s)
    assert (capacity.max_engines, capacity.max_endpoints) == (12, 48)  # 12 × 16 ports fit in 200
    assert "limited by the RTP range 20000-20199 at 16 ports an engine (also: 32 by CALLMETER_MAX_ENGINES=32)" in \
        capacity_text(capacity, s)


def test_a_range_too_small_for_one_engine_names_both_settings() -> None:
    with pytest.raises(ConfigError) as refused:
        capacity_from(PROBED, settings(20000, 20009, 32))
    assert "CALLMETER_RTP_PORT_MIN/_MAX" in str(refused.value) and "holds 10 ports; one engine needs 16" in str(refused.value)


def test_unset_the_pool_is_sized_from_the_machines_cpus_and_memory() -> None:
    s = settings(10000, 65535, None)
    two_cores = Machine(cores=2, memory_bytes=24 * 2**30)
    capacity = capacity_from(PROBED, s, two_cores)
    assert (capacity.max_engines, capacity.max_endpoints) == (80, 320)  # 2 × 60 % ÷ 1.5 %
    assert capacity_text(capacity, s, two_cores).startswith(
        "320 endpoints: 80 engines × 4, limited by 2 cores × 60 % at 1.5 % of a core an engine (also: 384 by 24.0 GiB")
    # A container with half a core and 1 GiB: the memory binds.
    small = Machine(cores=0.5, memory_bytes=2**30)
    assert capacity_from(PROBED, s, small).max_engines == 16
    assert "limited by 1.0 GiB available × 0.5 at 32 MB an engine" in capacity_text(capacity_from(PROBED, s, small), s, small)


def test_this_machine_reads_its_cgroup_limits(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    (tmp_path / "memory.max").write_text(f"{2 * 2**30}\n")
    (tmp_path / "memory.current").write_text(f"{2**30}\n")
    machine = this_machine(tmp_path)
    assert machine.cores == min(1.5, len(os.sched_getaffinity(0)))
    assert machine.memory_bytes <= 2**30
    unlimited = tmp_path / "none"
    unlimited.mkdir()
    (unlimited / "cpu.max").write_text("max 100000\n")
    assert this_machine(unlimited).cores == len(os.sched_getaffinity(0))
