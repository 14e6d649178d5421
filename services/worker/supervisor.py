"""The worker's supervisor: takes assignments, runs them on engine processes, batches samples.

It never touches pjsua2 itself, so no SIP-stack assertion can take it down: engines are child
processes, and a dead one is reported, not fatal.
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict
from collections.abc import Callable

import structlog

from callmeter.common.codecs import codec_names
from callmeter.common.errors import ConfigError
from callmeter.v1 import common_pb2, engine_pb2, workers_pb2
from services.worker import credentials
from services.worker.execution import RunExecution
from services.worker.loop_lag import LoopLag
from services.worker.packing import PackingError, pack, rtp_ranges
from services.worker.pool_size import Limit, Machine, machine_limits, this_machine
from services.worker.settings import WorkerSettings
from services.worker.uplink import Uplink

log = structlog.get_logger(__name__)

# Final statuses kept for resending after a reconnect, in case the stream dropped them.
FINISHED_KEPT = 50
TRANSPORTS = [common_pb2.TRANSPORT_UDP, common_pb2.TRANSPORT_TCP, common_pb2.TRANSPORT_TLS]


#: RTP and RTCP ports a calling endpoint needs: two pairs, its call's and the next one's while the
#: first's are released. An engine gets its own range of its calls' worth (docs/engine.md).
RTP_PORTS_PER_CALL = 4


def engine_limits(ready: engine_pb2.EngineReady, settings: WorkerSettings, machine: Machine | None = None) -> list[Limit]:
    """What bounds the engine pool: CALLMETER_MAX_ENGINES, or else this machine's CPUs and memory
    (services/worker/pool_size.py); and the RTP range, which must give each engine its calls' ports."""
    limits = ([Limit(settings.max_engines, f"CALLMETER_MAX_ENGINES={settings.max_engines}")] if settings.max_engines
              else machine_limits(machine or this_machine()))
    ports = settings.rtp_port_max - settings.rtp_port_min + 1
    per_engine_ports = ready.max_calls * RTP_PORTS_PER_CALL
    limits.append(Limit(ports // per_engine_ports, f"the RTP range {settings.rtp_port_min}-{settings.rtp_port_max} "
                                                   f"at {per_engine_ports} ports an engine"))
    return limits


def capacity_from(ready: engine_pb2.EngineReady | None, settings: WorkerSettings,
                  machine: Machine | None = None) -> workers_pb2.WorkerCapacity:
    """What this worker can run, from what a probe engine reported (nothing if none started): as
    many engines as the tightest of engine_limits allows; a range too small for one engine is a
    setting that cannot be used."""
    if ready is None:
        return workers_pb2.WorkerCapacity()
    engines = min(limit.engines for limit in engine_limits(ready, settings, machine))
    if engines < 1:
        ports = settings.rtp_port_max - settings.rtp_port_min + 1
        raise ConfigError("CALLMETER_RTP_PORT_MIN", f"the RTP range {settings.rtp_port_min}-{settings.rtp_port_max} "
                          f"(CALLMETER_RTP_PORT_MIN/_MAX) holds {ports} ports; one engine needs "
                          f"{ready.max_calls * RTP_PORTS_PER_CALL} ({ready.max_calls} calls × {RTP_PORTS_PER_CALL})")
    per_engine = min(ready.max_calls, ready.max_accounts)
    return workers_pb2.WorkerCapacity(
        max_endpoints=per_engine * engines, codecs=list(ready.codecs), transports=TRANSPORTS,
        srtp_keyings=[common_pb2.SRTP_KEYING_SDES], engine_max_calls=ready.max_calls,
        engine_max_accounts=ready.max_accounts, max_engines=engines)


def capacity_text(capacity: workers_pb2.WorkerCapacity, settings: WorkerSettings, machine: Machine | None = None) -> str:
    """What the worker offers, what limits it and what the other bounds would allow, as said at start:
    "320 endpoints: 80 engines × 4, limited by 2 cores × 60 % at 1.5 % of a core an engine (also:
    384 by 23.5 GiB available × 0.5 at 32 MB an engine; 3458 by the RTP range 10000-65535 …)"."""
    per_engine = min(capacity.engine_max_calls, capacity.engine_max_accounts)
    ready = engine_pb2.EngineReady(max_calls=capacity.engine_max_calls, max_accounts=capacity.engine_max_accounts)
    limits = sorted(engine_limits(ready, settings, machine), key=lambda limit: limit.engines)
    others = "; ".join(f"{limit.engines} by {limit.why}" for limit in limits[1:])
    return (f"{capacity.max_endpoints} endpoints: {capacity.max_engines} engines × {per_engine}, limited by "
            f"{limits[0].why} (also: {others})")


