"""The rollups the run summary reads: equal to the raw rows, complete, and safe to replay.

Ingest recomputes the rollup rows of every (run, group, second) an insert touched from the raw
rows (FINAL), and acks only after that: a second whose rows come in two inserts, a batch stored
twice, and a refresh that failed and was retried all end in the rollup the raw rows give.
"""

from __future__ import annotations

from pathlib import Path

import nats
import numpy as np
import pytest
from clickhouse_connect.driver.exceptions import OperationalError

from callmeter.common.stores.nats import EmbeddedNats
from services.metrics import queries
from services.metrics.schema import GROUP_SECONDS_TABLE, SAMPLES_TABLE
from services.metrics.store import MetricsStore, insert_runs, refresh_rollups
from services.metrics.stream import METRICS_CONSUMER, METRICS_STREAM
from tests.metrics.helpers import (
    BASE_SECOND,
    GROUPS,
    SECONDS,
    as_dict,
    count_rows,
    create_streams,
    dataset,
    dataset_batches,
    eventually,
    expected_summary,
    ingest_settings,
    make_batch,
    publish,
    run,
    running_ingest,
    store_dataset,
)

pytestmark = pytest.mark.timeout(120)

#: The raw rows' own exact aggregates, as the summary read them before the rollup: the rollup's
#: merged quantile states and minimum must give these bit for bit.
_RAW_EXACT_SQL = f"""
SELECT `group`, grouping(`group`),
  ifNotFinite(quantileExactInclusiveIf(0.95)(rx_jitter_us / 1000, call_active = 1), 0),
  ifNotFinite(quantileExactInclusiveIf(0.95)(rtt_us / 1000, call_active = 1 AND rtt_us > 0), 0),
  ifNotFinite(quantileExactInclusiveIf(0.95)(setup_time_ms / 1, calls_connected > 0 AND setup_time_ms > 0), 0),
  ifNotFinite(minIf(mos / 100, call_active = 1 AND mos > 0), 0),
  uniqExact(`group`, endpoint), sum(calls_attempted), sum(calls_failed), sum(rx_lost), sum(rx_packets), count()
FROM {SAMPLES_TABLE} FINAL WHERE run_id = {{run_id:String}}
GROUP BY GROUPING SETS ((`group`), ())
"""


def summary_by_group(client, run_id: str) -> dict[str, dict]:  # type: ignore[no-untyped-def,type-arg]
    """group → as_dict of its summary, the whole run under ''."""
    return {group: as_dict(summary) for group, summary in queries.group_summaries(client, [run_id]).get(run_id, {}).items()}


def expected_by_group(data: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, dict]:  # type: ignore[type-arg]
    found = {"": expected_summary(data, rows)}
    for group in GROUPS:
        if (rows & (data["group"] == group)).any():
            found[group] = expected_summary(data, rows & (data["group"] == group))
    return found


