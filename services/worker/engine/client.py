"""A synchronous client for one engine subprocess: start it, send commands, read its events.

Used by the probe's measurements and the tests; it shows the supervisor's side of the channel.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from callmeter.v1 import engine_pb2
from services.worker.engine.channel import encode, read_frame

REPO = Path(__file__).resolve().parents[3]


class EngineClient:
    def __init__(self, env: dict[str, str] | None = None, stderr: IO[bytes] | int | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.worker.engine"], cwd=REPO, env={**os.environ, **(env or {})},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
        )
        self._events: queue.SimpleQueue[engine_pb2.EngineEvent | None] = queue.SimpleQueue()
        # Every event taken from the queue so far, in order.
        self.received: list[engine_pb2.EngineEvent] = []
        self._reader = threading.Thread(target=self._read, name="engine-events", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            while (body := read_frame(self.proc.stdout)) is not None:
                event = engine_pb2.EngineEvent()
                event.ParseFromString(body)
                self._events.put(event)
        finally:
            self._events.put(None)

    def send(self, command: engine_pb2.EngineCommand) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(encode(command))
        self.proc.stdin.flush()

    def next_event(self, timeout: float) -> engine_pb2.EngineEvent | None:
        """The next event; None once the engine closed its stdout; queue.Empty on timeout."""
        event = self._events.get(timeout=timeout)
        if event is not None:
            self.received.append(event)
        return event

    def wait_for(self, kind: str, timeout: float) -> engine_pb2.EngineEvent | None:
        """The next event of this kind ("ready", "sample", "endpoint_error", "done"), or None."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self.next_event(left)
            except queue.Empty:
                return None
            if event is None:
                return None
            if event.WhichOneof("event") == kind:
                return event
        return None

    def stop(self, close_only: bool = False, timeout: float = 15) -> int:
        """Stops the engine (a stop command, or only the end of its stdin); returns its exit code."""
        assert self.proc.stdin is not None
        if not close_only:
            self.send(engine_pb2.EngineCommand(stop=engine_pb2.EngineStop(reason="client stop")))
        self.proc.stdin.close()
        code = self.proc.wait(timeout)
        self._reader.join(5)
        while (event := self._events.get(timeout=1)) is not None:  # sent while stopping
            self.received.append(event)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
