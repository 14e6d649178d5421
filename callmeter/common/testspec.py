"""YAML test files ↔ TestSpec. Keys are the protobuf field names; a few conveniences:

* enums may be written short and in any case: ``transport: tls`` for ``TRANSPORT_TLS``;
* durations are protobuf JSON strings (``20s``, ``1.5s``) or plain numbers of seconds.

A file that does not parse raises ``SpecError`` with one FieldViolation per problem found.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from callmeter.common import enum_words
from callmeter.common.errors import CallmeterError, ErrorCode
from callmeter.v1 import common_pb2, tests_pb2


class SpecError(CallmeterError):
    def __init__(self, violations: list[common_pb2.FieldViolation]) -> None:
        super().__init__(ErrorCode.INVALID_ARGUMENT, "; ".join(f"{v.field}: {v.description}" for v in violations))
        self.violations = violations


def violation(field: str, description: str) -> common_pb2.FieldViolation:
    return common_pb2.FieldViolation(field=field, description=description)


def problem_lines(file: Path, violations: list[common_pb2.FieldViolation]) -> list[str]:
    """One line per problem of a test file: "FILE: FIELD: PROBLEM", or "FILE: PROBLEM" for the whole file."""
    return [f"{file}: {v.description}" if v.field == str(file) else f"{file}: {v.field}: {v.description}"
            for v in violations]


def load_spec_file(path: Path) -> tests_pb2.TestSpec:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise SpecError([violation(str(path), f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:  # a binary file, or text in another encoding
        line = exc.object[:exc.start].count(b"\n") + 1
        raise SpecError([violation(str(path), f"not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at line {line} "
                                              "(a test file is YAML in UTF-8)")]) from None
    return parse_spec_yaml(text, source=str(path))


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
        raise SpecError([violation(source, str(exc))]) from None
    return spec


def _normalize(data: dict[str, Any], descriptor: Descriptor, path: str,
               problems: list[common_pb2.FieldViolation]) -> dict[str, Any]:
    """Checks field names and rewrites short enum names and numeric durations, collecting problems."""
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
    return out


def _value(value: Any, field: FieldDescriptor, path: str, problems: list[common_pb2.FieldViolation]) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM and isinstance(value, str):
        enum = field.enum_type
        prefix = enum_words.prefix(enum)
        name = value.upper().replace("-", "_")
        name = name if name.startswith(prefix) else prefix + name
        if name not in enum.values_by_name or name.endswith("_UNSPECIFIED"):
            choices = ", ".join(v.name.removeprefix(prefix).lower() for v in enum.values[1:])
            problems.append(violation(path, f"{value!r} is not one of: {choices}"))
            return None
        return name
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        full_name = field.message_type.full_name
        if full_name == "google.protobuf.Duration":
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                problems.append(violation(path, "must be a duration such as 20s or a number of seconds"))
                return None
            return f"{value}s" if isinstance(value, (int, float)) else value
        if isinstance(value, dict) and not _is_map(field):
            return _normalize(value, field.message_type, path, problems)
    return value


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def spec_to_yaml(spec: tests_pb2.TestSpec) -> str:
    data = json_format.MessageToDict(spec, preserving_proto_field_name=True)
    return yaml.safe_dump(data, sort_keys=False)
