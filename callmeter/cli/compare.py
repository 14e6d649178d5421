"""`callmeter runs compare RUN_A RUN_B`: two ended runs side by side, from the summaries stored
with them: per group and for the whole run, MOS avg and min, jitter p95, loss, RTT p95, setup
p95, completeness, endpoints failed and the endpoints of each outcome, with the change B − A and
whether it is better or worse (callmeter/common/directions.py: a MOS is better higher, a delay
lower). A figure either run lacks is "not measured" (null in --json), never 0.

Only an ended run has a stored summary: a run still going, or one whose summary is still being
collected, is refused on one line. Exit codes: 0 compared, 2 anything else.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from callmeter.common.exit_codes import ExitCode

if TYPE_CHECKING:
    import grpc

    from callmeter.cli.api_client import ApiTarget
    from callmeter.v1 import results_pb2, runs_pb2

#: (heading, gate metric, format): the figures compared, in this order.
FIGURES = [
    ("MOS avg", "mos_avg", "{:.2f}"), ("MOS min", "mos_min", "{:.2f}"), ("jitter p95 ms", "jitter_ms_p95", "{:.1f}"),
    ("loss %", "loss_pct", "{:.2f}"), ("RTT p95 ms", "rtt_ms_p95", "{:.1f}"), ("setup p95 ms", "setup_ms_p95", "{:.0f}"),
    ("complete %", "completeness_pct", "{:.1f}"), ("endpoints failed", "endpoints_failed", "{:.0f}"),
]
NOT_MEASURED = "not measured"


def add_compare_command(runs_commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Adds `compare` to `callmeter runs`."""
    parser = runs_commands.add_parser(
        "compare", help="compare two ended runs: each group's figures side by side, the change and its direction",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", metavar="RUN_A", help="the run compared with, e.g. the baseline")
    parser.add_argument("run_b", metavar="RUN_B", help="the run compared; the change is B - A")
    parser.add_argument("--json", action="store_true", help="print the comparison as one JSON object")
    parser.add_argument("--api", help="API address host:port (default: CALLMETER_API or the profile)")
    parser.set_defaults(handler=handle_compare)


@dataclass(frozen=True)
class Row:
    """One figure of one scope in both runs; a value is None where that run did not measure it."""

    label: str  # as the table says it: "MOS avg", "outcome call failed (SIP 486)"
    a: float | None
    b: float | None
    higher_better: bool
    fmt: str = "{:.0f}"

    @property
    def change(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a

    @property
    def direction(self) -> str | None:
        from callmeter.common.directions import direction

        return None if self.change is None else direction(self.change, self.higher_better)


@dataclass(frozen=True)
class Scope:
    """A group (or the whole run, "total") of both runs."""

    name: str
    figures: list[tuple[str, Row]]  # (gate metric, row)
    outcomes: list[tuple[int, int, Row]]  # (outcome, SIP code, row)


def scopes(a: results_pb2.RunSummary, b: results_pb2.RunSummary) -> list[Scope]:
    """The groups of A, then those only B has, then the total."""
    groups_a, groups_b = ({g.group: g for g in s.groups} for s in (a, b))
    names = list(dict.fromkeys([*groups_a, *groups_b]))
    pairs = [(name, groups_a.get(name), groups_b.get(name)) for name in names]
    pairs.append(("total", a.total if a.HasField("total") else None, b.total if b.HasField("total") else None))
    return [scope(name, group_a, group_b) for name, group_a, group_b in pairs]


def scope(name: str, a: results_pb2.GroupSummary | None, b: results_pb2.GroupSummary | None) -> Scope:
    from callmeter.common.directions import higher_is_better, outcome_higher_is_better
    from callmeter.common.outcomes import outcome_text
    from callmeter.common.verdict import METRICS

    def read(group: results_pb2.GroupSummary | None, metric: str) -> float | None:
        return METRICS[metric](group) if group is not None else None

    figures = [(metric, Row(label, read(a, metric), read(b, metric), higher_is_better(metric), fmt))
               for label, metric, fmt in FIGURES]
    counted = [{(c.outcome, c.sip_code): c.endpoints for c in g.outcomes} if g is not None and g.outcomes else None
               for g in (a, b)]
    keys = sorted(dict.fromkeys([*(counted[0] or {}), *(counted[1] or {})]),
                  key=lambda key: not outcome_higher_is_better(key[0]))  # success first, else as the runs list them
    outcomes = [(outcome, code, Row(f"outcome {outcome_text(outcome, code)}",
                                    *(None if c is None else c.get((outcome, code), 0) for c in counted),
                                    outcome_higher_is_better(outcome)))
                for outcome, code in keys]
    return Scope(name, figures, outcomes)


def _value(row: Row, value: float | None) -> str:
    return NOT_MEASURED if value is None else row.fmt.format(value)


def _change(row: Row) -> str:
    """B − A in the figure's format with its sign ("-0.18", "+54"), "0" when the same; a change
    too small for that format in two significant digits."""
    from callmeter.common.directions import SAME

    change = row.change
    if change is None:
        return NOT_MEASURED
    if row.direction == SAME:
        return row.fmt.format(0)
    shown = row.fmt.replace("{:", "{:+").format(change)
    return shown if float(shown) else f"{change:+.2g}"


def table(compared: list[Scope]) -> str:
    """A line per figure and scope: A, B, B − A and better/worse/same."""
    lines = [(scope.name if i == 0 else "", row) for scope in compared
             for i, row in enumerate([row for _, row in scope.figures] + [row for _, _, row in scope.outcomes])]
    cells = [(name, row.label, _value(row, row.a), _value(row, row.b), _change(row), row.direction or "")
             for name, row in lines]
    heading = ("group", "figure", "A", "B", "B - A", "")
    widths = [max(len(str(line[i])) for line in [heading, *cells]) for i in range(len(heading))]
    out = []
    for line in [heading, *cells]:
        left = f"{line[0]:<{widths[0]}}  {line[1]:<{widths[1]}}"
        right = "".join(f"  {text:>{width}}" for text, width in zip(line[2:5], widths[2:5]))
        out.append(f"{left}{right}  {line[5]}".rstrip())
    return "\n".join(out)


def _row_json(row: Row) -> dict[str, Any]:
    change = row.change
    return {"a": row.a, "b": row.b, "change": None if change is None else round(change, 6),
            "direction": row.direction}


def comparison_json(side_a: Side, side_b: Side, compared: list[Scope]) -> dict[str, Any]:
    """{a: {run_id, test, test_version, state, verdict}, b: {…}, groups: [{name, figures:
    [{metric, a, b, change, direction}], outcomes: [{outcome, sip_code, a, b, change, direction}]}],
    total: {figures, outcomes}}; what a run did not measure is null, and so are its change and direction."""
    from callmeter.common.outcomes import outcome_word

    def scope_json(scope: Scope) -> dict[str, Any]:
        return {"figures": [{"metric": metric, **_row_json(row)} for metric, row in scope.figures],
                "outcomes": [{"outcome": outcome_word(outcome), "sip_code": code or None, **_row_json(row)}
                             for outcome, code, row in scope.outcomes]}

    *groups, total = compared
    return {"a": side_a.json(), "b": side_b.json(), "groups": [{"name": g.name, **scope_json(g)} for g in groups],
            "total": scope_json(total)}


@dataclass(frozen=True)
class Side:
    """One of the runs compared, with its test's name and its stored summary."""

    run: runs_pb2.Run
    test: str
    summary: results_pb2.RunSummary

    def words(self) -> tuple[str, str]:
        from callmeter.common.enum_words import word
        from callmeter.v1 import runs_pb2

        return word(runs_pb2.RunState, self.run.state), word(runs_pb2.Verdict, self.run.verdict)

    def json(self) -> dict[str, Any]:
        state, verdict = self.words()
        return {"run_id": self.run.id, "test": self.test, "test_version": self.run.test_version, "state": state,
                "verdict": verdict}

    def line(self, letter: str) -> str:
        state, verdict = self.words()
        created = self.run.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
        return (f"{letter}  run {self.run.id}: {self.test} version {self.run.test_version}, {state}, "
                f"verdict {verdict.upper()}, created {created} UTC")


class NoSummary(Exception):
    """The run has no stored summary to compare: the one line that says why."""


def fetch(channel: grpc.Channel, target: ApiTarget, run_id: str) -> Side:
    """The run (GetRun), its test's name, and its stored summary: WatchRun's first message once a
    run has ended (as `runs show` reads it)."""
    from callmeter.cli.api_client import CALL_TIMEOUT_S
    from callmeter.common.enum_words import word
    from callmeter.common.run_states import RUN_ENDED
    from callmeter.v1 import runs_pb2, runs_pb2_grpc, tests_pb2, tests_pb2_grpc

    stub = runs_pb2_grpc.RunServiceStub(channel)
    run = stub.GetRun(runs_pb2.GetRunRequest(run_id=run_id), metadata=target.metadata(), timeout=CALL_TIMEOUT_S)
    state = word(runs_pb2.RunState, run.state)
    if run.state not in RUN_ENDED:
        raise NoSummary(f"run {run.id} has not ended ({state}): only an ended run has a stored summary to compare")
    watch = stub.WatchRun(runs_pb2.WatchRunRequest(run_id=run.id), metadata=target.metadata(), timeout=CALL_TIMEOUT_S)
    now = next(watch)
    watch.cancel()
    if not now.HasField("summary"):
        raise NoSummary(f"run {run.id} has ended ({state}) but its summary is still being collected; "
                        "try again in a moment")
    if not now.summary.HasField("total") and not now.summary.groups:
        why = f": {run.reasons[0]}" if run.reasons else ""
        raise NoSummary(f"run {run.id} ended ({state}) with no summary, nothing was measured{why}")
    test = tests_pb2_grpc.TestServiceStub(channel).GetTest(
        tests_pb2.GetTestRequest(test_id=run.test_id, version=run.test_version), metadata=target.metadata(),
        timeout=CALL_TIMEOUT_S)
    return Side(run, test.spec.name, now.summary)


def handle_compare(args: argparse.Namespace) -> int:
    import json

    import grpc

    from callmeter.cli.api_client import error, resolve_target, rpc_error_line
    from callmeter.common.errors import ConfigError

    try:
        target = resolve_target(args.api)
    except ConfigError as exc:
        return error(exc.detail)
    with target.channel() as channel:
        try:
            side_a, side_b = fetch(channel, target, args.run_a), fetch(channel, target, args.run_b)
        except grpc.RpcError as exc:
            return error(rpc_error_line(exc))
        except NoSummary as exc:
            return error(str(exc))
    compared = scopes(side_a.summary, side_b.summary)
    if args.json:
        print(json.dumps(comparison_json(side_a, side_b, compared)))
    else:
        print(f"{side_a.line('A')}\n{side_b.line('B')}\n\n{table(compared)}")
    return ExitCode.OK
