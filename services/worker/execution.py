"""One run on this worker: its engines, their events, and the assignment's status.

The start has two phases (callmeter/common/start_waves.py): every engine starts and prepares its
endpoints (ASSIGNMENT_STATE_PREPARED once all have), then ``begin`` tells them when each group
begins (RUNNING); an assignment with a start time begins every group then by itself. An engine
prepared after a begin gets it at once and catches up from the time given.

Each engine runs a packed share of the endpoints. An engine that dies before saying done loses
its endpoints, reported with the exit reason; the other engines go on. An endpoint error from a
live engine (one failed call of several, a refused REGISTER) is reported but the engine goes
on with that phone. The status goes to the gateway on every change; samples go to the uplink.
The final status counts every sample handed on, so that the platform knows how many to wait for.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import structlog

from callmeter.v1 import common_pb2, engine_pb2, results_pb2, tests_pb2, workers_pb2
from services.worker.engines import EngineProcess
from services.worker.loop_lag import LoopLag

log = structlog.get_logger(__name__)

MAX_ERRORS_SENT = 50
# A change seen only in samples (a registration) is reported at most this often.
STATUS_EVERY_S = 1.0


class RunExecution:
    def __init__(self, assignment: workers_pb2.Assignment, packed: list[list[workers_pb2.EndpointSlice]],
                 rtp_ranges: list[tuple[int, int]], credentials: dict[str, engine_pb2.Credential],
                 on_sample: Callable[[str, results_pb2.EndpointSample], None],
                 on_status: Callable[[workers_pb2.AssignmentStatus], None],
                 on_error: Callable[[str, workers_pb2.EndpointError], None] | None = None,
                 loop_lag: LoopLag | None = None) -> None:
        self.run_id = assignment.run_id
        self.spec: tests_pb2.TestSpec = assignment.spec
        self.packed = packed
        self.rtp_ranges = rtp_ranges
        self.credentials = credentials
        self.on_sample = on_sample
        self.on_status = on_status
        # Told of every endpoint error as it is recorded (the status carries only the newest ones).
        self.on_error = on_error
        # The supervisor's lag goes on the first sample of each second (callmeter/common/generator_load.py).
        self.loop_lag = loop_lag
        self.lag_second = 0
        self.endpoints = sum(piece.count for slices in packed for piece in slices)
        self.erred: set[tuple[str, int]] = set()  # reported at least one error
        self.lost: set[tuple[str, int]] = set()  # their engine could not start or died
        self.endpoint_seconds: Counter[str] = Counter()  # samples handed on, by group
        self.registered: set[tuple[str, int]] = set()  # held a registration in some second
        # (groups, Unix time) of each begin so far, an empty set for every group; which engines
        # are prepared and the groups each has been told to begin.
        self.begins: list[tuple[set[str], float]] = []
        if assignment.HasField("start_at"):
            self.begins.append((set(), assignment.start_at.ToNanoseconds() / 1e9))
        self.prepared: dict[int, EngineProcess] = {}
        self.begun: dict[int, set[str]] = {}
        self.settled = 0  # engines prepared or lost
        self.status_due: asyncio.TimerHandle | None = None
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
                                            endpoint_seconds_by_group=self.endpoint_seconds,
                                            registered_by_group=Counter(g for g, _ in self.registered))

    def _report(self, state: int | None = None) -> None:
        if state is not None:
            self.state = state
        if self.status_due is not None:
            self.status_due.cancel()
            self.status_due = None
        self.on_status(self.status())

    def _report_soon(self) -> None:
        if self.status_due is None:
            self.status_due = asyncio.get_running_loop().call_later(STATUS_EVERY_S, self._report)

    def _record(self, error: workers_pb2.EndpointError) -> None:
        self.erred.add((error.group, error.endpoint))
        self.errors.append(error)
        if self.on_error is not None:
            self.on_error(self.run_id, error)

    async def run(self) -> None:
        """Starts every engine, follows them to the end, reports the final state."""
        self._report()
        await asyncio.gather(*(self._engine(i, slices) for i, slices in enumerate(self.packed)))
        if self.cancelled:
            self._report(workers_pb2.ASSIGNMENT_STATE_CANCELLED)
        elif len(self.lost) >= self.endpoints:
            self._report(workers_pb2.ASSIGNMENT_STATE_FAILED)
        else:
            self._report(workers_pb2.ASSIGNMENT_STATE_DONE)

    async def begin(self, groups: set[str], start_at: float) -> None:
        """These groups (every group if empty) begin at ``start_at`` (Unix time), on every engine."""
        self.begins.append((groups, start_at))
        await asyncio.gather(*(self._send_begins(number) for number in list(self.prepared)))
        if self.state in (workers_pb2.ASSIGNMENT_STATE_ACCEPTED, workers_pb2.ASSIGNMENT_STATE_PREPARED):
            self._report(workers_pb2.ASSIGNMENT_STATE_RUNNING)

    async def _send_begins(self, number: int) -> None:
        """Tells a prepared engine of every begin of its groups it has not been told of yet."""
        engine, here, told = self.prepared[number], {piece.group for piece in self.packed[number]}, self.begun[number]
        for groups, start_at in self.begins:
            chosen = (here if not groups else here & groups) - told
            if chosen:
                told |= chosen
                try:
                    await engine.send(engine_pb2.EngineCommand(begin=engine_pb2.EngineBegin(
                        start_at=start_at, groups=sorted(chosen))))
                except (OSError, RuntimeError) as exc:  # it died meanwhile: its own loop reports that
                    log.warning("engine_begin_not_sent", run_id=self.run_id, engine=engine.name, error=str(exc))
                    return

    def _settle(self) -> None:
        """One more engine prepared or lost: once all are, the part is prepared (or begins)."""
        self.settled += 1
        if self.settled == len(self.packed) and self.state == workers_pb2.ASSIGNMENT_STATE_ACCEPTED:
            self._report(workers_pb2.ASSIGNMENT_STATE_RUNNING if self.begins else workers_pb2.ASSIGNMENT_STATE_PREPARED)

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
                credentials=self.credentials)))
        except (RuntimeError, OSError, asyncio.TimeoutError) as exc:
            if engine.process is not None:
                await engine.kill()
            if not self.cancelled:  # a cancel while it started stops it before ready: no failure
                log_.error("engine_start_failed", error=str(exc))
                self._fail_slices(slices, f"engine could not start: {exc}")
            self._settle()
            return
        if self.cancelled:  # cancelled while this engine started: cancel() could not reach it yet
            await engine.stop("cancelled")
            self._settle()
            return
        done = prepared = False
        async for event in engine.events():
            kind = event.WhichOneof("event")
            if kind == "sample":
                sample = event.sample
                if self.loop_lag is not None and sample.second > self.lag_second:
                    sample.metrics.worker_lag_ms = self.loop_lag.of_second(sample.second)
                    self.lag_second = sample.second
                self.endpoint_seconds[sample.group] += 1
                if sample.metrics.registered and (sample.group, sample.endpoint) not in self.registered:
                    self.registered.add((sample.group, sample.endpoint))
                    self._report_soon()
                self.on_sample(self.run_id, sample)
            elif kind == "prepared":
                prepared = True
                self.prepared[number], self.begun[number] = engine, set()
                await self._send_begins(number)
                self._settle()
            elif kind == "endpoint_error":
                self._record(event.endpoint_error)
                self._report()
            elif kind == "done":
                done = True
                await engine.stop("scenario finished")
        code = await engine.stop("engine closed its output")
        self.prepared.pop(number, None)
        if not prepared:
            self._settle()
        if not done and not self.cancelled:
            reason = engine.exit_reason()
            log_.error("engine_died", reason=reason, code=code)
            self._fail_slices(slices, reason)
            self._report()

    def _fail_slices(self, slices: list[workers_pb2.EndpointSlice], reason: str) -> None:
        for piece in slices:
            for index in range(piece.first_index, piece.first_index + piece.count):
                self.lost.add((piece.group, index))
                self._record(workers_pb2.EndpointError(group=piece.group, endpoint=index, reason=reason,
                                                       outcome=common_pb2.ENDPOINT_OUTCOME_ENGINE_ERROR))
