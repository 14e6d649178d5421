"""One run on this worker: its engines, their events, and the assignment's status.

Each engine runs a packed share of the endpoints. An engine that dies before saying done loses
its endpoints, reported with the exit reason; the other engines go on. An endpoint error from a
live engine (one failed call of several, a refused REGISTER) is reported but the engine goes
on with that phone. The status goes to the gateway on every change; samples go to the uplink.
The final status counts every sample handed on, so that the platform knows how many to wait for.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import structlog

from callmeter.v1 import common_pb2, engine_pb2, results_pb2, tests_pb2, workers_pb2
from services.worker.engines import EngineProcess

log = structlog.get_logger(__name__)

MAX_ERRORS_SENT = 50
# Callers start this much later than callees when callees register, so that a caller does not
# reach the registrar before its callee has registered (Kamailio answers 404 then).
CALLER_HEADSTART_S = 1.0


class RunExecution:
    def __init__(self, assignment: workers_pb2.Assignment, packed: list[list[workers_pb2.EndpointSlice]],
                 rtp_ranges: list[tuple[int, int]], credentials: dict[str, engine_pb2.Credential],
                 on_sample: Callable[[str, results_pb2.EndpointSample], None],
                 on_status: Callable[[workers_pb2.AssignmentStatus], None],
                 on_error: Callable[[str, workers_pb2.EndpointError], None] | None = None) -> None:
        self.run_id = assignment.run_id
        self.spec: tests_pb2.TestSpec = assignment.spec
        self.start_at = assignment.start_at.ToNanoseconds() / 1e9 if assignment.HasField("start_at") else time.time()
        self.packed = packed
        self.rtp_ranges = rtp_ranges
        self.credentials = credentials
        self.on_sample = on_sample
        self.on_status = on_status
        # Told of every endpoint error as it is recorded (the status carries only the newest ones).
        self.on_error = on_error
        self.endpoints = sum(piece.count for slices in packed for piece in slices)
        self.erred: set[tuple[str, int]] = set()  # reported at least one error
        self.lost: set[tuple[str, int]] = set()  # their engine could not start or died
        self.endpoint_seconds: Counter[str] = Counter()  # samples handed on, by group
        self.errors: list[workers_pb2.EndpointError] = []
        self.engines: list[EngineProcess] = []
        self.cancelled = False
        self.state = workers_pb2.ASSIGNMENT_STATE_ACCEPTED

    @property
    def running_endpoints(self) -> int:
        return self.endpoints - len(self.lost) if self.state == workers_pb2.ASSIGNMENT_STATE_RUNNING else 0

    def status(self) -> workers_pb2.AssignmentStatus:
        return workers_pb2.AssignmentStatus(run_id=self.run_id, state=self.state,
                                            endpoints_running=self.running_endpoints,
                                            endpoints_failed=len(self.erred | self.lost),
                                            errors=self.errors[-MAX_ERRORS_SENT:],
                                            endpoints_failed_by_group=Counter(g for g, _ in self.erred | self.lost),
                                            endpoint_seconds_by_group=self.endpoint_seconds)

    def _report(self, state: int | None = None) -> None:
        if state is not None:
            self.state = state
        self.on_status(self.status())

    def _record(self, error: workers_pb2.EndpointError) -> None:
        self.erred.add((error.group, error.endpoint))
        self.errors.append(error)
        if self.on_error is not None:
            self.on_error(self.run_id, error)

    async def run(self) -> None:
        """Starts every engine, follows them to the end, reports the final state."""
        self._report()
        tasks = [asyncio.create_task(self._engine(i, slices)) for i, slices in enumerate(self.packed)]
        self._report(workers_pb2.ASSIGNMENT_STATE_RUNNING)
        await asyncio.gather(*tasks)
        if self.cancelled:
            self._report(workers_pb2.ASSIGNMENT_STATE_CANCELLED)
        elif len(self.lost) >= self.endpoints:
            self._report(workers_pb2.ASSIGNMENT_STATE_FAILED)
        else:
            self._report(workers_pb2.ASSIGNMENT_STATE_DONE)

    async def cancel(self, reason: str) -> None:
        self.cancelled = True
        await asyncio.gather(*(engine.stop(reason) for engine in self.engines))

    async def _engine(self, number: int, slices: list[workers_pb2.EndpointSlice]) -> None:
        engine = EngineProcess(f"{self.run_id[:8]}-{number}")
        self.engines.append(engine)
        log_ = log.bind(run_id=self.run_id, engine=engine.name)
        try:
            await engine.start()
            port_min, port_max = self.rtp_ranges[number]
            await engine.send(engine_pb2.EngineCommand(start=engine_pb2.EngineStart(
                run_id=self.run_id, spec=self.spec, slices=slices, rtp_port_min=port_min, rtp_port_max=port_max,
                credentials=self.credentials, start_at=self._start_at(slices))))
        except (RuntimeError, OSError, asyncio.TimeoutError) as exc:
            if engine.process is not None:
                await engine.kill()
            if not self.cancelled:  # a cancel while it started stops it before ready: no failure
                log_.error("engine_start_failed", error=str(exc))
                self._fail_slices(slices, f"engine could not start: {exc}")
            return
        if self.cancelled:  # cancelled while this engine started: cancel() could not reach it yet
            await engine.stop("cancelled")
            return
        done = False
        async for event in engine.events():
            kind = event.WhichOneof("event")
            if kind == "sample":
                self.endpoint_seconds[event.sample.group] += 1
                self.on_sample(self.run_id, event.sample)
            elif kind == "endpoint_error":
                self._record(event.endpoint_error)
                self._report()
            elif kind == "done":
                done = True
                await engine.stop("scenario finished")
        code = await engine.stop("engine closed its output")
        if not done and not self.cancelled:
            reason = engine.exit_reason()
            log_.error("engine_died", reason=reason, code=code)
            self._fail_slices(slices, reason)
            self._report()

    def _fail_slices(self, slices: list[workers_pb2.EndpointSlice], reason: str) -> None:
        for piece in slices:
            for index in range(piece.first_index, piece.first_index + piece.count):
                self.lost.add((piece.group, index))
                self._record(workers_pb2.EndpointError(group=piece.group, endpoint=index, reason=reason))

    def _start_at(self, slices: list[workers_pb2.EndpointSlice]) -> float:
        roles = {group.name: group.role for group in self.spec.groups}
        callees_register = any(g.role == common_pb2.ENDPOINT_ROLE_CALLEE and g.target.registrar for g in self.spec.groups)
        has_callers = any(roles.get(piece.group) == common_pb2.ENDPOINT_ROLE_CALLER for piece in slices)
        return self.start_at + (CALLER_HEADSTART_S if callees_register and has_callers else 0.0)
