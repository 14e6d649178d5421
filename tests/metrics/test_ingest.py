"""The consumer against a real nats-server (JetStream) and a real chDB store, in this process."""

from __future__ import annotations

from pathlib import Path

import nats
import pytest
from clickhouse_connect.driver.exceptions import OperationalError
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.msg import Msg
from prometheus_client import REGISTRY

from callmeter.catalog import BY_NAME
from callmeter.common.stores.nats import EmbeddedNats
from callmeter.v1 import common_pb2, runs_pb2
from services.metrics import queries
from services.metrics.store import MetricsStore, insert_samples
from services.metrics.stream import DEADLETTER_STREAM, METRICS_CONSUMER, METRICS_STREAM, REASON_HEADER, SUBJECT_HEADER
from tests.metrics.helpers import (
    BASE_SECOND,
    count_rows,
    create_streams,
    eventually,
    ingest_settings,
    make_batch,
    publish,
    run,
    running_ingest,
)

pytestmark = pytest.mark.timeout(120)


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def consumer_state(js) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    """(not yet delivered, delivered but unacked, redelivered and unacked) of the ingest consumer."""
    info = await js.consumer_info(METRICS_STREAM, METRICS_CONSUMER)
    return info.num_pending, info.num_ack_pending, info.num_redelivered


async def _all_acked(js) -> bool:  # type: ignore[no-untyped-def]
    pending, ack_pending, _ = await consumer_state(js)
    return pending == 0 and ack_pending == 0


async def _held(js, count: int) -> bool:  # type: ignore[no-untyped-def]
    return (await consumer_state(js))[1] == count


async def _rows_at_least(value: float) -> bool:
    return counter("callmeter_metrics_rows_inserted_total") >= value


async def _failures_at_least(value: float) -> bool:
    return counter("callmeter_metrics_insert_failures_total") >= value


def batches(run_id: str, count: int, endpoints: int = 10) -> list:  # type: ignore[type-arg]
    return [make_batch(run_id, "w1", seq, "g", range(endpoints), BASE_SECOND + seq, rx_packets=1, calls_attempted=1)
            for seq in range(count)]


