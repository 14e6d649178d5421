"""`callmeter worker --local FILE.yaml`: one test file run on this machine, without the platform.

For debugging a test and for the interop tests. The file is read and checked as the platform
checks it (callmeter/common/spec_check.py), against what this machine's SIP engine has (a probe
engine reports its codecs and limits); each problem is a line "FILE: FIELD: PROBLEM" on stderr,
as `callmeter test validate` prints it. Then it is run exactly as an assignment from the gateway
would be: the same ``Supervisor`` packs the endpoints on engine processes, resolves credentials
(``CALLMETER_SECRETS_FILE`` or ``CALLMETER_CREDENTIAL_*``) and follows the engines; only the
stream to the gateway is replaced by JSON lines on stdout.

Stdout carries JSON lines only, one object per line, told apart by ``type``:

- ``sample``: one endpoint-second, ``{"type", "second", "group", "endpoint", "metrics"}``.
  ``second`` is the Unix second measured; ``metrics`` has each catalog metric measured in that
  second in its unit (``callmeter.catalog.sample_values``: ``mos`` 4.12, ``rx_jitter_us`` in ms
  as docs/metrics.md gives it), zeros included; a metric not measured (a quality figure outside
  a call, a time whose event did not happen in the second) is absent.
- ``error``: an endpoint error as it happens, ``{"type", "second", "group", "endpoint",
  "sip_code", "reason"}`` (``second``: when the worker got it).
- ``summary``: after the run, one per group and last one for the whole run (``group`` ""), in
  real units, counted as the platform's run summary counts them (services/metrics/queries.py).
  A figure that was not measured (no call connected, no RTCP) is null, never 0.
  The last line also has ``run_id``, ``state`` (done, cancelled, failed), the run judged as the
  platform judges it (callmeter/common/verdict.py, docs/verdict.md) on the same numbers:
  ``verdict`` (pass, fail, or error when nothing was attempted), ``reasons`` (as the platform
  words them), ``gates`` (each ``{"gate", "observed", "passed"}``; without gates in the file,
  the default gate ``endpoints_failed == 0``), and ``exit_code``.

Logs (the worker's and the engines') go to stderr. The run ends when every phone has finished
its scenario, at ``--duration`` or the file's ``timeout`` after the start, or on SIGINT/SIGTERM
(a second signal exits 130 at once); the summary is printed in every case. As on the platform, a
run stopped by a signal or by the file's timeout is not judged (verdict error); one stopped at
``--duration`` is. Exit codes: 0 the verdict is pass, 1 fail (a gate, or without gates an
endpoint, failed), 2 when the run could not start (a bad file, a codec or feature the engine lacks,
a missing credential) or nothing of it happened (verdict error).
"""

from __future__ import annotations

import array
import asyncio
import json
import math
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import structlog
from google.protobuf.message import Message
from pydantic import SecretStr

from callmeter.catalog import BY_NAME, sample_values
from callmeter.common import outcomes, spec_check
from callmeter.common.enum_words import word
from callmeter.common.errors import CallmeterError, ConfigError, ErrorCode
from callmeter.common.exit_codes import ExitCode
from callmeter.common.generator_load import LoadTally, load_json
from callmeter.common.logging import configure_logging
from callmeter.common.outcomes import outcome_word, outcomes_json
from callmeter.common.service import install_signal_handlers, print_config_error
from callmeter.common.settings import load_settings
from callmeter.common.start_waves import (
    REGISTRATION_WAIT_S,
    awaited_groups,
    has_registered,
    wait_reason,
)
from callmeter.common.testspec import SpecError, load_spec_file, problem_lines, violation
from callmeter.common.verdict import LOCAL_MODE, judge, measured
from callmeter.v1 import common_pb2, results_pb2, runs_pb2, tests_pb2, workers_pb2
from services.worker.engines import probe_engine
from services.worker.execution import RunExecution
from services.worker.settings import WorkerSettings
from services.worker.supervisor import Supervisor, capacity_from, capacity_text

