"""Every service starts as its own process, serves health and /metrics, and exits 0 on SIGTERM."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from callmeter.common.channels import check_health, sync_channel
from callmeter.common.stores.nats import EmbeddedNats
from callmeter.common.tls import DevPki
from tests.procs import http_get, start_service


def service_env(name: str, tmp_path: Path, nats: EmbeddedNats, pki: DevPki, database_url: str) -> dict[str, str]:
    return {
        "api": {"CALLMETER_DATABASE_URL": database_url},
        "orchestrator": {"CALLMETER_DATABASE_URL": database_url, "CALLMETER_NATS_URL": nats.url},
        # The gateway starts without an orchestrator: it only needs one once a worker says hello.
        "gateway": {"CALLMETER_NATS_URL": nats.url, "CALLMETER_TLS_CERT_FILE": str(pki.server_cert),
                    "CALLMETER_TLS_KEY_FILE": str(pki.server_key), "CALLMETER_ORCHESTRATOR_ADDRESS": "127.0.0.1:1"},
        "metrics": {"CALLMETER_NATS_URL": nats.url, "CALLMETER_CLICKHOUSE_URL": f"chdb://{tmp_path / 'metrics'}"},
    }[name]


def reflected_services(channel: grpc.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    return {service.name for reply in replies for service in reply.list_services_response.service}


# Only the api and the orchestrator use the SQL store, so only they run on both backends.
SERVICE_CASES = [
    pytest.param("api", "sqlite", id="api-sqlite"),
    pytest.param("api", "postgres", id="api-postgres", marks=pytest.mark.postgres),
    pytest.param("orchestrator", "sqlite", id="orchestrator-sqlite"),
    pytest.param("orchestrator", "postgres", id="orchestrator-postgres", marks=pytest.mark.postgres),
    pytest.param("gateway", "", id="gateway"),
    pytest.param("metrics", "", id="metrics"),
]


@pytest.mark.parametrize(("name", "backend"), SERVICE_CASES)
def test_service_serves_health_metrics_and_stops_on_sigterm(
    name: str, backend: str, tmp_path: Path, nats_server: EmbeddedNats, pki: DevPki, request: pytest.FixtureRequest
) -> None:
    database_url = request.getfixturevalue("postgres_url") if backend == "postgres" else f"sqlite:///{tmp_path / 'state.db'}"
    service = start_service(name, tmp_path, service_env(name, tmp_path, nats_server, pki, database_url))
    ca = pki.ca_cert if name == "gateway" else None
    try:
        assert check_health(service.address, ca), f"{name} is not SERVING:\n{service.log()[-2000:]}"
        with sync_channel(service.address, ca) as channel:
            services = reflected_services(channel)
            assert "grpc.health.v1.Health" in services
            assert any(s.startswith("callmeter.v1.") for s in services), services
        status, body = http_get(f"http://127.0.0.1:{service.ready['prometheus_port']}/metrics")
        assert status == 200 and "process_resident_memory_bytes" in body
    finally:
        began = time.monotonic()
        code = service.terminate(timeout_s=10)
    assert code == 0, service.log()[-2000:]
    assert time.monotonic() - began < 10
    assert '"event": "stopped"' in service.log()


def test_health_turns_not_serving_while_draining(tmp_path: Path, nats_server: EmbeddedNats, pki: DevPki) -> None:
    """During the grace period the health service already says NOT_SERVING (load balancers drain)."""
    service = start_service("api", tmp_path, {"CALLMETER_DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}",
                                              "CALLMETER_SHUTDOWN_GRACE_S": "3"})
    with sync_channel(service.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=15)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        service.process.terminate()
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert service.process.wait(10) == 0


def test_worker_health_endpoint_and_sigterm(tmp_path: Path) -> None:
    """With no gateway reachable, the worker is live but not ready, says why, and still stops cleanly."""
    worker = start_service("worker", tmp_path, {
        "CALLMETER_GATEWAY_ADDRESS": "127.0.0.1:1", "CALLMETER_WORKER_TOKEN": "cmw_x", "CALLMETER_HEALTH_PORT": "0",
        "CALLMETER_RECONNECT_INITIAL_S": "0.2"})
    base = f"http://127.0.0.1:{worker.ready['health_port']}"
    try:
        assert http_get(f"{base}/healthz")[0] == 200
        status, body = http_get(f"{base}/readyz")
        assert status == 503 and '"state": "offline"' in body
        assert http_get(f"{base}/metrics")[0] == 200
    finally:
        code = worker.terminate()
    assert code == 0, worker.log()[-2000:]


