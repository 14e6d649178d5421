"""--json of a contract message: enum words as test files and tables write them, every field, in order."""

from __future__ import annotations

import json

from callmeter.cli.json_words import message_json
from callmeter.v1 import common_pb2, runs_pb2, tenancy_pb2, workers_pb2


def test_enums_are_words_wherever_they_are() -> None:
    worker = workers_pb2.Worker(name="w", state=workers_pb2.WORKER_STATE_ONLINE, capacity=workers_pb2.WorkerCapacity(
        transports=[common_pb2.TRANSPORT_UDP, common_pb2.TRANSPORT_TLS], srtp_keyings=[common_pb2.SRTP_KEYING_SDES]))
    data = message_json(worker)
    assert (data["state"], data["capacity"]["transports"], data["capacity"]["srtp_keyings"]) == (
        "online", ["udp", "tls"], ["sdes"])
    assert message_json(runs_pb2.Run(state=runs_pb2.RUN_STATE_FINISHED))["state"] == "finished"
    assert message_json(runs_pb2.Run())["verdict"] == "unspecified"
    members = message_json(tenancy_pb2.ListUsersResponse(users=[tenancy_pb2.Member(bindings=[
        tenancy_pb2.RoleBinding(role=tenancy_pb2.ROLE_RUNNER, project_id="p")])]))
    assert members["users"][0]["bindings"] == [{"user_id": "", "role": "runner", "project_id": "p"}]


def test_every_field_is_shown_in_order_unset_messages_null_and_other_oneof_members_out() -> None:
    token = tenancy_pb2.WorkerToken(id="t", project_id="p")
    token.created_at.FromSeconds(0)
    assert list(message_json(token).items()) == [("id", "t"), ("name", ""), ("project_id", "p"),
                                                 ("created_at", "1970-01-01T00:00:00Z"), ("revoked", False)]
    assert message_json(tenancy_pb2.ApiToken())["expires_at"] is None
    assert list(message_json(workers_pb2.WorkerMessage(goodbye=workers_pb2.Goodbye()))) == ["goodbye"]


def test_map_values_and_numbers_are_json() -> None:
    status = workers_pb2.AssignmentStatus(endpoints_failed_by_group={"callers": 2}, endpoint_seconds_by_group={"a": 5})
    data = json.loads(json.dumps(message_json(status)))
    assert data["endpoints_failed_by_group"] == {"callers": 2} and data["endpoint_seconds_by_group"] == {"a": "5"}
    assert data["state"] == "unspecified"
