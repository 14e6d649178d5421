"""Engine processes seen from the supervisor: spawn, talk protobuf frames, watch them die.

A pjsua2 assertion aborts only the engine that hit it; the supervisor reads the exit status
and reports that engine's endpoints as failed with the reason.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator

import structlog

from callmeter.v1 import engine_pb2
from services.worker.engine.channel import HEADER, MAX_FRAME, encode

log = structlog.get_logger(__name__)

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


class EngineProcess:
    def __init__(self, name: str) -> None:
        self.name = name
        self.process: asyncio.subprocess.Process | None = None
        self.ready: engine_pb2.EngineReady | None = None

    async def start(self) -> engine_pb2.EngineReady:
        """Spawns the engine and waits for its ready event."""
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.worker.engine",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)  # stderr: the worker's own log
        first = await asyncio.wait_for(self._read(), READY_TIMEOUT_S)
        if first is None or first.WhichOneof("event") != "ready":
            await self.kill()
            raise RuntimeError(f"engine {self.name} did not start: {self.exit_reason()}")
        self.ready = first.ready
        return first.ready

    async def send(self, command: engine_pb2.EngineCommand) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(encode(command))
        await self.process.stdin.drain()

    async def events(self) -> AsyncIterator[engine_pb2.EngineEvent]:
        """Every event until the engine closes its stdout."""
        while (event := await self._read()) is not None:
            yield event

    async def _read(self) -> engine_pb2.EngineEvent | None:
        assert self.process is not None and self.process.stdout is not None
        try:
            header = await self.process.stdout.readexactly(HEADER.size)
            (length,) = HEADER.unpack(header)
            if length > MAX_FRAME:
                raise ValueError(f"frame of {length} bytes")
            return engine_pb2.EngineEvent.FromString(await self.process.stdout.readexactly(length))
        except asyncio.IncompleteReadError:
            return None

    async def stop(self, reason: str) -> int:
        """Asks the engine to hang up and exit; kills it if it does not within the timeout."""
        if self.process is None:
            return 0
        if self.process.returncode is None:
            try:
                await self.send(engine_pb2.EngineCommand(stop=engine_pb2.EngineStop(reason=reason)))
                assert self.process.stdin is not None
                self.process.stdin.close()
            except (BrokenPipeError, ConnectionResetError):
                pass
        try:
            return await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.warning("engine_kill", engine=self.name, after_s=STOP_TIMEOUT_S)
            return await self.kill()

    async def kill(self) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.kill()
        return await self.process.wait()

    def exit_reason(self) -> str:
        code = self.process.returncode if self.process else None
        if code is None:
            return "still running"
        if code < 0:
            return f"engine process killed by {signal.Signals(-code).name}"
        return f"engine process exited with code {code}"


async def probe_engine() -> engine_pb2.EngineReady | None:
    """Starts one engine to learn the SIP stack's codecs and limits; None if no engine can start."""
    engine = EngineProcess("probe")
    try:
        ready = await engine.start()
    except (RuntimeError, OSError, asyncio.TimeoutError) as exc:
        log.error("engine_unavailable", error=str(exc))
        return None
    await engine.stop("probe done")
    return ready
