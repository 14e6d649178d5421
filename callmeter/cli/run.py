"""`callmeter run FILE.yaml`: store the test, start a run, and (with --wait) follow it to a verdict.

Exit codes: 0 the verdict was PASS (or, without --wait, the run started), 1 FAIL, 2 anything else.
With --wait, progress goes to stderr (redrawn in place on a terminal) and the result to stdout: a
table per group and the quality gates, or with --json exactly one JSON object.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from callmeter.common.exit_codes import ExitCode

if TYPE_CHECKING:
    from collections.abc import Iterable

    from callmeter.v1 import results_pb2, runs_pb2

# Without a terminal, a progress line at most this often (and at every state change).
PLAIN_PROGRESS_EVERY_S = 10.0


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("run", help="run a test file through the API",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path)
    parser.add_argument("--api", help="API address host:port (default: CALLMETER_API or the profile)")
    parser.add_argument("--project", default="", help="project id (default: the token's only project)")
    parser.add_argument("--wait", action="store_true", help="follow the run to its end; exit by its verdict")
    parser.add_argument("--json", action="store_true",
                        help="print the result as one JSON object (state, verdict, reasons, total, groups, gates)")
    parser.add_argument("--junit", type=Path, metavar="PATH", help="with --wait: write JUnit XML, a case per gate")
    parser.add_argument("--timeout", type=positive_seconds, metavar="S",
                        help="with --wait: give up after S seconds, cancel the run, print what it measured, exit 2")
    parser.set_defaults(handler=handle)


def unwritable(path: Path) -> str | None:
    """Why a report could not be written at ``path`` (nothing is created to find out), or None."""
    import os

    try:
        if path.is_dir():
            return "is a directory"
        if path.exists():
            return None if os.access(path, os.W_OK) else "is not writable"
        parent = path.parent
        if not parent.is_dir():
            return f"{parent} is not a directory" if parent.exists() else f"its directory {parent} does not exist"
    except OSError as exc:  # e.g. a name too long
        return exc.strerror or str(exc)
    return None if os.access(parent, os.W_OK | os.X_OK) else f"its directory {parent} is not writable"


#: The longest --timeout: about 31 years.
MAX_TIMEOUT_S = 1e9


def positive_seconds(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds (got {text})")
    if value > MAX_TIMEOUT_S:  # gRPC turns a deadline beyond ~7.5e9 s into an immediate DEADLINE_EXCEEDED
        raise argparse.ArgumentTypeError(f"must be at most {MAX_TIMEOUT_S:g} seconds (got {text})")
    return value


def handle(args: argparse.Namespace) -> int:
    import grpc

    from callmeter.cli.api_client import CALL_TIMEOUT_S, error, rpc_error_line
    from callmeter.cli.testcmd import apply_test, load_spec_and_target
    from callmeter.common.errors import CallmeterError
    from callmeter.v1 import runs_pb2, runs_pb2_grpc

    if args.junit and not args.wait:
        return error("--junit needs --wait")
    if args.junit and (problem := unwritable(args.junit)):
        return error(f"--junit {args.junit}: {problem}")  # said before the run, not after it
    loaded = load_spec_and_target(args.file, args.api)
    if loaded is None:
        return ExitCode.ERROR
    spec, target = loaded
    with target.channel() as channel:
        runs = runs_pb2_grpc.RunServiceStub(channel)
        try:
            test, _outcome = apply_test(channel, target, args.project, spec)
            run = runs.StartRun(runs_pb2.StartRunRequest(test_id=test.id, test_version=test.version),
                                metadata=target.metadata(), timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            return error(rpc_error_line(exc))
        except CallmeterError as exc:
            return error(exc.detail)
        if not args.wait:
            print(format_json(run, None) if args.json else f"run {run.id} started")
            return ExitCode.OK
        print(f"run {run.id} of {spec.name!r} version {test.version} started", file=sys.stderr)
        try:
            summary, late = follow_to_end(runs, target, run.id, args.timeout)
            run = runs.GetRun(runs_pb2.GetRunRequest(run_id=run.id), metadata=target.metadata(),
                              timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            return error(rpc_error_line(exc))
        except KeyboardInterrupt:  # the second Ctrl-C: stop waiting for the cancelled run
            print(f"\nrun {run.id} is being cancelled; not waiting for its summary", file=sys.stderr)
            return ExitCode.INTERRUPTED
    print(format_json(run, summary) if args.json else format_result(run, summary))
    if late:
        print(late, file=sys.stderr)
    if args.junit:
        args.junit.write_text(junit_xml(spec.name, run, summary))
    return exit_code(run)


def follow_to_end(runs: Any, target: Any, run_id: str, timeout_s: float | None) -> tuple[results_pb2.RunSummary, str]:
    """Follows the run until it has ended and its summary is in. At ``timeout_s``, or at the first
    Ctrl-C, it cancels the run and goes on following it to its (cancelled) summary; a second
    Ctrl-C raises KeyboardInterrupt. Returns the summary and why it was cancelled ("" if it was not)."""
    import grpc

    from callmeter.cli.api_client import CALL_TIMEOUT_S
    from callmeter.v1 import runs_pb2

    why = ""
    deadline = time.monotonic() + timeout_s if timeout_s else None
    while True:
        left = deadline - time.monotonic() if deadline is not None and not why else None
        watch = runs.WatchRun(runs_pb2.WatchRunRequest(run_id=run_id), metadata=target.metadata(), timeout=left)
        try:
            return follow(watch, sys.stderr), why
        except grpc.RpcError as exc:
            if why or exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
                raise
            why = f"run {run_id} did not end within {timeout_s:g} s; cancelled it"
        except KeyboardInterrupt:
            if why:
                raise
            watch.cancel()
            why = f"run {run_id} cancelled by Ctrl-C (press it again to stop waiting for its summary)"
        print(f"\n{why}", file=sys.stderr)
        runs.CancelRun(runs_pb2.CancelRunRequest(run_id=run_id), metadata=target.metadata(), timeout=CALL_TIMEOUT_S)


def follow(progress: Iterable[runs_pb2.RunProgress], out: TextIO) -> results_pb2.RunSummary:
    """Shows each RunProgress until the stream ends; returns the final summary."""
    from callmeter.v1 import results_pb2

    tty = out.isatty()
    last_state, last_shown = -1, 0.0
    summary = results_pb2.RunSummary()
    for message in progress:
        summary = message.summary
        line = progress_line(message)
        if tty:
            out.write("\r\x1b[K" + line)
        elif message.state != last_state or time.monotonic() - last_shown >= PLAIN_PROGRESS_EVERY_S:
            out.write(line + "\n")
            last_state, last_shown = message.state, time.monotonic()
        out.flush()
    if tty:
        out.write("\n")
    return summary


def _state(run_or_progress: Any) -> str:
    from callmeter.common.enum_words import word
    from callmeter.v1 import runs_pb2

    return word(runs_pb2.RunState, run_or_progress.state)


def _verdict(run: runs_pb2.Run) -> str:
    from callmeter.common.enum_words import word
    from callmeter.v1 import runs_pb2

    return word(runs_pb2.Verdict, run.verdict)


NOT_MEASURED = "not measured"


def cell(group: results_pb2.GroupSummary, field: str, fmt: str = "{}") -> str:
    """A summary figure as shown: formatted, or "not measured" when it was not (never 0)."""
    from callmeter.common.verdict import measured

    value = measured(group, field)
    return NOT_MEASURED if value is None else fmt.format(value)


def progress_line(message: runs_pb2.RunProgress) -> str:
    """elapsed, state, and per group endpoints/registered/connected/MOS."""
    groups = " | ".join(f"{g.group}: {g.endpoints} ep {g.registered} reg {g.calls_connected} conn "
                        f"MOS {cell(g, 'mos_avg', '{:.2f}').replace(NOT_MEASURED, '-')}" for g in message.groups)
    return f"{message.elapsed_s:6.0f}s  {_state(message):<11}{groups}".rstrip()


SUMMARY_COLUMNS = [
    # (heading, GroupSummary field, format)
    ("endpoints", "endpoints", "{}"), ("registered", "registered", "{}"), ("attempted", "calls_attempted", "{}"),
    ("connected", "calls_connected", "{}"), ("failed", "calls_failed", "{}"), ("MOS avg", "mos_avg", "{:.2f}"),
    ("MOS min", "mos_min", "{:.2f}"), ("jitter p95 ms", "jitter_ms_p95", "{:.1f}"), ("loss %", "loss_pct", "{:.2f}"),
    ("RTT p95 ms", "rtt_ms_p95", "{:.1f}"), ("setup p95 ms", "setup_ms_p95", "{:.0f}"),
    ("complete %", "completeness_pct", "{:.1f}"),
]
#: Columns shown only when some row has them: completeness is the platform's figure (not local mode's).
OPTIONAL_COLUMNS = {"completeness_pct"}


def summary_table(groups: Iterable[results_pb2.GroupSummary], total: results_pb2.GroupSummary | None = None) -> str:
    rows = [(g.group, g) for g in groups] + ([("total", total)] if total is not None else [])
    columns = [c for c in SUMMARY_COLUMNS if c[1] not in OPTIONAL_COLUMNS or any(g.HasField(c[1]) for _, g in rows)]
    width = max([5, *(len(name) for name, _ in rows)])
    cells = [[cell(group, field, fmt) for _, field, fmt in columns] for _, group in rows]
    widths = [max([len(heading), 6, *(len(row[i]) for row in cells)]) for i, (heading, _, _) in enumerate(columns)]
    lines = [f"{'group':<{width}}" + "".join(f"  {heading:>{w}}" for (heading, _, _), w in zip(columns, widths))]
    for (name, _), row in zip(rows, cells):
        lines.append(f"{name:<{width}}" + "".join(f"  {text:>{w}}" for text, w in zip(row, widths)))
    return "\n".join(lines)


def format_result(run: runs_pb2.Run, summary: results_pb2.RunSummary) -> str:
    """The table per group, the gates, the verdict and its reasons."""
    from callmeter.common.verdict import observed_text

    parts = [summary_table(summary.groups, summary.total if summary.HasField("total") else None)]
    outcome_lines = outcomes_lines(summary)
    if outcome_lines:
        parts.append(outcome_lines)
    if summary.gates:
        parts.append("\n".join(f"{'PASS' if gate.passed else 'FAIL'}  {gate.gate}  ({observed_text(gate)})"
                               for gate in summary.gates))
    verdict = [f"run {run.id}: {_state(run)}, verdict {_verdict(run).upper()}"]
    parts.append("\n".join(verdict + [f"  {reason}" for reason in run.reasons]))
    return "\n\n".join(parts)


def outcomes_lines(summary: results_pb2.RunSummary) -> str:
    """"outcomes  callers: 45 success, 5 registration failed (SIP 401)", a line per group; "" if not counted."""
    from callmeter.common.outcomes import outcomes_text

    rows = [(group.group, outcomes_text(group)) for group in summary.groups if group.outcomes]
    width = max([len(name) for name, _ in rows], default=0)
    return "\n".join(f"{'outcomes' if i == 0 else '':<10}{name + ':':<{width + 1}} {text}"
                     for i, (name, text) in enumerate(rows))


JSON_GROUP_FIELDS = ("endpoints", "registered", "register_attempted", "calls_attempted", "calls_connected",
                     "calls_failed", "mos_avg", "mos_min", "jitter_ms_p95", "loss_pct", "rtt_ms_p95", "setup_ms_p95",
                     "endpoint_seconds", "completeness_pct", "overloaded_s", "endpoints_failed")


def run_json(run: runs_pb2.Run, summary: results_pb2.RunSummary | None) -> dict[str, Any]:
    """{run_id, state, verdict, reasons, total: {endpoints, …, completeness_pct} or null,
    groups: [{name, endpoints, …}], gates: [{gate, observed, passed}], workers: [{worker,
    overloaded_s, …}]}; a figure that was not measured is null."""
    from callmeter.common.generator_load import load_json
    from callmeter.common.outcomes import outcomes_json
    from callmeter.common.verdict import measured

    def numbers(group: results_pb2.GroupSummary) -> dict[str, Any]:
        return {**{field: measured(group, field) for field in JSON_GROUP_FIELDS}, "outcomes": outcomes_json(group)}

    has_total = summary is not None and summary.HasField("total")
    return {
        "run_id": run.id, "state": _state(run), "verdict": _verdict(run),
        "reasons": list(run.reasons),
        "total": numbers(summary.total) if has_total else None,  # type: ignore[union-attr]
        "groups": [{"name": g.group, **numbers(g)} for g in (summary.groups if summary is not None else [])],
        "gates": [{"gate": g.gate, "observed": measured(g, "observed"), "baseline": measured(g, "baseline"),
                   "passed": g.passed}
                  for g in (summary.gates if summary is not None else [])],
        "workers": [load_json(load) for load in (summary.workers if summary is not None else [])],
    }


def format_json(run: runs_pb2.Run, summary: results_pb2.RunSummary | None) -> str:
    import json

    return json.dumps(run_json(run, summary))


def junit_xml(test_name: str, run: runs_pb2.Run, summary: results_pb2.RunSummary) -> str:
    """One testcase per quality gate (the default gate too), with a failure when it did not hold; a
    run that did not finish, or that could not be judged, adds a "run" testcase with an error, so
    that CI never reads it as a pass."""
    import xml.etree.ElementTree as ET

    from callmeter.common.outcomes import outcome_word
    from callmeter.common.verdict import observed_text
    from callmeter.v1 import runs_pb2

    suite = ET.Element("testsuite", name=f"callmeter {test_name}")
    properties = ET.SubElement(suite, "properties")
    ET.SubElement(properties, "property", name="run_id", value=run.id)
    if summary.total.HasField("completeness_pct"):
        ET.SubElement(properties, "property", name="completeness_pct", value=f"{summary.total.completeness_pct:.1f}")
    if summary.total.HasField("overloaded_s"):
        ET.SubElement(properties, "property", name="overloaded_s", value=str(summary.total.overloaded_s))
    for count in summary.total.outcomes:  # e.g. outcome.call_failed.486 = 3
        name = f"outcome.{outcome_word(count.outcome)}" + (f".{count.sip_code}" if count.sip_code else "")
        ET.SubElement(properties, "property", name=name, value=str(count.endpoints))
    failures = errors = 0
    for gate in summary.gates:
        case = ET.SubElement(suite, "testcase", classname=f"callmeter.{test_name}", name=gate.gate)
        if not gate.passed:
            failures += 1
            ET.SubElement(case, "failure", message=observed_text(gate)).text = \
                f"{gate.gate} did not hold: {observed_text(gate)}"
    if run.state != runs_pb2.RUN_STATE_FINISHED or run.verdict == runs_pb2.VERDICT_ERROR:
        errors += 1
        case = ET.SubElement(suite, "testcase", classname=f"callmeter.{test_name}", name="run")
        ET.SubElement(case, "error", message=f"run {_state(run)}").text = "\n".join(run.reasons) or _state(run)
    suite.set("tests", str(len(summary.gates) + errors))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    root = ET.Element("testsuites")
    root.append(suite)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def exit_code(run: runs_pb2.Run) -> ExitCode:
    from callmeter.v1 import runs_pb2

    if run.state == runs_pb2.RUN_STATE_FINISHED and run.verdict == runs_pb2.VERDICT_PASS:
        return ExitCode.OK
    if run.state == runs_pb2.RUN_STATE_FINISHED and run.verdict == runs_pb2.VERDICT_FAIL:
        return ExitCode.RUN_FAILED
    return ExitCode.ERROR
