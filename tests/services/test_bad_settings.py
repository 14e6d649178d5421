"""A bad setting gives one clear line naming it, exit code 2, and no traceback."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from callmeter.common.tls import DevPki
from tests.procs import run_callmeter


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def assert_one_line_error(result, setting: str, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("callmeter: error:")]
    assert len(lines) == 1, result.stderr
    assert setting in lines[0], lines[0]
    for word in words:
        assert word in lines[0], lines[0]


def test_unknown_database_scheme(tmp_path: Path) -> None:
    result = run_callmeter("api", env={"CALLMETER_DATABASE_URL": "mysql://root@127.0.0.1/test"}, cwd=tmp_path)
    assert_one_line_error(result, "CALLMETER_DATABASE_URL", "unknown scheme")


def test_unknown_metrics_store_scheme(tmp_path: Path) -> None:
    result = run_callmeter("metrics", env={"CALLMETER_CLICKHOUSE_URL": "ftp://x"}, cwd=tmp_path)
    assert_one_line_error(result, "CALLMETER_CLICKHOUSE_URL", "unknown scheme")


def test_unknown_nats_scheme(tmp_path: Path) -> None:
    result = run_callmeter("metrics", env={"CALLMETER_NATS_URL": "amqp://127.0.0.1"}, cwd=tmp_path)
    assert_one_line_error(result, "CALLMETER_NATS_URL", "unknown scheme")


def test_unreachable_postgresql(tmp_path: Path) -> None:
    # A port where nothing speaks PostgreSQL: the connection fails at once.
    result = run_callmeter("orchestrator", env={"CALLMETER_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none",
                                                "CALLMETER_NATS_URL": "nats://127.0.0.1:1"}, cwd=tmp_path)
    assert_one_line_error(result, "CALLMETER_DATABASE_URL", "cannot connect")


def test_unreachable_nats(tmp_path: Path) -> None:
    result = run_callmeter("metrics", env={"CALLMETER_NATS_URL": "nats://127.0.0.1:1",
                                           "CALLMETER_CLICKHOUSE_URL": f"chdb://{tmp_path / 'm'}"}, cwd=tmp_path)
    assert_one_line_error(result, "CALLMETER_NATS_URL", "cannot connect")


def test_grpc_port_in_use(tmp_path: Path, busy_port: int) -> None:
    result = run_callmeter("api", env={"CALLMETER_GRPC_PORT": str(busy_port),
                                       "CALLMETER_DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}"}, cwd=tmp_path)
    assert_one_line_error(result, "CALLMETER_GRPC_PORT", str(busy_port))


def test_prometheus_port_in_use(tmp_path: Path, busy_port: int) -> None:
    result = run_callmeter("api", env={"CALLMETER_PROMETHEUS_PORT": str(busy_port),
                                       "CALLMETER_DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}"}, cwd=tmp_path)
    assert_one_line_error(result, "CALLMETER_PROMETHEUS_PORT", str(busy_port))


def test_worker_health_port_in_use(tmp_path: Path, busy_port: int) -> None:
    result = run_callmeter("worker", env={"CALLMETER_HEALTH_PORT": str(busy_port), "CALLMETER_WORKER_TOKEN": "x"},
                           cwd=tmp_path)
    assert_one_line_error(result, "CALLMETER_HEALTH_PORT", str(busy_port))


def test_unreadable_certificate(tmp_path: Path, pki: DevPki, nats_server) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "nope.pem"
    result = run_callmeter("gateway", env={"CALLMETER_TLS_CERT_FILE": str(missing),
                                           "CALLMETER_TLS_KEY_FILE": str(pki.server_key),
                                           "CALLMETER_NATS_URL": nats_server.url}, cwd=tmp_path)
    assert_one_line_error(result, "CALLMETER_TLS_CERT_FILE", str(missing))


def test_certificate_that_is_not_pem(tmp_path: Path, pki: DevPki, nats_server) -> None:  # type: ignore[no-untyped-def]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    result = run_callmeter("gateway", env={"CALLMETER_TLS_CERT_FILE": str(pki.server_cert),
                                           "CALLMETER_TLS_KEY_FILE": str(garbage),
                                           "CALLMETER_NATS_URL": nats_server.url}, cwd=tmp_path)
    assert_one_line_error(result, "CALLMETER_TLS_KEY_FILE", "not a PEM file")


def test_missing_required_setting(tmp_path: Path) -> None:
    result = run_callmeter("gateway", env={}, cwd=tmp_path)
    assert_one_line_error(result, "CALLMETER_TLS_CERT_FILE", "required")


def test_value_out_of_range(tmp_path: Path) -> None:
    result = run_callmeter("api", env={"CALLMETER_GRPC_PORT": "70000"}, cwd=tmp_path)
    assert_one_line_error(result, "CALLMETER_GRPC_PORT", "70000")


def test_inverted_rtp_port_range(tmp_path: Path) -> None:
    result = run_callmeter("worker", env={"CALLMETER_WORKER_TOKEN": "x", "CALLMETER_RTP_PORT_MIN": "30000",
                                          "CALLMETER_RTP_PORT_MAX": "20000"}, cwd=tmp_path)
    assert_one_line_error(result, "CALLMETER_RTP_PORT_MIN", "CALLMETER_RTP_PORT_MAX")
