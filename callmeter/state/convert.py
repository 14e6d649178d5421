"""Rows of the state store as their protobuf messages, shared by the api and the orchestrator."""

from __future__ import annotations

from callmeter.state.models import Worker
from callmeter.v1 import common_pb2, workers_pb2


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
