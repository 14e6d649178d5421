"""The service process killed with SIGKILL mid-stream and restarted: every sample counts exactly once.

In the raw rows and in the rollup the run summary reads: a kill between an insert and its rollup
refresh, or after both and before the acks, leaves the messages unacked; their redelivery stores
the rows again on the same keys and recomputes those seconds' rollup rows.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import nats
import numpy as np
import pytest

from callmeter.common.channels import sync_channel
from callmeter.common.stores.metrics_store import connect_metrics_store
from callmeter.common.stores.nats import EmbeddedNats
from callmeter.v1 import results_pb2, results_pb2_grpc
from services.metrics.schema import GROUP_SECONDS_TABLE
from services.metrics.stream import METRICS_CONSUMER, METRICS_STREAM
from tests.metrics.helpers import BASE_SECOND, count_rows, make_batch, publish
from tests.procs import ServiceProcess, eventually, start_service

pytestmark = pytest.mark.timeout(180)

RUN = "run-eo"
ENDPOINTS = 25
BATCHES = 40
SAMPLES = ENDPOINTS * BATCHES


def batch(sequence: int) -> results_pb2.MetricBatch:
    return make_batch(RUN, "w1", sequence, "g", range(ENDPOINTS), BASE_SECOND + sequence, rx_packets=1, calls_attempted=1,
                      call_active=True, rx_jitter_us=100 * (sequence + 1))


#: The p95 of the jitter if every sample counts once (a sample counted twice moves it).
JITTER_P95_MS = float(np.percentile(np.repeat(np.arange(1, BATCHES + 1) * 0.1, ENDPOINTS), 95))


async def publish_batches(url: str, sequences: range, pause_s: float = 0.0) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    for sequence in sequences:
        assert not (await publish(js, batch(sequence))).duplicate
        await asyncio.sleep(pause_s)
    await nc.close()


async def publish_again(url: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    for sequence in range(5, 10):  # a gateway resending after a lost ack: JetStream drops them
        assert (await publish(js, batch(sequence))).duplicate
    # A resend after the duplicate window (a new Nats-Msg-Id): stored again on the same keys.
    assert not (await publish(js, batch(3), msg_id=f"w1:{RUN}:3:resent")).duplicate
    await nc.close()


async def consumer_idle(url: str) -> bool:
    nc = await nats.connect(url)
    info = await nc.jetstream().consumer_info(METRICS_STREAM, METRICS_CONSUMER)
    await nc.close()
    return info.num_pending == 0 and info.num_ack_pending == 0


def stored_samples(service: ServiceProcess) -> int:
    """Sum of rx_packets (1 per sample) through the query service: samples as queries count them."""
    with sync_channel(service.address) as channel:
        reply = results_pb2_grpc.MetricsQueryServiceStub(channel).GetSeries(results_pb2.SeriesRequest(
            run_id=RUN, metric="rx_packets", endpoint=-1, step_s=86400, aggregate="sum"), timeout=10)
    return int(sum(p.value for p in reply.points))


def test_sigkill_mid_stream_then_restart_counts_every_sample_once(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    store_url = f"chdb://{tmp_path / 'metrics'}"
    env = {"CALLMETER_NATS_URL": nats_server.url, "CALLMETER_CLICKHOUSE_URL": store_url,
           # small inserts and a short ack wait, so the kill lands between inserts and redelivery is quick
           "CALLMETER_INGEST_MAX_ROWS": "100", "CALLMETER_INGEST_MAX_DELAY_S": "0.1",
           "CALLMETER_INGEST_FETCH_BATCH": "2", "CALLMETER_INGEST_ACK_WAIT_S": "2"}

    first = start_service("metrics", tmp_path, env)
    publisher = threading.Thread(target=asyncio.run, args=(publish_batches(nats_server.url, range(BATCHES // 2), 0.05),))
    publisher.start()
    try:
        stored_at_kill = eventually(lambda: stored_samples(first), timeout_s=30, interval_s=0.02, message="first inserts")
    finally:
        first.process.kill()
        first.process.wait(10)
        publisher.join(30)
    assert stored_at_kill < SAMPLES // 2, "killed too late to test anything"

    asyncio.run(publish_batches(nats_server.url, range(BATCHES // 2, BATCHES)))
    asyncio.run(publish_again(nats_server.url))

    second = start_service("metrics", tmp_path, env)
    try:
        eventually(lambda: asyncio.run(consumer_idle(nats_server.url)), timeout_s=60, interval_s=0.5,
                   message="every message acked")
        assert stored_samples(second) == SAMPLES
        with sync_channel(second.address) as channel:
            summary = results_pb2_grpc.MetricsQueryServiceStub(channel).GetRunSummary(
                results_pb2.RunSummaryRequest(run_id=RUN), timeout=10)
        assert summary.total.endpoints == ENDPOINTS
        assert summary.total.calls_attempted == SAMPLES
        assert summary.total.jitter_ms_p95 == pytest.approx(JITTER_P95_MS, rel=1e-12)
    finally:
        assert second.terminate() == 0, second.log()[-3000:]

    client = connect_metrics_store(store_url)  # the service has exited: the store is ours to open
    try:
        assert count_rows(client, RUN) == SAMPLES
        distinct = client.query("SELECT uniqExact(run_id, `group`, endpoint, second) FROM endpoint_seconds").result_rows
        assert distinct == [(SAMPLES,)]
        rollup = client.query(f"SELECT count(), sum(endpoints), sum(calls_attempted) FROM {GROUP_SECONDS_TABLE} FINAL "
                              "WHERE run_id = {r:String}", parameters={"r": RUN}).result_rows
        assert rollup == [(BATCHES, SAMPLES, SAMPLES)]  # a row per second, each sample in it once
    finally:
        client.close()
