"""Decoding and checking a NATS message, and the column buffer of the next insert."""

from __future__ import annotations

from callmeter.catalog import METRICS
from services.metrics.batches import Refusal, RowBuffer, decode_batch
from services.metrics.schema import KEY_COLUMNS
from tests.metrics.helpers import BASE_SECOND, make_batch

SUBJECT = "callmeter.metrics.run1.w1"
WINDOW = {"max_bytes": 4096, "oldest": BASE_SECOND - 100, "newest": BASE_SECOND + 100}


def decode(payload: bytes, subject: str = SUBJECT):  # type: ignore[no-untyped-def]
    return decode_batch(subject, payload, **WINDOW)


def reason(payload: bytes, subject: str = SUBJECT) -> str:
    result = decode(payload, subject)
    assert isinstance(result, Refusal), result
    return result.reason


def test_a_good_batch_decodes() -> None:
    batch = make_batch("run1", "w1", 7, "callers", range(3), BASE_SECOND, mos=420)
    assert decode(batch.SerializeToString()) == batch


def test_each_kind_of_bad_message_has_its_reason() -> None:
    good = make_batch("run1", "w1", 1, "g", range(2), BASE_SECOND)
    assert reason(b"\xff\xff\xff\xff") == "decode_error"
    assert reason(make_batch("run1", "w1", 1, "g", range(400), BASE_SECOND, rx_packets=50).SerializeToString()) == "oversized"
    assert reason(good.SerializeToString(), subject="callmeter.metrics.run2.w1") == "invalid_batch"
    assert reason(make_batch("", "w1", 1, "g", range(2), BASE_SECOND).SerializeToString(),
                  subject="callmeter.metrics..w1") == "invalid_batch"
    assert reason(make_batch("run1", "w1", 1, "", range(2), BASE_SECOND).SerializeToString()) == "invalid_sample"
    assert reason(make_batch("run1", "w1", 1, "g", range(-1, 1), BASE_SECOND).SerializeToString()) == "invalid_sample"
    assert reason(make_batch("run1", "w1", 1, "g", range(2), BASE_SECOND + 101).SerializeToString()) == "invalid_sample"
    assert reason(make_batch("run1", "w1", 1, "g", range(2), 0).SerializeToString()) == "invalid_sample"


def test_row_buffer_builds_one_column_per_table_column() -> None:
    buffer = RowBuffer()
    buffer.add(make_batch("run1", "w1", 1, "g", range(2), BASE_SECOND, registered=True, mos=410))
    buffer.add(make_batch("run1", "w2", 1, "h", range(5, 6), BASE_SECOND + 1, rx_jitter_us=1500))
    assert list(buffer.columns) == [name for name, _ in KEY_COLUMNS] + [m.name for m in METRICS]
    assert buffer.rows == 3 and all(len(column) == 3 for column in buffer.columns.values())
    assert buffer.columns["worker_id"] == ["w1", "w1", "w2"]
    assert buffer.columns["endpoint"] == [0, 1, 5]
    assert buffer.columns["second"] == [BASE_SECOND, BASE_SECOND, BASE_SECOND + 1]
    assert buffer.columns["mos"] == [410, 410, 0]
    assert buffer.columns["registered"] == [True, True, False]
    buffer.clear()
    assert buffer.rows == 0 and not any(buffer.columns.values())