log = structlog.get_logger(__name__)

# Phones begin this long after every engine is prepared (the orchestrator gives workers the same
# lead); how often the execution's state is looked at meanwhile.
START_LEAD_S = 1.0
PREPARED_POLL_S = 0.05
LOCAL_WORKER = "local"  # this worker's name in the summary's load figures
# How often gathered samples are printed.
PRINT_INTERVAL_S = 0.25


def main(spec_path: Path, duration_s: float | None = None, summary_only: bool = False,
         out: IO[str] | None = None) -> int:
    """Entry point body of `callmeter worker --local`; returns the exit code."""
    try:
        spec = load_spec_file(spec_path)
        settings = load_settings(WorkerSettings, worker_token=SecretStr("unused in local mode"))
    except CallmeterError as error:
        _print_error(error, spec_path)
        return ExitCode.ERROR
    configure_logging("worker", settings.log_level, settings.log_format)
    try:
        return asyncio.run(run_local(settings, spec, JsonLines(out or sys.stdout, summary_only), duration_s))
    except CallmeterError as error:
        _print_error(error, spec_path)
        return ExitCode.ERROR


def _print_error(error: CallmeterError, spec_path: Path) -> None:
    if isinstance(error, SpecError):  # as `callmeter test validate` prints them: a line per problem
        for line in problem_lines(spec_path, error.violations):
            print(line, file=sys.stderr)
    elif isinstance(error, ConfigError):
        print_config_error(error)
    else:
        print(f"callmeter: error: {error.detail}", file=sys.stderr)


def check_spec(spec: tests_pb2.TestSpec, capacity: workers_pb2.WorkerCapacity) -> list[common_pb2.FieldViolation]:
    """What stops this machine running the spec, each problem with its field path; empty when nothing.

    The platform's check (callmeter/common/spec_check.py) against this machine's SIP engine, and
    what only the machine running the phones can see: whether each WAV file can be read here.
    """
    problems = spec_check.check_spec(spec, spec_check.capabilities([capacity], where="on this machine"))
    for i, group in enumerate(spec.groups):
        if group.media.wav_path and not os.access(group.media.wav_path, os.R_OK):
            problems.append(violation(f"groups[{i}].media.wav_path", f"cannot read {group.media.wav_path}"))
    return problems


