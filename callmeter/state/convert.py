"""Rows of the state store as their protobuf messages, shared by the api and the orchestrator."""

from __future__ import annotations

from callmeter.state.models import Run, RunPlacement, Test, TestVersion, Worker
from callmeter.v1 import common_pb2, runs_pb2, tests_pb2, workers_pb2


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


def run_to_proto(run: Run, placements: list[RunPlacement] | None = None) -> runs_pb2.Run:
    message = runs_pb2.Run(
        id=run.id, test_id=run.test_id, test_version=run.test_version, project_id=run.project_id,
        state=runs_pb2.RunState.Value(run.state), verdict=runs_pb2.Verdict.Value(run.verdict),
        reasons=list(run.reasons), started_by=run.started_by or "",
        placements=[runs_pb2.Placement(worker_id=p.worker_id, group=p.group_name, first_index=p.first_index,
                                       count=p.count, role=common_pb2.EndpointRole.Value(p.role))
                    for p in placements or []],
    )
    message.created_at.FromDatetime(run.created_at)
    if run.started_at is not None:
        message.started_at.FromDatetime(run.started_at)
    if run.ended_at is not None:
        message.ended_at.FromDatetime(run.ended_at)
    return message


def test_to_proto(test: Test, version: TestVersion) -> tests_pb2.Test:
    message = tests_pb2.Test(id=test.id, project_id=test.project_id, version=version.version,
                             spec=tests_pb2.TestSpec.FromString(version.spec), archived=test.archived)
    message.created_at.FromDatetime(test.created_at)
    message.updated_at.FromDatetime(test.updated_at)
    return message
