"""Rows of the state store as their protobuf messages, shared by the api and the orchestrator.

Each function reads only attributes, so a Core row with the same column names serves as well as
an ORM object (the api's hot reads select columns rather than load objects).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from datetime import UTC, datetime

import sqlalchemy as sa
from google.protobuf.timestamp_pb2 import Timestamp

from callmeter.state.models import Run, RunPlacement, Test, TestVersion, Worker
from callmeter.v1 import common_pb2, runs_pb2, tests_pb2, workers_pb2

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def set_time(field: Timestamp, value: datetime) -> None:
    """``field.FromDatetime(value)`` for an aware datetime (as every state timestamp is), in a
    quarter of the time: lists convert several per row."""
    since = value - _EPOCH
    field.seconds = since.days * 86400 + since.seconds
    field.nanos = since.microseconds * 1000


def worker_to_proto(worker: Worker) -> workers_pb2.Worker:
    message = workers_pb2.Worker(
        id=worker.id, name=worker.name, version=worker.version, gateway_id=worker.gateway_id or "",
        state=workers_pb2.WorkerState.Value(worker.state), running_endpoints=worker.running_endpoints,
        labels=[common_pb2.Label(key=label["key"], value=label["value"]) for label in worker.labels],
        capacity=workers_pb2.WorkerCapacity.FromString(worker.capacity),
    )
    if worker.last_heartbeat is not None:
        message.last_heartbeat.FromDatetime(worker.last_heartbeat)
    return message


def run_to_proto(run: Run | sa.Row[Any],
                 placements: Sequence[RunPlacement | sa.Row[Any]] | None = None) -> runs_pb2.Run:
    message = runs_pb2.Run(
        id=run.id, test_id=run.test_id, test_version=run.test_version, project_id=run.project_id,
        state=runs_pb2.RunState.Value(run.state), verdict=runs_pb2.Verdict.Value(run.verdict),
        reasons=list(run.reasons), started_by=run.started_by or "",
        placements=[runs_pb2.Placement(worker_id=p.worker_id, group=p.group_name, first_index=p.first_index,
                                       count=p.count, role=common_pb2.EndpointRole.Value(p.role))
                    for p in placements or []],
    )
    set_time(message.created_at, run.created_at)
    if run.started_at is not None:
        set_time(message.started_at, run.started_at)
    if run.ended_at is not None:
        set_time(message.ended_at, run.ended_at)
    return message


def test_to_proto(test: Test | sa.Row[Any], version: TestVersion | sa.Row[Any]) -> tests_pb2.Test:
    message = tests_pb2.Test(id=test.id, project_id=test.project_id, version=version.version,
                             spec=tests_pb2.TestSpec.FromString(version.spec), archived=test.archived)
    set_time(message.created_at, test.created_at)
    set_time(message.updated_at, test.updated_at)
    return message