class Supervisor:
    def __init__(self, settings: WorkerSettings, capacity: workers_pb2.WorkerCapacity,
                 send: Callable[[workers_pb2.WorkerMessage], None],
                 on_error: Callable[[str, workers_pb2.EndpointError], None] | None = None) -> None:
        self.settings = settings
        self.capacity = capacity
        self.send = send
        # Told of each endpoint error as it happens (standalone mode prints them); the statuses sent
        # carry them too.
        self.on_error = on_error
        self.uplink = Uplink(settings.send_buffer_bytes)
        self.secrets = credentials.load_secrets_file(settings.secrets_file)
        self.executions: dict[str, RunExecution] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.finished: OrderedDict[str, workers_pb2.AssignmentStatus] = OrderedDict()
        self.free_slots = list(range(capacity.max_engines))
        self.slot_ranges = rtp_ranges(settings.rtp_port_min, settings.rtp_port_max, max(1, capacity.max_engines))
        self.loop_lag = LoopLag()  # measured while runs execute
        self.lag_task: asyncio.Task[None] | None = None

    @property
    def running_endpoints(self) -> int:
        return sum(execution.running_endpoints for execution in self.executions.values())

    def handle(self, message: workers_pb2.GatewayMessage) -> None:
        kind = message.WhichOneof("message")
        if kind == "assignment":
            self._accept(message.assignment)
        elif kind == "cancel":
            execution = self.executions.get(message.cancel.run_id)
            if execution is not None and not execution.cancelled:  # a repeated cancel changes nothing
                reason = message.cancel.reason or "cancelled"
                log.info("assignment_cancelled", run_id=execution.run_id, reason=reason)
                asyncio.create_task(execution.cancel(reason))
        elif kind == "start":
            execution = self.executions.get(message.start.run_id)
            if execution is not None and not execution.cancelled:
                groups = set(message.start.groups)
                log.info("assignment_begins", run_id=execution.run_id, groups=sorted(groups) or "all")
                asyncio.create_task(execution.begin(groups, message.start.start_at.ToNanoseconds() / 1e9))
        elif kind == "batch_ack":
            self.uplink.ack(message.batch_ack.run_id, message.batch_ack.sequence)
        else:
            log.info("message_ignored", kind=kind)

    def on_connected(self) -> list[workers_pb2.WorkerMessage]:
        """What a new stream must carry first: the status of every run, then unacked batches."""
        statuses = [*self.finished.values(), *(e.status() for e in self.executions.values())]
        messages = [workers_pb2.WorkerMessage(status=status) for status in statuses]
        return messages + [workers_pb2.WorkerMessage(metrics=batch) for batch in self.uplink.resend()]

    def flush(self) -> None:
        """Sends the samples gathered since the last flush, one batch per run."""
        for batch in self.uplink.seal():
            self.send(workers_pb2.WorkerMessage(metrics=batch))

    async def stop(self, reason: str) -> None:
        await asyncio.gather(*(execution.cancel(reason) for execution in self.executions.values()))
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.flush()

    def _status(self, status: workers_pb2.AssignmentStatus) -> None:
        self.send(workers_pb2.WorkerMessage(status=status))

    def _refuse(self, assignment: workers_pb2.Assignment, reason: str) -> None:
        """The whole assignment failed: none of its endpoints runs."""
        log.warning("assignment_refused", run_id=assignment.run_id, reason=reason)
        by_group = Counter[str]()
        for piece in assignment.slices:
            by_group[piece.group] += piece.count
        self._status(workers_pb2.AssignmentStatus(run_id=assignment.run_id, state=workers_pb2.ASSIGNMENT_STATE_FAILED,
                                                  endpoints_failed=sum(by_group.values()),
                                                  endpoints_failed_by_group=by_group,
                                                  errors=[workers_pb2.EndpointError(reason=reason, outcome=common_pb2.ENDPOINT_OUTCOME_ENGINE_ERROR)]))

    def _accept(self, assignment: workers_pb2.Assignment) -> None:
        run_id = assignment.run_id
        if run_id in self.executions or run_id in self.finished:
            return  # a resent assignment: already running or run
        per_engine = min(self.capacity.engine_max_calls, self.capacity.engine_max_accounts)
        if per_engine < 1:
            self._refuse(assignment, "this worker has no working SIP engine; see its log")
            return
        try:
            packed = pack(assignment.spec, list(assignment.slices), per_engine)
        except PackingError as error:
            self._refuse(assignment, str(error))
            return
        if len(packed) > len(self.free_slots):
            self._refuse(assignment, f"needs {len(packed)} engines, {len(self.free_slots)} free on this worker")
            return
        refs = {group.credential_ref for group in assignment.spec.groups if group.credential_ref}
        found, missing = credentials.resolve(refs, self.secrets)
        if missing:
            self._refuse(assignment, f"credential {', '.join(map(repr, missing))} is not defined on this worker")
            return
        slots = [self.free_slots.pop(0) for _ in packed]
        execution = RunExecution(assignment, packed, [self.slot_ranges[slot] for slot in slots], found,
                                 on_sample=self.uplink.add, on_status=self._status, on_error=self.on_error,
                                 loop_lag=self.loop_lag)
        if self.lag_task is None:
            self.lag_task = asyncio.create_task(self.loop_lag.run())
        self.executions[run_id] = execution
        log.info("assignment_accepted", run_id=run_id, endpoints=execution.endpoints, engines=len(packed),
                 codecs=codec_names(list(self.capacity.codecs)))
        self.tasks[run_id] = asyncio.create_task(self._run(execution, slots))

    async def _run(self, execution: RunExecution, slots: list[int]) -> None:
        try:
            await execution.run()
        except Exception:  # an unexpected supervisor bug fails this run, not the worker
            log.exception("execution_failed", run_id=execution.run_id)
            self._refuse(workers_pb2.Assignment(run_id=execution.run_id, slices=[
                piece for slices in execution.packed for piece in slices]), "internal error in the worker; see its log")
        finally:
            self.flush()
            self.finished[execution.run_id] = execution.status()
            while len(self.finished) > FINISHED_KEPT:
                self.finished.popitem(last=False)
            self.free_slots.extend(slots)
            del self.executions[execution.run_id]
            del self.tasks[execution.run_id]
            if not self.executions and self.lag_task is not None:
                self.lag_task.cancel()
                self.lag_task = None
