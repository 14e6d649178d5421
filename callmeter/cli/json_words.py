"""Contract messages as the CLI's --json prints them: enum values as their words (RUN_STATE_FINISHED
→ "finished", TRANSPORT_UDP → "udp", as test files and tables write them), every field shown in the
protos' order and with their names, timestamps in RFC 3339."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import Message

from callmeter.common.enum_words import word


def message_json(message: Message) -> dict[str, Any]:
    data = json_format.MessageToDict(message, preserving_proto_field_name=True, use_integers_for_enums=True,
                                     always_print_fields_with_no_presence=True)
    return _words(message.DESCRIPTOR, data)


def _words(descriptor: Descriptor, data: dict[str, Any]) -> dict[str, Any]:
    """In the fields' order; a message field that is not set is null, a member of a oneof that is
    not the one set stays out."""
    shown: dict[str, Any] = {}
    for field in descriptor.fields:
        if field.name not in data:
            if field.message_type is not None and not field.is_repeated and field.containing_oneof is None:
                shown[field.name] = None
            continue
        value = data[field.name]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            shown[field.name] = {key: _value(value_field, item) for key, item in value.items()}
        elif field.is_repeated:
            shown[field.name] = [_value(field, item) for item in value]
        else:
            shown[field.name] = _value(field, value)
    return shown


def _value(field: FieldDescriptor, value: Any) -> Any:
    if field.enum_type is not None:
        return word(EnumTypeWrapper(field.enum_type), value)
    # Well-known types (Timestamp, Duration, Struct) are printed in their own JSON forms already.
    if field.message_type is not None and not field.message_type.full_name.startswith("google.protobuf."):
        return _words(field.message_type, value)
    return value
