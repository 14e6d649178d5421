"""Test helpers: callmeter processes started as a user would, on free loopback ports."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import nats

from callmeter.common.stores.metrics_stream import STREAM
from callmeter.v1 import results_pb2

ROOT = Path(__file__).resolve().parent.parent


def callmeter_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "callmeter.cli.main", *args]


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLMETER_")}
    # Every SIP and RTP packet a test makes stays on loopback. The internal links are plaintext
    # unless a test gives the certificates (tests/services/test_internal_tls.py, `up`).
    env.update(CALLMETER_LOG_FORMAT="json", CALLMETER_GRPC_PORT="0", CALLMETER_PROMETHEUS_PORT="0",
               CALLMETER_INSECURE_INTERNAL="true", SIP_IP="127.0.0.1")
    env.update(extra)
    return env


@dataclass
class ServiceProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_file: Path
    ready: dict[str, int]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ready['grpc_port']}"

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def terminate(self, timeout_s: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit code (fails the test if it does not exit in time)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"{self.name} did not exit within {timeout_s} s of SIGTERM:\n{self.log()[-3000:]}")


def start_service(name: str, tmp_path: Path, env: dict[str, str], timeout_s: float = 60.0) -> ServiceProcess:
    """Starts `callmeter NAME` and waits for its ready file."""
    ready_file = tmp_path / f"{name}-{time.monotonic_ns()}.ready"
    log_file = tmp_path / f"{name}-{time.monotonic_ns()}.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(callmeter_command(name), env={**base_env(**env), "CALLMETER_READY_FILE": str(ready_file)},
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=tmp_path)
    deadline = time.monotonic() + timeout_s
    while not ready_file.exists():
        if process.poll() is not None:
            raise AssertionError(f"{name} exited with {process.returncode}:\n{log_file.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{name} not ready within {timeout_s} s:\n{log_file.read_text()[-3000:]}")
        time.sleep(0.05)
    return ServiceProcess(name, process, log_file, json.loads(ready_file.read_text()))


def run_callmeter(*args: str, env: dict[str, str] | None = None, timeout_s: float = 60.0,
                  cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(callmeter_command(*args), env=base_env(**(env or {})), capture_output=True, text=True,
                          timeout=timeout_s, cwd=cwd)


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def eventually(check, timeout_s: float = 20.0, interval_s: float = 0.1, message: str = "condition"):  # type: ignore[no-untyped-def]
    """Polls ``check`` until it returns a truthy value, which is returned; fails after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not reached within {timeout_s} s")
        time.sleep(interval_s)


def create_metrics_streams(nats_url: str) -> None:
    """The streams as metrics-ingest creates them at its start (its default limits), for a gateway
    started without metrics-ingest: the gateway waits for them, it never creates them."""
    from services.metrics.settings import MetricsSettings
    from services.metrics.stream import ensure_streams

    async def create() -> None:
        nc = await nats.connect(nats_url)
        try:
            s = MetricsSettings()
            await ensure_streams(nc.jetstream(), replicas=1, duplicate_window_s=s.stream_duplicate_window_s,
                                 max_age_s=s.stream_max_age_s, max_bytes=s.stream_max_bytes,
                                 deadletter_max_age_s=s.deadletter_max_age_s)
        finally:
            await nc.close()

    asyncio.run(create())


def stored_batches(nats_url: str) -> list[results_pb2.MetricBatch]:
    """Every MetricBatch in the CALLMETER_METRICS stream, in stream order."""

    async def read() -> list[results_pb2.MetricBatch]:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            info = await js.stream_info(STREAM)
            return [results_pb2.MetricBatch.FromString((await js.get_msg(STREAM, seq)).data)
                    for seq in range(info.state.first_seq, info.state.last_seq + 1)]
        finally:
            await nc.close()

    return asyncio.run(read())
