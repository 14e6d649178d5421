"""Engine subprocesses for the tests: each with its log in a file, killed at the end."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from callmeter.v1 import engine_pb2
from services.worker.engine.client import EngineClient


class EngineProcess(EngineClient):
    """An engine with its log in a file; waits fail the test with the log's tail."""

    def __init__(self, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        super().__init__(env={"SIP_IP": "127.0.0.1", "PYTHONFAULTHANDLER": "1", **(env or {})},
                         stderr=log_path.open("wb"))

    def wait_for(self, kind: str, timeout: float) -> engine_pb2.EngineEvent:
        event = super().wait_for(kind, timeout)
        if event is None:
            pytest.fail(f"no {kind} event within {timeout} s; engine log:\n{self.log()}")
        return event

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def run_to_end(self, command: engine_pb2.EngineCommand, timeout: float) -> None:
        """Once ready, runs ``command`` until the engine says done, then stops it; it must exit 0."""
        self.wait_for("ready", timeout=20)
        self.send(command)
        self.wait_for("done", timeout=timeout)
        assert self.stop() == 0, self.log()


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[Callable[..., EngineProcess]]:
    """``engines(name, env=None)`` starts an engine (with these environment variables added)."""
    started: list[EngineProcess] = []

    def start(name: str, env: dict[str, str] | None = None) -> EngineProcess:
        engine = EngineProcess(tmp_path / f"{name}.log", env)
        started.append(engine)
        return engine

    yield start
    for engine in started:
        engine.kill()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def samples_of(engine: EngineProcess) -> list:
    return [e.sample for e in engine.received if e.WhichOneof("event") == "sample"]


def total(samples: list, field: str) -> int:
    return sum(getattr(s.metrics, field) for s in samples)


def final_outcomes(samples: list) -> dict[tuple[str, int], tuple[int, int]]:
    """(group, endpoint) → (outcome, outcome_code) of its newest sample: how the endpoint ended."""
    newest = {}
    for sample in sorted(samples, key=lambda s: s.second):
        newest[(sample.group, sample.endpoint)] = (sample.metrics.outcome, sample.metrics.outcome_code)
    return newest
