"""The worker's local health endpoint: /healthz (live), /readyz (connected), /metrics (Prometheus)."""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import prometheus_client
import structlog

from callmeter.common.enum_words import word
from callmeter.common.errors import ConfigError
from callmeter.v1 import workers_pb2

log = structlog.get_logger(__name__)


@dataclass
class WorkerStatus:
    """What the health endpoint reports; written by the link, read by HTTP threads."""

    gateway: str
    state: int = workers_pb2.WORKER_STATE_OFFLINE
    worker_id: str = ""
    last_heartbeat_ack: float | None = None
    running_endpoints: int = 0
    dropped_samples: int = 0
    last_error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def connected(self) -> bool:
        return self.state in (workers_pb2.WORKER_STATE_ONLINE, workers_pb2.WORKER_STATE_BUSY)

    def as_json(self) -> dict[str, object]:
        with self.lock:
            return {
                "state": word(workers_pb2.WorkerState, self.state),
                "worker_id": self.worker_id,
                "gateway": self.gateway,
                "last_heartbeat": self.last_heartbeat_ack,
                "running_endpoints": self.running_endpoints,
                "dropped_samples": self.dropped_samples,
                "last_error": self.last_error,
            }


class HealthServer(ThreadingHTTPServer):
    """A client that goes away before its reply (a probe's timeout) is no error; any other error
    of a request is one JSON log line, never socketserver's traceback on stderr."""

    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (BrokenPipeError, ConnectionResetError)):
            return
        log.error("health_request_failed", client=f"{client_address[0]}:{client_address[1]}",
                  error=f"{type(error).__name__}: {error}")


def start_health_server(status: WorkerStatus, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/healthz":
                self._reply(200, {"status": "live"})
            elif self.path == "/readyz":
                body = status.as_json()
                self._reply(200 if status.connected else 503, body)
            elif self.path == "/metrics":
                payload = prometheus_client.generate_latest()
                self.send_response(200)
                self.send_header("Content-Type", prometheus_client.CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            else:
                self._reply(404, {"error": f"no such path {self.path}"})

        def _reply(self, code: int, body: dict[str, object]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *_args: object) -> None:  # probes every few seconds must not flood the log
            return None

    try:
        server = HealthServer((host, port), Handler)
    except OSError as exc:
        raise ConfigError("CALLMETER_HEALTH_PORT", f"cannot listen on {host}:{port}: {exc.strerror}") from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server
