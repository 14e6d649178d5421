"""YAML test files ↔ TestSpec. Keys are the protobuf field names; a few conveniences:

* enums may be written short and in any case: ``transport: tls`` for ``TRANSPORT_TLS``;
* durations are protobuf JSON strings (``20s``, ``1.5s``) or plain numbers of seconds.

``spec_to_yaml`` is the inverse: a stored spec as a file to edit and apply again.

A file that does not parse raises ``SpecError`` with one FieldViolation per problem found: an
unknown field or enum word, a value of the wrong kind, two fields of a oneof. Whether the spec
makes sense (counts, references, durations, codecs) is callmeter/common/spec_check.py's to say.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import Message

from callmeter.common import enum_words
from callmeter.common.errors import CallmeterError, ErrorCode
from callmeter.v1 import common_pb2, tests_pb2

# The words YAML 1.1 reads as booleans, which an enum may have (SrtpMode "off").
_YAML_BOOLEAN_WORDS = {False: ("off", "no", "false"), True: ("on", "yes", "true")}
# What an integer field of each kind holds, as ParseDict would refuse it with no field named.
_INTEGER_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-2**31, 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-2**63, 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}


class SpecError(CallmeterError):
    def __init__(self, violations: list[common_pb2.FieldViolation]) -> None:
        super().__init__(ErrorCode.INVALID_ARGUMENT, "; ".join(f"{v.field}: {v.description}" for v in violations))
        self.violations = violations


def violation(field: str, description: str) -> common_pb2.FieldViolation:
    return common_pb2.FieldViolation(field=field, description=description)


def display_name(path: Path) -> str:
    """The file's name as text, whatever bytes it is made of (a name that is not UTF-8 is escaped)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def problem_lines(file: Path, violations: list[common_pb2.FieldViolation]) -> list[str]:
    """One line per problem of a test file: "FILE: FIELD: PROBLEM", or "FILE: PROBLEM" for the whole file."""
    name = display_name(file)
    return [f"{name}: {v.description}" if v.field == name else f"{name}: {v.field}: {v.description}"
            for v in violations]


