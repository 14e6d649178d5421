"""The contracts: every message round-trips, enums follow the conventions, generated code is fresh."""

from __future__ import annotations

import importlib
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

import callmeter.v1
from tests.procs import ROOT

MODULES = [importlib.import_module(f"callmeter.v1.{m.name}") for m in pkgutil.iter_modules(callmeter.v1.__path__)
           if m.name.endswith("_pb2")]


def all_messages() -> list[Descriptor]:
    found: list[Descriptor] = []

    def walk(descriptor: Descriptor) -> None:
        if descriptor.GetOptions().map_entry:
            return
        found.append(descriptor)
        for nested in descriptor.nested_types:
            walk(nested)

    for module in MODULES:
        for descriptor in module.DESCRIPTOR.message_types_by_name.values():
            walk(descriptor)
    return found


def fill(message: Message, depth: int = 0) -> None:
    """Sets every field (one member of each oneof) to a non-default value."""
    seen_oneofs: set[str] = set()
    for field in message.DESCRIPTOR.fields:
        if field.containing_oneof is not None:
            if field.containing_oneof.name in seen_oneofs:
                continue
            seen_oneofs.add(field.containing_oneof.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            target = getattr(message, field.name)
            key = sample_scalar(key_field)
            if value_field.message_type is not None:
                if depth < 3:
                    fill(target[key], depth + 1)
            else:
                target[key] = sample_scalar(value_field)
            continue
        if field.message_type is not None:
            if depth >= 3:
                continue
            if field.is_repeated:
                fill(getattr(message, field.name).add(), depth + 1)
            else:
                child = getattr(message, field.name)
                fill(child, depth + 1)
                child.SetInParent()
            continue
        value = sample_scalar(field)
        if field.is_repeated:
            getattr(message, field.name).append(value)
        else:
            setattr(message, field.name, value)


def sample_scalar(field: FieldDescriptor):  # type: ignore[no-untyped-def]
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values[-1].number
    if field.type == FieldDescriptor.TYPE_BOOL:
        return True
    if field.type in (FieldDescriptor.TYPE_STRING,):
        return f"{field.name}-ü"
    if field.type == FieldDescriptor.TYPE_BYTES:
        return b"\x00\xff"
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 1.5
    if field.type in (FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_INT32,
                      FieldDescriptor.TYPE_INT64):
        return -7
    return 7


@pytest.mark.parametrize("descriptor", all_messages(), ids=lambda d: d.full_name)
def test_message_round_trips(descriptor: Descriptor) -> None:
    module = next(m for m in MODULES if m.DESCRIPTOR.name == descriptor.file.name)
    cls = getattr(module, descriptor.full_name.removeprefix("callmeter.v1.").split(".")[0])
    for part in descriptor.full_name.removeprefix("callmeter.v1.").split(".")[1:]:
        cls = getattr(cls, part)
    message = cls()
    fill(message)
    data = message.SerializeToString()
    assert data or not descriptor.fields, "a filled message must not serialize to nothing"
    assert cls.FromString(data) == message


def test_there_are_messages_for_every_concern() -> None:
    names = {d.full_name for d in all_messages()}
    for expected in ("callmeter.v1.TestSpec", "callmeter.v1.EndpointGroup", "callmeter.v1.Scenario",
                     "callmeter.v1.QualityGate", "callmeter.v1.Run", "callmeter.v1.WorkerMessage",
                     "callmeter.v1.GatewayMessage", "callmeter.v1.MetricBatch", "callmeter.v1.EndpointMetrics",
                     "callmeter.v1.ApiToken", "callmeter.v1.EngineCommand"):
        assert expected in names


def test_enums_start_with_unspecified_zero() -> None:
    for module in MODULES:
        enums = list(module.DESCRIPTOR.enum_types_by_name.values())
        for message in all_messages():
            enums.extend(message.enum_types)
        for enum in enums:
            assert enum.values[0].number == 0 and enum.values[0].name.endswith("_UNSPECIFIED"), enum.full_name
            prefix = enum.values[0].name.removesuffix("UNSPECIFIED")
            assert all(v.name.startswith(prefix) for v in enum.values), enum.full_name


def test_generated_code_is_fresh() -> None:
    result = subprocess.run([sys.executable, "tools/gen_protos.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_stale_generated_code_is_detected(tmp_path: Path) -> None:
    """The freshness check fails on a copy of the tree whose proto changed but was not regenerated."""
    copy = tmp_path / "tree"
    for part in ("protos", "tools", "callmeter/v1", "callmeter/catalog.py", "callmeter/__init__.py"):
        source, target = ROOT / part, copy / part
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
    common = copy / "protos/callmeter/v1/common.proto"
    common.write_text(common.read_text().replace("message Label {", "message Label {\n  string note = 3;"))
    result = subprocess.run([sys.executable, "tools/gen_protos.py", "--check"], cwd=copy, capture_output=True, text=True)
    assert result.returncode == 1
    assert "common_pb2.py" in result.stderr


def test_services_import_only_contracts_and_common() -> None:
    result = subprocess.run([str(Path(sys.executable).parent / "lint-imports")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout
