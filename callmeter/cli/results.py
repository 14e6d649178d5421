"""`callmeter runs series|worst|codes|export RUN` and `callmeter tests trend TEST`: results through the API.

Each prints a table, or with --json one JSON object: enum values as words, every value in its
metric's unit (docs/metrics.md), seconds as Unix seconds. `runs export` writes a CSV file (a row
per endpoint-second: group, endpoint, second, then every catalog metric, empty where it was not
measured), or with --json a JSON line per endpoint-second. Exit 0, or 2 after one error line.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from callmeter.common.exit_codes import ExitCode

if TYPE_CHECKING:
    from collections.abc import Iterable

    import grpc

    from callmeter.cli.api_client import ApiTarget
    from callmeter.v1 import results_pb2, runs_pb2

#: The longest step a series may have (metrics-ingest refuses more).
MAX_STEP_S = 86400


def add_result_commands(runs_commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`runs series|worst|codes|export`, on the subparsers of `runs`."""
    from callmeter.cli.runs import positive_count

    series = runs_commands.add_parser("series", help="a metric of a run over time: the whole run, a group or an endpoint")
    series.add_argument("run_id")
    series.add_argument("--metric", required=True, help="a metric of the catalog (docs/metrics.md), e.g. mos")
    series.add_argument("--group", default="", help="only this group of the test (default: the whole run)")
    series.add_argument("--endpoint", type=endpoint_index, metavar="INDEX", help="only this endpoint of --group")
    series.add_argument("--step", type=step_seconds, default=1, metavar="DURATION",
                        help="one value per this many seconds, e.g. 5s (default 1s)")
    series.add_argument("--aggregate", default="avg",
                        help="how a step's endpoint-seconds combine: avg (default), min, max, sum, p50, p95, p99")
    series.add_argument("--json", action="store_true", help="print one JSON object")
    worst = runs_commands.add_parser("worst", help="the endpoints of a run that fared worst by a metric")
    worst.add_argument("run_id")
    worst.add_argument("--by", required=True, metavar="METRIC",
                       help="a metric of the catalog; lowest first where low is worse (MOS, R factor), else highest")
    worst.add_argument("-n", "--limit", type=positive_count, default=10, help="this many endpoints (default 10)")
    worst.add_argument("--json", action="store_true", help="print one JSON object")
    codes = runs_commands.add_parser("codes", help="a run's endpoints by outcome and SIP code, failed calls by code")
    codes.add_argument("run_id")
    codes.add_argument("--json", action="store_true", help="print one JSON object")
    export = runs_commands.add_parser("export", help="every endpoint-second of a run, every metric")
    export.add_argument("run_id")
    to = export.add_mutually_exclusive_group(required=True)
    to.add_argument("--csv", type=Path, metavar="FILE", help="write a CSV file, a row per endpoint-second")
    to.add_argument("--json", action="store_true", help="print a JSON line per endpoint-second")
    for command, handler in ((series, handle_series), (worst, handle_worst), (codes, handle_codes),
                             (export, handle_export)):
        command.add_argument("--api", help="API address host:port (default: CALLMETER_API or the profile)")
        command.set_defaults(handler=handler)


def add_trend_command(test_commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`tests trend`, on the subparsers of `tests` (`test`)."""
    from callmeter.cli.runs import positive_count

    trend = test_commands.add_parser("trend", help="a run-summary figure across the newest runs of a test")
    trend.add_argument("test", help="the test's name or id")
    trend.add_argument("--metric", required=True,
                       help="a whole-run summary figure, e.g. mos_avg, mos_min, loss_pct, jitter_ms_p95, setup_ms_p95")
    trend.add_argument("-n", "--limit", type=positive_count, default=20, help="the newest this many runs (default 20)")
    trend.add_argument("--project", default="", help="only the tests of this project, to find TEST by name")
    trend.add_argument("--json", action="store_true", help="print one JSON object")
    trend.add_argument("--api", help="API address host:port (default: CALLMETER_API or the profile)")
    trend.set_defaults(handler=handle_trend)


def step_seconds(text: str) -> int:
    """A whole number of seconds, written as a test file writes a duration ("5s") or as a number."""
    from google.protobuf.duration_pb2 import Duration

    duration = Duration()
    try:
        duration.FromJsonString(text if text.endswith("s") else f"{text}s")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 5s") from None
    if duration.nanos or not 1 <= duration.seconds <= MAX_STEP_S:
        raise argparse.ArgumentTypeError(f"must be a whole number of seconds from 1s to {MAX_STEP_S}s (got {text})")
    return duration.seconds


def endpoint_index(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an endpoint index") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"an endpoint index is 0 or more (got {value})")
    return value


# ---------------------------------------------------------------------------------------------
# Calling the API


@contextmanager
def _api(api: str | None) -> Iterator[tuple[grpc.Channel, ApiTarget]]:
    """A channel to the API and its target; raises ConfigError."""
    from callmeter.cli.api_client import resolve_target

    target = resolve_target(api)
    with target.channel() as channel:
        yield channel, target


def _call(api: str | None, method: str, request: Any) -> Any:
    """One unary RunService call; raises ConfigError or grpc.RpcError."""
    from callmeter.cli.api_client import CALL_TIMEOUT_S
    from callmeter.v1 import runs_pb2_grpc

    with _api(api) as (channel, target):
        return getattr(runs_pb2_grpc.RunServiceStub(channel), method)(request, metadata=target.metadata(),
                                                                        timeout=CALL_TIMEOUT_S)


def _failed(exc: Exception) -> int:
    """The one error line of a ConfigError or an RPC error; the exit code."""
    import grpc

    from callmeter.cli.api_client import error, rpc_error_line

    return error(rpc_error_line(exc) if isinstance(exc, grpc.RpcError) else exc.detail)  # type: ignore[attr-defined]


def _errors() -> tuple[type[Exception], ...]:
    import grpc

    from callmeter.common.errors import CallmeterError

    return grpc.RpcError, CallmeterError


def _print_json(data: Any) -> None:
    import json

    print(json.dumps(data))


def _unit(metric: str) -> str:
    from callmeter.catalog import BY_NAME

    return BY_NAME[metric].unit if metric in BY_NAME else ""


def _utc(second: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _number(value: float) -> str:
    """4.38, 12.3457, 1234567: at most four decimals, none that are 0."""
    return f"{value:.4f}".rstrip("0").rstrip(".")


def _table(headings: list[str], rows: list[list[str]], align: str = "") -> str:
    """Columns as wide as their widest cell, aligned by ``align`` ("<" or ">" per column; by default
    the first to the left, the others to the right)."""
    align = align or "<" + ">" * (len(headings) - 1)
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headings)]
    return "\n".join("  ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths)).rstrip()
                     for cells in [headings, *rows])


# ---------------------------------------------------------------------------------------------
# The commands


def handle_series(args: argparse.Namespace) -> int:
    from callmeter.v1 import runs_pb2

    request = runs_pb2.GetRunSeriesRequest(run_id=args.run_id, metric=args.metric, group=args.group,
                                           step_s=args.step, aggregate=args.aggregate)
    if args.endpoint is not None:
        request.endpoint = args.endpoint
    try:
        reply = _call(args.api, "GetRunSeries", request)
    except _errors() as exc:
        return _failed(exc)
    if args.json:
        _print_json({"run_id": args.run_id, "metric": args.metric, "unit": _unit(args.metric),
                     "group": args.group or None, "endpoint": args.endpoint, "step_s": args.step,
                     "aggregate": args.aggregate, "points": [{"second": p.second, "value": p.value} for p in reply.points]})
        return ExitCode.OK
    scope = "the whole run" if not args.group else f"group {args.group}" if args.endpoint is None \
        else f"endpoint {args.endpoint} of group {args.group}"
    unit = f" ({_unit(args.metric)})" if _unit(args.metric) else ""
    print(f"{args.metric}{unit}: {args.aggregate} per {args.step} s over {scope} of run {args.run_id}")
    if not reply.points:
        print("no endpoint-seconds stored for it")
        return ExitCode.OK
    print(_table(["time (UTC)", args.metric], [[_utc(p.second), _number(p.value)] for p in reply.points]))
    return ExitCode.OK


def handle_worst(args: argparse.Namespace) -> int:
    from callmeter.v1 import runs_pb2

    try:
        reply = _call(args.api, "GetWorstEndpoints",
                      runs_pb2.GetWorstEndpointsRequest(run_id=args.run_id, metric=args.by, limit=args.limit))
    except _errors() as exc:
        return _failed(exc)
    if args.json:
        _print_json({"run_id": args.run_id, "metric": args.by, "unit": _unit(args.by), "lowest_first": reply.lowest_first,
                     "endpoints": [{"group": e.group, "endpoint": e.endpoint, "value": e.value} for e in reply.endpoints]})
        return ExitCode.OK
    unit = f" ({_unit(args.by)})" if _unit(args.by) else ""
    print(f"the {len(reply.endpoints)} worst endpoints of run {args.run_id} by {args.by}{unit}, "
          f"{'lowest' if reply.lowest_first else 'highest'} first")
    print(_table(["group", "endpoint", args.by], [[e.group, str(e.endpoint), _number(e.value)] for e in reply.endpoints]))
    return ExitCode.OK


def _code(code: int) -> str:
    return str(code) if code else "none"  # 0: no final response, or a transport error


def codes_json(codes: runs_pb2.RunCodes) -> dict[str, Any]:
    """{run_id, total: {outcomes, calls_attempted, calls_failed, failures_by_code}, groups: [{name, …}]};
    outcomes as in `run --json`, failures_by_code keyed by SIP code ("0": no final response)."""
    from callmeter.common.outcomes import outcomes_json

    def group(g: runs_pb2.GroupCodes) -> dict[str, Any]:
        return {"outcomes": outcomes_json(g),  # type: ignore[arg-type]  # a GroupCodes has the same outcomes
                "calls_attempted": g.calls_attempted, "calls_failed": g.calls_failed,
                "failures_by_code": {str(code): n for code, n in sorted(g.failures_by_code.items())}}

    return {"run_id": codes.run_id, "total": group(codes.total),
            "groups": [{"name": g.group, **group(g)} for g in codes.groups]}


def codes_text(codes: runs_pb2.RunCodes) -> str:
    from callmeter.common.outcomes import outcome_text

    scopes = [(g.group, g) for g in codes.groups] + [("total", codes.total)]
    outcomes = [[name, str(c.endpoints), outcome_text(c.outcome, c.sip_code)] for name, g in scopes for c in g.outcomes]
    failures = [[name, _code(code), str(calls)] for name, g in scopes for code, calls in sorted(g.failures_by_code.items())]
    parts = [f"run {codes.run_id}: endpoints by outcome",
             _table(["group", "endpoints", "outcome"], outcomes, "<><") if outcomes else "no outcome reported yet"]
    parts += ["", "failed calls by final SIP code",
              _table(["group", "SIP code", "calls"], failures) if failures else "no call failed"]
    return "\n".join(parts)


def handle_codes(args: argparse.Namespace) -> int:
    from callmeter.v1 import runs_pb2

    try:
        codes = _call(args.api, "GetRunCodes", runs_pb2.GetRunCodesRequest(run_id=args.run_id))
    except _errors() as exc:
        return _failed(exc)
    if args.json:
        _print_json(codes_json(codes))
    else:
        print(codes_text(codes))
    return ExitCode.OK


def handle_trend(args: argparse.Namespace) -> int:
    from callmeter.cli.api_client import CALL_TIMEOUT_S
    from callmeter.cli.testcmd import find_test
    from callmeter.v1 import results_pb2, runs_pb2_grpc, tests_pb2_grpc

    try:
        with _api(args.api) as (channel, target):
            test = find_test(tests_pb2_grpc.TestServiceStub(channel), target, args.test, args.project)
            reply = runs_pb2_grpc.RunServiceStub(channel).GetTestTrend(
                results_pb2.TrendRequest(test_id=test.id, metric=args.metric, limit=args.limit),
                metadata=target.metadata(), timeout=CALL_TIMEOUT_S)
    except _errors() as exc:
        return _failed(exc)
    if args.json:
        _print_json({"test_id": test.id, "test": test.spec.name, "metric": args.metric,
                     "points": [{"run_id": p.run_id, "started_at": p.started_at, "value": p.value} for p in reply.points]})
        return ExitCode.OK
    print(f"{args.metric} of test {test.spec.name!r}: its newest {len(reply.points)} runs that measured it, newest first")
    print(_table(["run", "started (UTC)", args.metric],
                 [[p.run_id, _utc(p.started_at), _number(p.value)] for p in reply.points], "<<>"))
    return ExitCode.OK


def export_header() -> list[str]:
    """The columns of `runs export --csv`: group, endpoint, second, then every metric sample_values gives."""
    from callmeter.catalog import METRICS

    return ["group", "endpoint", "second", *(m.name for m in METRICS if not m.deprecated)]


def csv_row(sample: results_pb2.EndpointSample, metrics: list[str]) -> list[Any]:
    """Key columns, then each metric in its unit; an empty cell where it was not measured, 1/0 for a flag."""
    from callmeter.catalog import sample_values

    values = sample_values(sample.metrics)
    cells = [values.get(name, "") for name in metrics]
    return [sample.group, sample.endpoint, sample.second, *(int(c) if isinstance(c, bool) else c for c in cells)]


def write_csv(path: Path, samples: Iterable[results_pb2.EndpointSample]) -> int:
    """Writes the rows beside ``path`` and moves them there once all came, so that a failed export
    leaves nothing half-written; returns the rows written."""
    import csv

    header = export_header()
    partial = path.with_name(f".{path.name}.part")
    rows = 0
    try:
        with partial.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(header)
            for sample in samples:
                writer.writerow(csv_row(sample, header[3:]))
                rows += 1
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return rows


def handle_export(args: argparse.Namespace) -> int:
    import json

    from callmeter.catalog import sample_values
    from callmeter.cli.api_client import error
    from callmeter.cli.run import unwritable
    from callmeter.v1 import runs_pb2, runs_pb2_grpc

    if args.csv is not None and (problem := unwritable(args.csv)):
        return error(f"--csv {args.csv}: {problem}")  # said before the export, not after it
    try:
        with _api(args.api) as (channel, target):
            pages = runs_pb2_grpc.RunServiceStub(channel).ExportRunSamples(
                runs_pb2.ExportRunSamplesRequest(run_id=args.run_id), metadata=target.metadata())
            samples = (sample for page in pages for sample in page.samples)
            if args.csv is None:
                for s in samples:
                    print(json.dumps({"second": s.second, "group": s.group, "endpoint": s.endpoint,
                                      "metrics": sample_values(s.metrics)}))
                return ExitCode.OK
            rows = write_csv(args.csv, samples)
    except _errors() as exc:
        return _failed(exc)
    except OSError as exc:
        return error(f"--csv {args.csv}: {exc.strerror or exc}")
    print(f"wrote {rows} endpoint-seconds of run {args.run_id} to {args.csv}")
    return ExitCode.OK