def load_spec_file(path: Path) -> tests_pb2.TestSpec:
    name = display_name(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise SpecError([violation(name, f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:  # a binary file, or text in another encoding
        line = exc.object[:exc.start].count(b"\n") + 1
        raise SpecError([violation(name, f"not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at line {line} "
                                         "(a test file is YAML in UTF-8)")]) from None
    return parse_spec_yaml(text, source=name)


def parse_spec_yaml(text: str, source: str = "<spec>") -> tests_pb2.TestSpec:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark, position = getattr(exc, "problem_mark", None), getattr(exc, "position", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        else:  # a character YAML does not allow (a NUL, a control character): the reader says where
            where = f" at line {text[:position].count(chr(10)) + 1}" if position is not None else ""
        what = getattr(exc, "problem", None) or getattr(exc, "reason", None) or " ".join(str(exc).split())
        character = getattr(exc, "character", None)
        if isinstance(character, int):
            what = f"{what} (#x{character:04x})"
        raise SpecError([violation(source, f"not valid YAML{where}: {what}")]) from None
    if not isinstance(data, dict):
        raise SpecError([violation(source, "a test file must be a mapping of TestSpec fields")])
    problems: list[common_pb2.FieldViolation] = []
    normalized = _normalize(data, tests_pb2.TestSpec.DESCRIPTOR, "", problems)
    if problems:
        raise SpecError(problems)
    spec = tests_pb2.TestSpec()
    try:
        json_format.ParseDict(normalized, spec)
    except json_format.ParseError as exc:
        raise SpecError([violation(source, " ".join(str(exc).split()))]) from None
    return spec


def _normalize(data: dict[str, Any], descriptor: Descriptor, path: str,
               problems: list[common_pb2.FieldViolation]) -> dict[str, Any]:
    """Checks field names and kinds of values, rewrites short enum names and numeric durations,
    collecting problems."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        field_path = f"{path}.{key}" if path else str(key)
        field = descriptor.fields_by_name.get(str(key))
        if field is None:
            known = ", ".join(sorted(descriptor.fields_by_name))
            problems.append(violation(field_path, f"unknown field; {descriptor.name} has: {known}"))
            continue
        repeated = field.is_repeated and not _is_map(field)
        if repeated:
            if not isinstance(value, list):
                problems.append(violation(field_path, "must be a list"))
                continue
            out[key] = [_value(item, field, f"{field_path}[{i}]", problems) for i, item in enumerate(value)]
        else:
            out[key] = _value(value, field, field_path, problems)
    for oneof in descriptor.oneofs:
        names = [f.name for f in oneof.fields]
        if sum(name in data for name in names) > 1:
            problems.append(violation(path, f"only one of: {', '.join(names)}"))
    return out


def _value(value: Any, field: FieldDescriptor, path: str, problems: list[common_pb2.FieldViolation]) -> Any:
    """The value as ParseDict takes it, or None after adding the problem (a value of the wrong kind)."""
    kind = field.cpp_type
    if kind == FieldDescriptor.CPPTYPE_ENUM:
        return _enum_name(value, field, path, problems)
    if kind == FieldDescriptor.CPPTYPE_MESSAGE:
        if field.message_type.full_name == "google.protobuf.Duration":
            return _duration(value, path, problems)
        if _is_map(field):
            return value
        if isinstance(value, dict):
            return _normalize(value, field.message_type, path, problems)
        problem = f"must be a mapping of {field.message_type.name} fields (got {_shown(value)})"
    elif kind in _INTEGER_RANGES:
        low, high = _INTEGER_RANGES[kind]
        if not isinstance(value, int) or isinstance(value, bool):
            problem = f"must be an integer (got {_shown(value)})"
        elif not low <= value <= high:
            problem = f"must be an integer from {low} to {high} (got {value})"
        else:
            return value
    elif kind in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isnan(value):  # ParseDict takes these only as JSON writes them; the spec check refuses them
                return "NaN"
            return value if math.isfinite(value) else ("Infinity" if value > 0 else "-Infinity")
        problem = f"must be a number (got {_shown(value)})"
    elif kind == FieldDescriptor.CPPTYPE_BOOL:
        if isinstance(value, bool):
            return value
        problem = f"must be true or false (got {_shown(value)})"
    else:  # text
        if isinstance(value, str):
            return value
        problem = f"must be text (got {_shown(value)}; put it in quotes)"
    problems.append(violation(path, problem))
    return None


def _enum_name(value: Any, field: FieldDescriptor, path: str, problems: list[common_pb2.FieldViolation]) -> Any:
    enum = field.enum_type
    prefix = enum_words.prefix(enum)
    if isinstance(value, bool):  # YAML reads an unquoted off/on/no/yes as a boolean: `srtp: off`
        value = next((word for word in _YAML_BOOLEAN_WORDS[value] if prefix + word.upper() in enum.values_by_name),
                     value)
    name = value.upper().replace("-", "_") if isinstance(value, str) else ""
    name = name if name.startswith(prefix) else prefix + name
    if name not in enum.values_by_name or name.endswith("_UNSPECIFIED"):
        choices = ", ".join(v.name.removeprefix(prefix).lower() for v in enum.values[1:])
        problems.append(violation(path, f"{_shown(value)} is not one of: {choices}"))
        return None
    return name


def _duration(value: Any, path: str, problems: list[common_pb2.FieldViolation]) -> str | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        text = f"{value:.9f}".rstrip("0").rstrip(".") + "s"
    else:
        text = value if isinstance(value, str) else ""
    try:
        Duration().FromJsonString(text)
    except ValueError:
        problems.append(violation(path, f"must be a duration such as 20s or a number of seconds (got {_shown(value)})"))
        return None
    return text


def _shown(value: Any) -> str:
    """The value as a problem quotes it, on one line and short."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def spec_to_yaml(spec: tests_pb2.TestSpec) -> str:
    """The spec as a test file that parse_spec_yaml reads back to the same spec: the fields that are
    set, in the proto's order, enums as their words (``tls``), durations as ``20s``."""
    return yaml.dump(_plain(spec), Dumper=_SpecDumper, sort_keys=False, allow_unicode=True)


class _SpecDumper(yaml.SafeDumper):
    """Block style, but a list of plain values on one line: ``codecs: [PCMU, PCMA]``."""


_SpecDumper.add_representer(list, lambda dumper, items: dumper.represent_sequence(
    "tag:yaml.org,2002:seq", items, flow_style=not any(isinstance(item, dict) for item in items)))


def _plain(message: Message) -> dict[str, Any]:
    """The set fields of the message (ListFields: a message or oneof member that is set, though
    empty, stays; a scalar at its zero value goes) as YAML values."""
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        if field.is_repeated:
            out[field.name] = [_plain_value(field, item) for item in value]
        else:
            out[field.name] = _plain_value(field, value)
    return out


def _plain_value(field: FieldDescriptor, value: Any) -> Any:
    if field.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
        return enum_words.word(EnumTypeWrapper(field.enum_type), value)
    if field.cpp_type != FieldDescriptor.CPPTYPE_MESSAGE:
        return value
    if field.message_type.full_name == "google.protobuf.Duration":
        text = value.ToJsonString()  # "20s", "1.500s"
        return text[:-1].rstrip("0") + "s" if "." in text else text
    return _plain(value)
