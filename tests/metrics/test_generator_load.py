"""The load generator's own load in the run summary (callmeter/common/generator_load.py): through
real JetStream into the embedded store, per worker and for the run, each second counted once."""

from __future__ import annotations

from pathlib import Path

import nats
import pytest

from callmeter.common.stores.nats import EmbeddedNats
from services.metrics import queries
from tests.metrics.helpers import BASE_SECOND, count_rows, eventually, ingest_settings, make_batch, publish, run, running_ingest

pytestmark = pytest.mark.timeout(120)


def test_overloaded_seconds_are_counted_per_worker_and_once_for_the_run(tmp_path: Path,
                                                                         nats_server: EmbeddedNats) -> None:
    """w1's engine is 2.5 s late in seconds 3-5, w2's engine at 95 % CPU in seconds 5-6; the
    other seconds are ordinary (a few ms late, 20 % CPU). The run: seconds 3-6, four of them."""
    batches = []
    for second in range(10):
        w1_lag = 25000 if 3 <= second <= 5 else 30  # stored in tenths of a ms
        w2_cpu = 95 if second in (5, 6) else 20
        batches.append(make_batch("load", "w1", second, "callers", range(0, 1), BASE_SECOND + second,
                                  engine_lag_ms=w1_lag, engine_cpu_pct=20))
        batches.append(make_batch("load", "w1", 100 + second, "callers", range(1, 2), BASE_SECOND + second))
        batches.append(make_batch("load", "w2", second, "callees", range(0, 2), BASE_SECOND + second,
                                  engine_cpu_pct=w2_cpu, worker_lag_ms=4))

    async def body() -> None:
        async with running_ingest(ingest_settings(tmp_path, nats_server.url)) as ingest:
            nc = await nats.connect(nats_server.url)
            for batch in batches:
                await publish(nc.jetstream(), batch)
            await eventually(lambda: ingest.store.call(lambda c: count_rows(c, "load") == 40), message="stored")
            summary = await ingest.store.call(queries.run_summary, "load", ["callers", "callees"])
            await nc.close()
        assert summary.total.overloaded_s == 4
        loads = {load.worker: load for load in summary.workers}
        assert (loads["w1"].overloaded_s, loads["w1"].engine_lag_ms_max, loads["w1"].engine_cpu_pct_max) == (3, 2500, 20)
        assert (loads["w2"].overloaded_s, loads["w2"].engine_cpu_pct_max, loads["w2"].worker_lag_ms_max) == (2, 95, 4)
        assert loads["w1"].worker_lag_ms_max == 0 and loads["w2"].engine_lag_ms_max == 0

    run(body())


def test_a_run_whose_workers_measured_no_load_has_no_overload_figure(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    async def body() -> None:
        async with running_ingest(ingest_settings(tmp_path, nats_server.url)) as ingest:
            nc = await nats.connect(nats_server.url)
            await publish(nc.jetstream(), make_batch("old", "w1", 1, "callers", range(2), BASE_SECOND, calls_attempted=1))
            await eventually(lambda: ingest.store.call(lambda c: count_rows(c, "old") == 2), message="stored")
            summary = await ingest.store.call(queries.run_summary, "old", ["callers"])
            await nc.close()
        assert not summary.total.HasField("overloaded_s") and not summary.workers, "not measured, not 0"

    run(body())