def test_duplicate_publish_and_a_late_resend_store_each_key_once(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    async def body() -> None:
        async with running_ingest(ingest_settings(tmp_path, nats_server.url)) as ingest:
            nc = await nats.connect(nats_server.url)
            js = nc.jetstream()
            sent = batches("dup", 5)
            for batch in sent:
                assert not (await publish(js, batch)).duplicate
            # A gateway retrying after a lost ack: same Nats-Msg-Id, dropped by JetStream.
            assert (await publish(js, sent[0])).duplicate
            # A resend after the duplicate window: a new message, stored again on the same keys.
            assert not (await publish(js, sent[1], msg_id="w1:dup:1:late")).duplicate

            await eventually(lambda: _all_acked(js), message="all messages acked")
            assert await ingest.store.call(count_rows, "dup") == 50
            summary = await ingest.store.call(queries.run_summary, "dup", [])
            assert (summary.total.endpoints, summary.total.calls_attempted) == (10, 50)
            series = await ingest.store.call(queries.series, "dup", BY_NAME["rx_packets"], "sum", 3600, "", -1)
            assert sum(point.value for point in series) == 50
            await nc.close()

    run(body())


def test_inserted_but_unacked_batches_are_redelivered_and_count_once(
        tmp_path: Path, nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash between the insert and the acks: JetStream redelivers, the rows land again, FINAL counts once."""
    settings = ingest_settings(tmp_path, nats_server.url, ingest_ack_wait_s=1.0)

    async def no_ack(self: Msg) -> None:
        return None

    async def body() -> None:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        rows_before = counter("callmeter_metrics_rows_inserted_total")
        with monkeypatch.context() as patch:
            patch.setattr(Msg, "ack", no_ack)
            async with running_ingest(settings):
                for batch in batches("redo", 4):
                    await publish(js, batch)
                await eventually(lambda: _rows_at_least(rows_before + 40), message="first insert")
        rows_redelivered = counter("callmeter_metrics_rows_inserted_total")
        async with running_ingest(settings) as ingest:
            await eventually(lambda: _all_acked(js), message="redelivered and acked")
            assert counter("callmeter_metrics_rows_inserted_total") - rows_redelivered >= 40  # they did land again
            assert await ingest.store.call(count_rows, "redo") == 40
            summary = await ingest.store.call(queries.run_summary, "redo", [])
            assert (summary.total.endpoints, summary.total.calls_attempted) == (10, 40)
        await nc.close()

    run(body())


def test_bad_messages_are_dead_lettered_and_the_consumer_goes_on(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    settings = ingest_settings(tmp_path, nats_server.url, ingest_max_message_bytes=2048)
    reasons = ("decode_error", "oversized", "invalid_batch", "invalid_sample")
    before = {reason: counter("callmeter_metrics_deadletter_total", reason=reason) for reason in reasons}

    async def body() -> None:
        async with running_ingest(settings) as ingest:
            nc = await nats.connect(nats_server.url)
            js = nc.jetstream()
            subject = "callmeter.metrics.bad.w1"
            await js.publish(subject, b"\xff\xff\xff\xff", headers={"Nats-Msg-Id": "garbage"})
            await publish(js, make_batch("bad", "w1", 1, "g", range(400), BASE_SECOND, rx_packets=50))
            await js.publish(subject, make_batch("other-run", "w1", 2, "g", range(2), BASE_SECOND).SerializeToString())
            await publish(js, make_batch("bad", "w1", 3, "", range(2), BASE_SECOND))
            await publish(js, make_batch("bad", "w1", 4, "g", range(3), BASE_SECOND + 4, rx_packets=1))

            await eventually(lambda: _all_acked(js), message="every message acked or terminated")
            assert await ingest.store.call(count_rows, "bad") == 3

            letters = await js.pull_subscribe("callmeter.deadletter.>", stream=DEADLETTER_STREAM)
            got = await letters.fetch(10, timeout=2)
            assert sorted(m.headers[REASON_HEADER].split(":")[0] for m in got) == sorted(reasons)
            assert {m.headers[SUBJECT_HEADER] for m in got} == {subject}
            assert next(m for m in got if m.headers[REASON_HEADER].startswith("decode_error")).data == b"\xff\xff\xff\xff"
            await nc.close()
        for reason in reasons:
            assert counter("callmeter_metrics_deadletter_total", reason=reason) - before[reason] == 1

    run(body())


class FlakyStore(MetricsStore):
    """A store whose inserts fail while ``down`` (a fault: chDB cannot be taken down from outside)."""

    down = True

    async def call(self, fn, *args):  # type: ignore[no-untyped-def]
        if fn is insert_samples and self.down:
            raise OperationalError("metrics store down (test fault)")
        return await super().call(fn, *args)


def test_store_outage_holds_the_messages_and_catches_up_without_loss(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    settings = ingest_settings(tmp_path, nats_server.url, ingest_ack_wait_s=2.0, store_retry_max_s=0.5)
    failures_before = counter("callmeter_metrics_insert_failures_total")

    async def body() -> None:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await create_streams(js)
        for batch in batches("outage", 5):  # all there before the first fetch, so all held together
            await publish(js, batch)
        flaky = FlakyStore(settings.clickhouse_url, settings.raw_ttl_days)
        async with running_ingest(settings, flaky):
            # Longer than two ack waits: without the in-progress signal they would be redelivered.
            await eventually(lambda: _failures_at_least(failures_before + 9), message="retries during the outage")
            assert await consumer_state(js) == (0, 5, 0)
            assert await flaky.call(count_rows, "outage") == 0
            flaky.down = False
            await eventually(lambda: _all_acked(js), message="caught up")
            assert await flaky.call(count_rows, "outage") == 50
        await nc.close()

    run(body())


def test_stop_inserts_and_acks_the_buffered_rows(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    settings = ingest_settings(tmp_path, nats_server.url, ingest_max_delay_s=60.0)

    async def body() -> None:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        async with running_ingest(settings):
            for batch in batches("stop", 3):
                await publish(js, batch)
            await eventually(lambda: _held(js, 3), message="three batches held")
        assert await _all_acked(js)
        store = MetricsStore(settings.clickhouse_url, settings.raw_ttl_days)
        await store.open()
        try:
            assert await store.call(count_rows, "stop") == 30
        finally:
            await store.close()
        await nc.close()

    run(body())


def run_notice(run_id: str, test_id: str, started_at: int) -> bytes:
    return runs_pb2.Run(id=run_id, test_id=test_id, started_at=Timestamp(seconds=started_at)).SerializeToString()


def test_run_start_notices_feed_the_trend(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    async def body() -> None:
        async with running_ingest(ingest_settings(tmp_path, nats_server.url)) as ingest:
            nc = await nats.connect(nats_server.url)
            js = nc.jetstream()
            notices = [("old", "t1", BASE_SECOND - 600), ("new", "t1", BASE_SECOND), ("quiet", "t1", BASE_SECOND + 60),
                       ("elsewhere", "t2", BASE_SECOND), ("new", "t1", BASE_SECOND)]  # the last one repeats
            for run_id, test_id, started in notices:
                await js.publish("callmeter.runs.started", run_notice(run_id, test_id, started))
            await js.publish("callmeter.runs.started", b"\xff\xff")
            for run_id, mos in (("old", 350), ("new", 420), ("elsewhere", 100)):
                await publish(js, make_batch(run_id, "w1", 1, "g", range(2), BASE_SECOND, call_active=True, mos=mos))

            async def points():  # type: ignore[no-untyped-def]
                found = await ingest.store.call(queries.trend, "t1", "mos_avg", 10)
                return found if len(found) == 2 else None

            found = await eventually(points, message="two runs of t1 with samples")
            assert [(p.run_id, p.started_at, p.value) for p in found] == [
                ("new", BASE_SECOND, pytest.approx(4.2)), ("old", BASE_SECOND - 600, pytest.approx(3.5))]
            assert [p.run_id for p in await ingest.store.call(queries.trend, "t1", "mos_avg", 1)] == ["new"]
            letters = await js.pull_subscribe("callmeter.deadletter.runs", stream=DEADLETTER_STREAM)
            [letter] = await letters.fetch(1, timeout=2)
            assert letter.headers[REASON_HEADER].startswith("invalid_run_notice")
            await nc.close()

    run(body())


def test_a_notices_callee_groups_are_left_out_of_the_runs_call_count(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    """Five calls from "out" to "in" are reported by both groups; the run (and its trend) counts five."""
    notice = runs_pb2.Run(id="selfcall", test_id="t3", started_at=Timestamp(seconds=BASE_SECOND), placements=[
        runs_pb2.Placement(worker_id="w1", group="out", count=5, role=common_pb2.ENDPOINT_ROLE_CALLER),
        runs_pb2.Placement(worker_id="w1", group="in", count=5, role=common_pb2.ENDPOINT_ROLE_CALLEE)])

    async def body() -> None:
        async with running_ingest(ingest_settings(tmp_path, nats_server.url)) as ingest:
            nc = await nats.connect(nats_server.url)
            js = nc.jetstream()
            await js.publish("callmeter.runs.started", notice.SerializeToString())
            for sequence, group in enumerate(("out", "in")):
                await publish(js, make_batch("selfcall", "w1", sequence, group, range(5), BASE_SECOND, calls_attempted=1))

            async def stored():  # type: ignore[no-untyped-def]
                """The notice (the trend knows the run) and both groups' samples."""
                summary = await ingest.store.call(queries.run_summary, "selfcall", ["out", "in"])
                both = [(g.group, g.calls_attempted) for g in summary.groups] == [("out", 5), ("in", 5)]
                known = await ingest.store.call(queries.trend, "t3", "calls_attempted", 10)
                return (summary, known) if both and known else None

            summary, [point] = await eventually(stored, message="the notice and both groups stored")
            assert (summary.total.calls_attempted, point.value) == (5, 5)
            await nc.close()

    run(body())
