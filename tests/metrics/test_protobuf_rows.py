"""Inserts as protobuf rows (ClickHouse parses them) store exactly what column inserts store."""

from __future__ import annotations

from pathlib import Path

import nats
import pytest

from callmeter.catalog import METRICS
from callmeter.common.stores.metrics_store import connect_metrics_store
from callmeter.common.stores.nats import EmbeddedNats
from callmeter.common.varint import encode_varint
from callmeter.v1 import endpoint_metrics_pb2, results_pb2
from services.metrics.batches import ProtobufRows, RowBuffer, Rows, decode_rows
from services.metrics.schema import ensure_schema
from services.metrics.store import MetricsStore, insert_samples, takes_protobuf_rows
from tests.metrics.helpers import BASE_SECOND, count_rows, eventually, ingest_settings, make_batch, publish, run, running_ingest

pytestmark = pytest.mark.timeout(120)


def varied_batches(run_id: str) -> list[results_pb2.MetricBatch]:
    """Every metric set somewhere, values of one to five varint bytes, two groups, endpoint 0 included."""
    batches = []
    for sequence, (group, second) in enumerate([("callers", BASE_SECOND), ("callees", BASE_SECOND), ("callers", BASE_SECOND + 1)]):
        batch = make_batch(run_id, "w1", sequence, group, range(len(METRICS)), second)
        for sample in batch.samples:
            for index, metric in enumerate(METRICS):
                if (index + sample.endpoint + sequence) % 3:
                    value = (sample.endpoint * 7919 + index * 131 + sequence) % (1 << (7 * (1 + index % 5)))
                    setattr(sample.metrics, metric.name, bool(value % 2) if metric.proto_type == "bool" else value)
        batches.append(batch)
    return batches


def table(client, run_id: str) -> list[tuple]:  # type: ignore[no-untyped-def,type-arg]
    columns = ", ".join(f"`{m.name}`" for m in METRICS)
    return client.query(f"SELECT worker_id, `group`, endpoint, toUnixTimestamp(second), {columns} FROM endpoint_seconds "
                        "WHERE run_id = {r:String} ORDER BY `group`, endpoint, second", parameters={"r": run_id}).result_rows


def test_protobuf_rows_store_what_columns_store(tmp_path: Path) -> None:
    client = connect_metrics_store(f"chdb://{tmp_path / 'metrics'}")
    try:
        ensure_schema(client, 30)
        assert takes_protobuf_rows(client)
        by_rows, by_columns = RowBuffer(), RowBuffer()
        for batch in varied_batches("rows"):
            by_rows.add(batch)
        for batch in varied_batches("columns"):
            by_columns.add(batch)
        insert_samples(client, by_rows.protobuf_rows(), "t-rows")
        insert_samples(client, by_columns.columns, "t-columns")
        stored = table(client, "rows")
        assert len(stored) == 3 * len(METRICS)
        assert stored == table(client, "columns")
    finally:
        client.close()


def _length_delimited(number: int, data: bytes) -> bytes:
    return encode_varint(number << 3 | 2) + encode_varint(len(data)) + data


def test_odd_metric_encodings_are_stored_as_upb_reads_them(tmp_path: Path) -> None:
    """A bool sent as 2, a uint32 sent wider than 32 bits, a field this catalog lacks: upb's reading, not an error."""
    number = {m.name: i + 1 for i, m in enumerate(METRICS)}
    metrics = (encode_varint(number["registered"] << 3) + encode_varint(2) + encode_varint(number["rx_packets"] << 3) + encode_varint((1 << 40) + 50)
               + encode_varint((len(METRICS) + 500) << 3) + encode_varint(7))
    sample = results_pb2.EndpointSample(group="g", endpoint=3, second=BASE_SECOND).SerializeToString()
    payload = (results_pb2.MetricBatch(run_id="odd", worker_id="w1").SerializeToString()
               + _length_delimited(4, sample + _length_delimited(4, metrics)))
    rows = decode_rows("callmeter.metrics.odd.w1", payload, 1 << 20, 0, BASE_SECOND + 10)
    assert isinstance(rows, Rows)
    upb = endpoint_metrics_pb2.EndpointMetrics.FromString(rows.metrics[0])
    assert (upb.registered, upb.rx_packets) == (True, 50)

    client = connect_metrics_store(f"chdb://{tmp_path / 'metrics'}")
    try:
        ensure_schema(client, 30)
        buffer = RowBuffer()
        buffer.add(rows)
        insert_samples(client, buffer.protobuf_rows(), "t-odd")
        assert client.query("SELECT registered, rx_packets FROM endpoint_seconds WHERE run_id = 'odd'").result_rows == [(1, 50)]
    finally:
        client.close()


class NoProtobufStore(MetricsStore):
    """A store that refuses every protobuf insert, as it would rows it cannot parse."""

    async def call(self, fn, *args):  # type: ignore[no-untyped-def]
        if fn is insert_samples and isinstance(args[0], ProtobufRows):
            raise RuntimeError("Code: 436. cannot parse (test fault)")
        return await super().call(fn, *args)


def test_an_insert_the_store_cannot_parse_goes_in_as_columns(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    settings = ingest_settings(tmp_path, nats_server.url)

    async def body() -> None:
        store = NoProtobufStore(settings.clickhouse_url, settings.raw_ttl_days)
        async with running_ingest(settings, store):
            nc = await nats.connect(nats_server.url)
            js = nc.jetstream()
            for sequence in range(3):
                await publish(js, make_batch("fallback", "w1", sequence, "g", range(10), BASE_SECOND + sequence, rx_packets=1))

            async def stored() -> bool:
                return await store.call(count_rows, "fallback") == 30

            await eventually(stored, message="rows stored as columns")
            await nc.close()

    run(body())