class JsonLines:
    """Compact JSON objects, one a line, flushed as written. A closed reader stops the run."""

    def __init__(self, stream: IO[str], summary_only: bool = False) -> None:
        self.stream = stream
        self.summary_only = summary_only
        self.closed = False
        self.on_closed: Callable[[], None] = lambda: None

    def write(self, line: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            self.stream.write(json.dumps(line, separators=(",", ":")) + "\n")
            self.stream.flush()
        except (BrokenPipeError, ValueError):  # the reader went away (`| head`) or the stream is closed
            self.closed = True
            if self.stream is sys.stdout:  # and Python's own flush at exit must not fail again
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            log.warning("stdout_closed_stopping")
            self.on_closed()


@dataclass
class _Totals:
    """One group's samples (or the run's), reduced to what the summary needs (stored integers).

    Endpoints are keyed by (group, index), so that the run's totals are the groups' merged.
    """

    calls_attempted: int = 0
    calls_connected: int = 0
    calls_failed: int = 0
    failures_by_code: Counter[int] = field(default_factory=Counter)
    rx_lost: int = 0
    rx_packets: int = 0
    register_attempts: int = 0
    register_failures: int = 0
    # (group, endpoint) -> registered in any second so far; its keys are the endpoints that reported
    registered: dict[tuple[str, int], bool] = field(default_factory=dict)
    register_attempted: set[tuple[str, int]] = field(default_factory=set)
    errors: int = 0
    mos: array.array[int] = field(default_factory=lambda: array.array("I"))
    jitter: array.array[int] = field(default_factory=lambda: array.array("I"))
    rtt: array.array[int] = field(default_factory=lambda: array.array("I"))
    setup: array.array[int] = field(default_factory=lambda: array.array("I"))

    def add(self, sample: results_pb2.EndpointSample) -> None:
        m = sample.metrics
        self.calls_attempted += m.calls_attempted
        self.calls_connected += m.calls_connected
        self.calls_failed += m.calls_failed
        if m.calls_failed:  # filed as the platform files them (services/metrics/queries.py)
            self.failures_by_code[m.call_last_code if m.call_last_code >= 300 else 0] += m.calls_failed
        self.rx_lost += m.rx_lost
        self.rx_packets += m.rx_packets
        self.register_attempts += m.register_attempts
        self.register_failures += m.register_failures
        key = (sample.group, sample.endpoint)
        self.registered[key] = self.registered.get(key, False) or m.registered
        if m.register_attempts:
            self.register_attempted.add(key)
        if m.call_active:
            self.jitter.append(m.rx_jitter_us)
            if m.mos:  # 0: the E-model has no value yet
                self.mos.append(m.mos)
            if m.rtt_us:
                self.rtt.append(m.rtt_us)
        if m.calls_connected and m.setup_time_ms:  # each connected call once, however long it lasted
            self.setup.append(m.setup_time_ms)

    def merge(self, other: _Totals) -> None:
        for name in ("calls_attempted", "calls_connected", "calls_failed", "rx_lost", "rx_packets",
                     "register_attempts", "register_failures", "errors"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failures_by_code.update(other.failures_by_code)
        self.registered.update(other.registered)
        self.register_attempted.update(other.register_attempted)
        for name in ("mos", "jitter", "rtt", "setup"):
            getattr(self, name).extend(getattr(other, name))

    def group_summary(self, group: str) -> results_pb2.GroupSummary:
        """The platform's GroupSummary of these samples (services/metrics/queries.py), in real units."""
        lost_and_received = self.rx_lost + self.rx_packets
        summary = results_pb2.GroupSummary(
            group=group,
            endpoints=len(self.registered),
            registered=sum(self.registered.values()),
            register_attempted=len(self.register_attempted),
            calls_attempted=self.calls_attempted,
            calls_connected=self.calls_connected,
            calls_failed=self.calls_failed,
            failures_by_code=self.failures_by_code,
        )
        if self.mos:  # a figure over nothing is not measured: left unset, never 0
            summary.mos_avg = sum(self.mos) / len(self.mos) / BY_NAME["mos"].scale
            summary.mos_min = min(self.mos) / BY_NAME["mos"].scale
        if self.jitter:
            summary.jitter_ms_p95 = percentile(self.jitter, 0.95) / BY_NAME["rx_jitter_us"].scale
        if lost_and_received:
            summary.loss_pct = 100.0 * self.rx_lost / lost_and_received
        if self.rtt:
            summary.rtt_ms_p95 = percentile(self.rtt, 0.95) / BY_NAME["rtt_us"].scale
        if self.setup:
            summary.setup_ms_p95 = percentile(self.setup, 0.95) / BY_NAME["setup_time_ms"].scale
        return summary

    def summary_line(self, summary: results_pb2.GroupSummary) -> dict[str, Any]:
        """A summary line: ``summary`` (this group_summary) and what only local mode counts."""
        return {
            "type": "summary",
            "group": summary.group,
            "endpoints": summary.endpoints,
            "endpoints_failed": summary.endpoints_failed,
            "outcomes": outcomes_json(summary),
            "errors": self.errors,
            "registered": summary.registered,
            "register_attempts": self.register_attempts,
            "register_failures": self.register_failures,
            "calls_attempted": summary.calls_attempted,
            "calls_connected": summary.calls_connected,
            "calls_failed": summary.calls_failed,
            "failures_by_code": {str(code): count for code, count in sorted(summary.failures_by_code.items())},
            "mos_avg": _measured(summary, "mos_avg"),
            "mos_min": _measured(summary, "mos_min"),
            "jitter_ms_p95": _measured(summary, "jitter_ms_p95"),
            "loss_pct": _measured(summary, "loss_pct"),
            "rtt_ms_p95": _measured(summary, "rtt_ms_p95"),
            "setup_ms_p50": _round(percentile(self.setup, 0.5) / BY_NAME["setup_time_ms"].scale) if self.setup else None,
            "setup_ms_p95": _measured(summary, "setup_ms_p95"),
        }


def percentile(values: Iterable[int], q: float) -> float:
    """Linear interpolation between closest ranks (NumPy's default, ClickHouse's
    quantileExactInclusive, as the platform's summary uses); 0 for no values."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = (len(ordered) - 1) * q
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _round(value: float) -> float:
    return round(value, 3)


def _measured(message: Message, name: str) -> float | None:
    """The figure rounded, or None (JSON null) when it was not measured."""
    value = measured(message, name)
    return None if value is None else _round(value)


@dataclass
class Verdict:
    """The run judged as the platform judges it: ``name`` pass, fail or error."""

    name: str
    reasons: list[str]


def judge_run(spec: tests_pb2.TestSpec, summary: results_pb2.RunSummary) -> Verdict:
    """The platform's verdict on the summary (fills summary.gates; the default gate without gates)."""
    planned = sum(group.count for group in spec.groups)
    verdict, reasons = judge(summary, list(spec.gates), planned, summary.total.endpoints_failed, baseline=LOCAL_MODE)
    return Verdict(word(runs_pb2.Verdict, verdict), reasons)


class LocalOutput:
    """Stands in for the gateway: prints what the supervisor would send up, acks it at once."""

    def __init__(self, spec: tests_pb2.TestSpec, lines: JsonLines) -> None:
        self.lines = lines
        self.spec = spec
        self.totals = {group.name: _Totals() for group in spec.groups}
        # (group, endpoint) → (second, outcome, SIP code) of its newest sample: how it ended.
        self.outcomes: dict[tuple[str, int], tuple[int, int, int]] = {}
        self.answering = {group.name for group in spec.groups if group.role == common_pb2.ENDPOINT_ROLE_CALLEE}
        self.status: workers_pb2.AssignmentStatus | None = None
        self.load = LoadTally()
        self.ack: Callable[[str, int], None] = lambda _run_id, _sequence: None

    def send(self, message: workers_pb2.WorkerMessage) -> None:
        kind = message.WhichOneof("message")
        if kind == "metrics":
            batch = message.metrics
            for sample in batch.samples:
                self.sample(sample)
            self.ack(batch.run_id, batch.sequence)  # nothing to resend: printed is delivered
        elif kind == "status":
            self.status = message.status
            log.debug("assignment_status", state=workers_pb2.AssignmentState.Name(message.status.state),
                      running=message.status.endpoints_running, failed=message.status.endpoints_failed)

    def sample(self, sample: results_pb2.EndpointSample) -> None:
        totals = self.totals.get(sample.group)
        if totals is not None:
            totals.add(sample)
        self.load.add(sample)
        key = (sample.group, sample.endpoint)
        if sample.second >= self.outcomes.get(key, (0, 0, 0))[0]:
            self.outcomes[key] = (sample.second, sample.metrics.outcome, sample.metrics.outcome_code)
        if not self.lines.summary_only:
            self.lines.write({"type": "sample", "second": sample.second, "group": sample.group,
                              "endpoint": sample.endpoint, "metrics": sample_values(sample.metrics)})

    def error(self, _run_id: str, error: workers_pb2.EndpointError) -> None:
        totals = self.totals.get(error.group)
        if totals is not None:
            totals.errors += 1
        self.lines.write({"type": "error", "second": int(time.time()), "group": error.group,
                          "endpoint": error.endpoint, "outcome": outcome_word(error.outcome) if error.outcome else None,
                          "sip_code": error.sip_code, "reason": error.reason})

    def refusal(self) -> str:
        """Why the supervisor refused the assignment (it sent a failed status with the reason)."""
        reasons = [e.reason for e in self.status.errors] if self.status is not None else []
        return "; ".join(reasons) or "the worker refused the run; see the log"

    def run_summary(self, run_id: str) -> tuple[results_pb2.RunSummary, _Totals]:
        """The platform's RunSummary of the run (groups in the file's order), and the run's totals.

        As on the platform (services/metrics/queries.py), the run's call counts are the placing
        groups' when they placed any: a call between two groups is counted at both ends."""
        run, placing = _Totals(), _Totals()
        for name, totals in self.totals.items():
            run.merge(totals)
            if name not in self.answering:
                placing.merge(totals)
        if placing.calls_attempted:
            run.calls_attempted, run.calls_connected = placing.calls_attempted, placing.calls_connected
            run.calls_failed, run.failures_by_code = placing.calls_failed, placing.failures_by_code
        summary = results_pb2.RunSummary(run_id=run_id, total=run.group_summary(""), groups=[
            totals.group_summary(name) for name, totals in self.totals.items()])
        load = self.load.load(LOCAL_WORKER)
        if load is not None:
            summary.workers.append(load)
            summary.total.overloaded_s = load.overloaded_s
        counts = outcomes.tally({key: (outcome, code) for key, (_, outcome, code) in self.outcomes.items()},
                                {group.name: group.count for group in self.spec.groups}, outcomes.call_map(self.spec))
        for group in summary.groups:
            outcomes.set_outcomes(group, counts.get(group.group, Counter()))
        outcomes.set_outcomes(summary.total, sum(counts.values(), Counter()))
        return summary, run

    def summaries(self, summary: results_pb2.RunSummary, run: _Totals, verdict: Verdict, state: str,
                  exit_code: int) -> None:
        """One line per group, then the run's with its verdict."""
        for group in summary.groups:
            self.lines.write(self.totals[group.group].summary_line(group))
        gates = [{"gate": g.gate, "observed": _measured(g, "observed"), "passed": g.passed} for g in summary.gates]
        self.lines.write({**run.summary_line(summary.total), "overloaded_s": measured(summary.total, "overloaded_s"),
                          "workers": [load_json(load) for load in summary.workers], "run_id": summary.run_id,
                          "state": state, "verdict": verdict.name, "reasons": verdict.reasons, "gates": gates,
                          "exit_code": exit_code})


def _time_limit(spec: tests_pb2.TestSpec, duration_s: float | None) -> float | None:
    limits = [limit for limit in (duration_s, spec.timeout.ToNanoseconds() / 1e9 or None) if limit]
    return min(limits) if limits else None


async def conduct_start(execution: RunExecution, spec: tests_pb2.TestSpec, begun: asyncio.Future[float]) -> None:
    """The orchestrator's part of the two-phase start (callmeter/common/start_waves.py) for the one
    local execution: once its engines are prepared, every group begins START_LEAD_S later, but
    callers of a registering group only once it has registered (or the wait is over)."""
    while execution.state == workers_pb2.ASSIGNMENT_STATE_ACCEPTED:
        await asyncio.sleep(PREPARED_POLL_S)
    if execution.state != workers_pb2.ASSIGNMENT_STATE_PREPARED:
        return  # every engine failed: nothing to begin
    start_at = time.time() + START_LEAD_S
    awaited = awaited_groups(spec)
    first = {group.name for group in spec.groups} - set(awaited)
    if first:
        await execution.begin(first, start_at)
    begun.set_result(start_at)
    sizes = {group.name: group.count for group in spec.groups}
    waiting = dict(awaited)
    while waiting:
        status = execution.status()
        for caller, called in list(waiting.items()):
            registered = status.registered_by_group.get(called, 0)
            ready = has_registered(sizes[called], registered, status.endpoints_failed_by_group.get(called, 0))
            if ready or time.time() >= start_at + REGISTRATION_WAIT_S:
                if not ready:
                    log.warning("registration_wait_over", reason=wait_reason(caller, called, sizes[called], registered,
                                                                             REGISTRATION_WAIT_S))
                await execution.begin({caller}, max(start_at, time.time()))
                del waiting[caller]
        await asyncio.sleep(PREPARED_POLL_S)


async def run_local(settings: WorkerSettings, spec: tests_pb2.TestSpec, lines: JsonLines,
                    duration_s: float | None = None) -> int:
    """Probes the engine, checks the spec, runs it through a Supervisor, prints the summary."""
    stop = install_signal_handlers()
    lines.on_closed = stop.set
    capacity = capacity_from(await probe_engine(), settings)
    if capacity.max_endpoints < 1:
        raise CallmeterError(ErrorCode.FAILED_PRECONDITION, "no SIP engine could start on this machine; see the log")
    log.info("capacity", offers=capacity_text(capacity, settings), max_endpoints=capacity.max_endpoints,
             codecs=list(capacity.codecs), engine_max_calls=capacity.engine_max_calls,
             engine_max_accounts=capacity.engine_max_accounts)
    problems = check_spec(spec, capacity)
    if problems:
        raise SpecError(problems)

    output = LocalOutput(spec, lines)
    supervisor = Supervisor(settings, capacity, send=output.send, on_error=output.error)
    output.ack = supervisor.uplink.ack
    run_id = uuid.uuid4().hex
    assignment = workers_pb2.Assignment(run_id=run_id, spec=spec, slices=[
        workers_pb2.EndpointSlice(group=group.name, first_index=0, count=group.count) for group in spec.groups])
    supervisor.handle(workers_pb2.GatewayMessage(assignment=assignment))
    task = supervisor.tasks.get(run_id)
    if task is None:
        raise CallmeterError(ErrorCode.FAILED_PRECONDITION, output.refusal())
    log.info("local_run_started", run_id=run_id, spec=spec.name, endpoints=sum(g.count for g in spec.groups))
    begun = asyncio.get_running_loop().create_future()
    starter = asyncio.create_task(conduct_start(supervisor.executions[run_id], spec, begun))

    async def flush_periodically() -> None:
        while True:
            await asyncio.sleep(PRINT_INTERVAL_S)
            supervisor.flush()

    flusher = asyncio.create_task(flush_periodically())
    stopped = asyncio.create_task(stop.wait())
    limit = _time_limit(spec, duration_s)

    async def time_limit() -> None:
        start_at = await begun
        await asyncio.sleep(start_at - time.time() + limit)

    timer: asyncio.Future[None] = (asyncio.create_task(time_limit()) if limit
                                   else asyncio.get_running_loop().create_future())  # no limit: never done
    not_judged = ""  # why the run is not judged, as the platform withholds the verdict of a cancel or timeout
    try:
        await asyncio.wait({task, stopped, timer}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            reason = ("stdout closed" if lines.closed else "stopped by a signal" if stopped.done()
                      else f"time limit of {limit:g} s reached")
            if lines.closed or stopped.done() or limit != duration_s:
                not_judged = f"{reason}; not judged"
            log.info("local_run_stopping", reason=reason)
            await supervisor.stop(reason)
    finally:
        for helper in (starter, flusher, stopped, timer):
            helper.cancel()
        supervisor.flush()
    status = supervisor.finished.get(run_id) or output.status or workers_pb2.AssignmentStatus()
    summary, run = output.run_summary(run_id)
    verdict = Verdict("error", [not_judged]) if not_judged else judge_run(spec, summary)
    exit_code = {"pass": ExitCode.OK, "fail": ExitCode.RUN_FAILED}.get(verdict.name, ExitCode.ERROR)
    state = word(workers_pb2.AssignmentState, status.state)
    output.summaries(summary, run, verdict, state, int(exit_code))
    log.info("local_run_ended", run_id=run_id, state=state, endpoints_failed=summary.total.endpoints_failed,
             verdict=verdict.name)
    return exit_code
