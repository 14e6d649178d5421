"""Protocol buffers' base-128 varints, for the few places that splice encoded messages by hand
(the gateway appends the worker id to a batch; metrics-ingest builds protobuf rows)."""

from __future__ import annotations


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(data: bytes, position: int) -> tuple[int, int]:
    """The varint at ``position`` and the position after it; IndexError if ``data`` ends inside it."""
    value = shift = 0
    while True:
        byte = data[position]
        value |= (byte & 0x7F) << shift
        position += 1
        if byte < 0x80:
            return value, position
        shift += 7
