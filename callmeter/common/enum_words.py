"""Contract enum values as people write and read them: TRANSPORT_TLS ⇄ "tls", RUN_STATE_FINISHED → "finished".

Every enum in protos/ starts with ``<PREFIX>_UNSPECIFIED`` (tests/test_contracts.py checks it); a
value's word is its name without that prefix, in lower case. Test files are read with the same
rule (callmeter/common/testspec.py).
"""

from __future__ import annotations

from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper


def prefix(enum: EnumDescriptor) -> str:
    """"TRANSPORT_" for Transport: what every value's name starts with."""
    return enum.values[0].name.removesuffix("UNSPECIFIED")


def word(enum: EnumTypeWrapper, value: int) -> str:
    """``value``'s word ("tls"); a number the contract lacks stays a number."""
    if value not in enum.values():
        return str(value)
    return enum.Name(value).removeprefix(prefix(enum.DESCRIPTOR)).lower()