def rollup_rows(client, run_id: str) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(rows, endpoint-seconds they count) of the run in rollup_group_seconds, FINAL."""
    rows, counted = client.query(f"SELECT count(), sum(endpoints) FROM {GROUP_SECONDS_TABLE} FINAL "
                                 "WHERE run_id = {r:String}", parameters={"r": run_id}).result_rows[0]
    return int(rows), int(counted)


def test_the_rollup_gives_the_raw_rows_exact_quantiles_and_counts(tmp_path: Path) -> None:
    data = dataset()

    async def body() -> None:
        store = MetricsStore(f"chdb://{tmp_path / 'metrics'}", ttl_days=30)
        await store.open()
        try:
            await store.call(store_dataset, "exact", data, "first")
            await store.call(store_dataset, "exact", data, "again")  # stored twice, refreshed twice
            summaries = await store.call(queries.group_summaries, ["exact"])
            raw = (await store.call(lambda c: c.query(_RAW_EXACT_SQL, parameters={"run_id": "exact"}))).result_rows
            assert len(raw) == len(GROUPS) + 1
            for (group, is_total, jitter, rtt, setup, mos_min, endpoints, attempted, failed, lost, received,
                 endpoint_seconds) in raw:
                s = summaries["exact"]["" if is_total else group]
                assert (s.jitter_ms_p95, s.rtt_ms_p95, s.setup_ms_p95, s.mos_min) == (jitter, rtt, setup, mos_min)
                assert (s.endpoints, s.calls_attempted, s.calls_failed) == (endpoints, attempted, failed)
                assert s.loss_pct == 100.0 * lost / (received + lost)
                assert s.endpoint_seconds == endpoint_seconds, "each endpoint-second once, though stored twice"
            assert await store.call(rollup_rows, "exact") == (len(GROUPS) * SECONDS, len(data["group"]))
        finally:
            await store.close()

    run(body())


def test_the_runs_call_counts_leave_out_its_answering_groups(tmp_path: Path) -> None:
    """A call from "callers" to "callees" is counted at both ends; the run counts it once, from the
    callers. A run whose only calls are answered (from an outside caller) counts them at the callees,
    and a run with no notice (roles unknown) counts every group, as before roles were kept."""
    data = dataset()
    callers = data["group"] == "callers"
    everything = np.ones(len(callers), dtype=bool)
    placed = expected_summary(data, callers)
    call_fields = ("calls_attempted", "calls_connected", "calls_failed", "failures_by_code")

    async def body() -> None:
        store = MetricsStore(f"chdb://{tmp_path / 'metrics'}", ttl_days=30)
        await store.open()
        try:
            for run_id in ("self-call", "answering-only", "no-notice"):
                await store.call(store_dataset, run_id, data, run_id)
            await store.call(insert_runs, [("self-call", "t", BASE_SECOND, ["callees"]),
                                           ("answering-only", "t", BASE_SECOND, ["callers", "callees"])])
            self_call = await store.call(summary_by_group, "self-call")
            assert {f: self_call[""][f] for f in call_fields} == {f: placed[f] for f in call_fields}
            assert placed["calls_attempted"] < expected_summary(data, everything)["calls_attempted"]
            # Media is measured at both ends: both ends count. Groups are each their own.
            assert self_call == {**expected_by_group(data, everything),
                                 "": {**expected_summary(data, everything), **{f: placed[f] for f in call_fields}}}
            for run_id in ("answering-only", "no-notice"):
                assert await store.call(summary_by_group, run_id) == expected_by_group(data, everything)
        finally:
            await store.close()

    run(body())


async def _all_acked(js) -> bool:  # type: ignore[no-untyped-def]
    info = await js.consumer_info(METRICS_STREAM, METRICS_CONSUMER)
    return info.num_pending == 0 and info.num_ack_pending == 0


def test_a_seconds_rows_in_two_inserts_and_a_replay_give_the_complete_rollup(tmp_path: Path,
                                                                            nats_server: EmbeddedNats) -> None:
    """Two workers report the same seconds; the second one's batches are inserted later, alone."""
    data = dataset()
    first_worker = data["endpoint"] % 2 == 0
    everything = np.ones(len(first_worker), dtype=bool)

    async def body() -> None:
        async with running_ingest(ingest_settings(tmp_path, nats_server.url)) as ingest:
            nc = await nats.connect(nats_server.url)
            js = nc.jetstream()
            w1 = dataset_batches(data, "split", first_worker, worker_id="w1")
            for batch in w1:
                await publish(js, batch)
            await eventually(lambda: _all_acked(js), message="the first worker's batches stored")
            assert await ingest.store.call(summary_by_group, "split") == expected_by_group(data, first_worker)

            for batch in dataset_batches(data, "split", ~first_worker, worker_id="w2"):
                await publish(js, batch)
            await eventually(lambda: _all_acked(js), message="the second worker's batches stored")
            assert await ingest.store.call(summary_by_group, "split") == expected_by_group(data, everything)

            # The first worker's batches again, after the duplicate window (new ids): stored again.
            for batch in w1:
                assert not (await publish(js, batch, msg_id=f"w1:split:{batch.sequence}:resent")).duplicate
            await eventually(lambda: _all_acked(js), message="the resends stored")
            assert await ingest.store.call(count_rows, "split", False) == len(everything) + first_worker.sum()
            assert await ingest.store.call(summary_by_group, "split") == expected_by_group(data, everything)
            assert await ingest.store.call(rollup_rows, "split") == (len(GROUPS) * SECONDS, len(everything))
            await nc.close()

    run(body())


class FailingRefresh(MetricsStore):
    """A store whose rollup refreshes fail while ``down``; its inserts work."""

    down = True
    refreshes_failed = 0

    async def call(self, fn, *args):  # type: ignore[no-untyped-def]
        if fn is refresh_rollups and self.down:
            self.refreshes_failed += 1
            raise OperationalError("rollup refresh failed (test fault)")
        return await super().call(fn, *args)


def test_a_failed_refresh_holds_the_messages_until_a_retry_completes_the_rollup(
        tmp_path: Path, nats_server: EmbeddedNats) -> None:
    settings = ingest_settings(tmp_path, nats_server.url, ingest_ack_wait_s=2.0, store_retry_max_s=0.5)

    async def body() -> None:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await create_streams(js)
        for seq in range(5):  # all there before the first fetch, so all in one insert
            await publish(js, make_batch("refresh", "w1", seq, "g", range(10), BASE_SECOND + seq, rx_packets=1,
                                         calls_attempted=1, call_active=True, rx_jitter_us=1000 * (seq + 1)))
        store = FailingRefresh(settings.clickhouse_url, settings.raw_ttl_days)
        async with running_ingest(settings, store):
            # Longer than two ack waits: the held messages are neither acked nor redelivered.
            await eventually(lambda: _refreshes_failed(store, 6), message="refreshes retried")
            info = await js.consumer_info(METRICS_STREAM, METRICS_CONSUMER)
            assert (info.num_pending, info.num_ack_pending, info.num_redelivered) == (0, 5, 0)
            assert await store.call(count_rows, "refresh", False) == 50  # inserted once, not again
            assert (await store.call(queries.run_summary, "refresh", [])).total.endpoints == 0
            store.down = False
            await eventually(lambda: _all_acked(js), message="refreshed and acked")
            summary = (await store.call(queries.run_summary, "refresh", [])).total
            assert (summary.endpoints, summary.calls_attempted) == (10, 50)
            assert summary.jitter_ms_p95 == pytest.approx(float(np.percentile(np.repeat([1, 2, 3, 4, 5], 10), 95)))
            assert await store.call(count_rows, "refresh", False) == 50
            assert await store.call(rollup_rows, "refresh") == (5, 50)
        await nc.close()

    run(body())


async def _refreshes_failed(store: FailingRefresh, count: int) -> bool:
    return store.refreshes_failed >= count
