"""The worker's health server: a client gone before its reply prints nothing, other errors are
one structlog line (never socketserver's plain-text traceback in the JSON log)."""

from __future__ import annotations

import socket
import struct
import threading

import pytest
from structlog.testing import capture_logs

from services.worker.health import HealthServer, WorkerStatus, start_health_server
from tests.procs import http_get


def test_a_client_that_resets_its_connection_leaves_no_traceback(monkeypatch: pytest.MonkeyPatch,
                                                                   capfd: pytest.CaptureFixture[str]) -> None:
    handled = threading.Event()
    original = HealthServer.handle_error

    def handle_error(self: HealthServer, request: object, client_address: tuple[str, int]) -> None:
        original(self, request, client_address)
        handled.set()

    monkeypatch.setattr(HealthServer, "handle_error", handle_error)
    server = start_health_server(WorkerStatus(gateway="127.0.0.1:1"), "127.0.0.1", 0)
    try:
        with capture_logs() as logs:
            for _ in range(20):  # until one reset lands while the server reads or writes
                client = socket.create_connection(server.server_address[:2])
                client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()  # an RST, not a FIN
                if handled.wait(1):
                    break
            assert handled.is_set(), "no request failed on a reset connection"
            assert http_get(f"http://127.0.0.1:{server.server_address[1]}/healthz")[0] == 200
        assert logs == []
        assert "Traceback" not in capfd.readouterr().err
    finally:
        server.shutdown()
        server.server_close()


def test_any_other_request_error_is_one_log_line(capfd: pytest.CaptureFixture[str]) -> None:
    server = HealthServer(("127.0.0.1", 0), object)  # type: ignore[arg-type]
    try:
        with capture_logs() as logs:
            try:
                raise ValueError("bad request")
            except ValueError:
                server.handle_error(None, ("127.0.0.1", 5))
        assert logs == [{"event": "health_request_failed", "client": "127.0.0.1:5",
                         "error": "ValueError: bad request", "log_level": "error"}]
        assert "Traceback" not in capfd.readouterr().err
    finally:
        server.server_close()
