"""`callmeter runs list|show|cancel`: the runs you may see, one run with its results (its test,
workers and starter by name), stopping one."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from callmeter.common.exit_codes import ExitCode

if TYPE_CHECKING:
    import grpc

    from callmeter.cli.api_client import ApiTarget
    from callmeter.v1 import runs_pb2

# The page size `runs list` asks for at most: a page_size is an int32, and the API caps pages lower.
MAX_PAGE_SIZE = 1000


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from callmeter.cli.compare import add_compare_command
    from callmeter.cli.results import add_result_commands

    parser = commands.add_parser("runs", help="list runs, show one, compare two or cancel one; a run's series, "
                                              "worst endpoints, codes and samples")
    sub = parser.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="list runs, newest first")
    listing.add_argument("--test", metavar="NAME", help="only the runs of the test of this name")
    listing.add_argument("--project", default="", help="only the runs of this project")
    listing.add_argument("--limit", type=positive_count, default=20, help="at most this many runs (default 20)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    showing = sub.add_parser("show", help="show a run: state, verdict, results per group, gates")
    showing.add_argument("run_id")
    showing.add_argument("--json", action="store_true", help="print the result as one JSON object")
    cancelling = sub.add_parser("cancel", help="cancel a run that has not ended (its summary keeps what it measured)")
    cancelling.add_argument("run_id")
    cancelling.add_argument("--json", action="store_true", help="print the run as one JSON object")
    for command, handler in ((listing, handle_list), (showing, handle_show), (cancelling, handle_cancel)):
        command.add_argument("--api", help="API address host:port (default: CALLMETER_API or the profile)")
        command.set_defaults(handler=handler)
    add_result_commands(sub)
    add_compare_command(sub)


def positive_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def handle_list(args: argparse.Namespace) -> int:
    from itertools import islice

    import grpc

    from callmeter.cli.access import print_json
    from callmeter.cli.api_client import error, every_page, resolve_target, rpc_error_line
    from callmeter.common.enum_words import word
    from callmeter.common.errors import ConfigError
    from callmeter.v1 import common_pb2, runs_pb2, runs_pb2_grpc, tests_pb2, tests_pb2_grpc

    try:
        target = resolve_target(args.api)
    except ConfigError as exc:
        return error(exc.detail)
    with target.channel() as channel:
        try:
            tests = {test.id: test.spec.name for test in every_page(
                tests_pb2_grpc.TestServiceStub(channel).ListTests,
                tests_pb2.ListTestsRequest(project_id=args.project, include_archived=True), "tests", target)}
            wanted = [test_id for test_id, name in tests.items() if name == args.test] if args.test else [""]
            if not wanted:
                return error(f"no test named {args.test!r}")
            stub = runs_pb2_grpc.RunServiceStub(channel)
            page = common_pb2.PageRequest(page_size=min(args.limit, MAX_PAGE_SIZE))
            found = [run for test_id in wanted for run in islice(every_page(stub.ListRuns, runs_pb2.ListRunsRequest(
                project_id=args.project, test_id=test_id, page=page), "runs", target), args.limit)]
        except grpc.RpcError as exc:
            return error(rpc_error_line(exc))
    found = sorted(found, key=lambda run: run.created_at.ToNanoseconds(), reverse=True)[:args.limit]
    if args.json:
        print_json(found)
        return ExitCode.OK
    print(f"{'run':<34}{'test':<24}{'ver':>4}  {'state':<12}{'verdict':<9}created (UTC)")
    for run in found:
        created = run.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
        print(f"{run.id:<34}{tests.get(run.test_id, run.test_id)[:22]:<24}{run.test_version:>4}  "
              f"{word(runs_pb2.RunState, run.state):<12}{word(runs_pb2.Verdict, run.verdict):<9}{created}")
    return ExitCode.OK


def handle_show(args: argparse.Namespace) -> int:
    import json

    import grpc

    from callmeter.cli.api_client import CALL_TIMEOUT_S, error, resolve_target, rpc_error_line
    from callmeter.cli.run import format_result, run_json
    from callmeter.common.errors import ConfigError
    from callmeter.v1 import results_pb2, runs_pb2, runs_pb2_grpc

    try:
        target = resolve_target(args.api)
    except ConfigError as exc:
        return error(exc.detail)
    with target.channel() as channel:
        stub = runs_pb2_grpc.RunServiceStub(channel)
        try:
            run = stub.GetRun(runs_pb2.GetRunRequest(run_id=args.run_id), metadata=target.metadata(),
                              timeout=CALL_TIMEOUT_S)
            # WatchRun's first message is the run's present: live groups, or the summary once it has ended.
            watch = stub.WatchRun(runs_pb2.WatchRunRequest(run_id=run.id), metadata=target.metadata(),
                                  timeout=CALL_TIMEOUT_S)
            now = next(watch)
            watch.cancel()
            names = run_names(channel, target, run)
        except grpc.RpcError as exc:
            return error(rpc_error_line(exc))
    summary = now.summary if now.HasField("summary") else results_pb2.RunSummary(run_id=run.id, groups=now.groups)
    if args.json:
        print(json.dumps({**run_json(run, summary), "test": names.test, "test_id": run.test_id,
                          "test_version": run.test_version, "started_by": names.user, "started_by_id": run.started_by,
                          "placements": [{"group": p.group, "first_index": p.first_index, "count": p.count,
                                          "worker": names.workers.get(p.worker_id, p.worker_id),
                                          "worker_id": p.worker_id} for p in run.placements]}))
        return ExitCode.OK
    print(f"test {names.test} version {run.test_version}, started by {names.user or '-'}, "
          f"{now.elapsed_s:.0f} s of execution")
    placed = placement_lines(run, names.workers)
    if placed:
        print(placed)
    print(format_result(run, summary))
    return ExitCode.OK


@dataclass(frozen=True)
class RunNames:
    """What a run names by id, by name: its test (at the version run), its workers, who started it."""

    test: str
    workers: dict[str, str]
    #: The user's name, or the id when the caller may not see the user (only themselves and the users
    #: of what they administer); empty when no one is recorded.
    user: str


def run_names(channel: grpc.Channel, target: ApiTarget, run: runs_pb2.Run) -> RunNames:
    from callmeter.cli.api_client import CALL_TIMEOUT_S, every_page
    from callmeter.v1 import tenancy_pb2, tenancy_pb2_grpc, tests_pb2, tests_pb2_grpc, workers_pb2, workers_pb2_grpc

    test = tests_pb2_grpc.TestServiceStub(channel).GetTest(
        tests_pb2.GetTestRequest(test_id=run.test_id, version=run.test_version), metadata=target.metadata(),
        timeout=CALL_TIMEOUT_S)
    workers = {worker.id: worker.name for worker in every_page(
        workers_pb2_grpc.WorkerServiceStub(channel).ListWorkers,
        workers_pb2.ListWorkersRequest(project_id=run.project_id), "workers", target)} if run.placements else {}
    user = run.started_by
    if user:
        tenancy = tenancy_pb2_grpc.TenancyServiceStub(channel)
        me = tenancy.WhoAmI(tenancy_pb2.WhoAmIRequest(), metadata=target.metadata(), timeout=CALL_TIMEOUT_S).user
        users = {me.id: me.name} if me.id == user else {
            member.user.id: member.user.name
            for member in every_page(tenancy.ListUsers, tenancy_pb2.ListUsersRequest(), "users", target)}
        user = users.get(user, user)
    return RunNames(test.spec.name, workers, user)


def placement_lines(run: runs_pb2.Run, workers: dict[str, str]) -> str:
    """"placed    callers: 0-7 on big, 8-9 on small", a line per group; "" before placement."""
    groups: dict[str, list[str]] = {}
    for p in sorted(run.placements, key=lambda p: (p.group, p.first_index)):
        span = f"{p.first_index}" if p.count == 1 else f"{p.first_index}-{p.first_index + p.count - 1}"
        groups.setdefault(p.group, []).append(f"{span} on {workers.get(p.worker_id, p.worker_id)}")
    width = max((len(group) for group in groups), default=0)
    return "\n".join(f"{'placed' if i == 0 else '':<10}{group + ':':<{width + 1}} {', '.join(spans)}"
                     for i, (group, spans) in enumerate(groups.items()))


def handle_cancel(args: argparse.Namespace) -> int:
    import grpc

    from callmeter.cli.api_client import CALL_TIMEOUT_S, error, resolve_target, rpc_error_line
    from callmeter.cli.run import format_json
    from callmeter.common.enum_words import word
    from callmeter.common.errors import ConfigError
    from callmeter.common.run_states import RUN_ENDED
    from callmeter.v1 import runs_pb2, runs_pb2_grpc

    try:
        target = resolve_target(args.api)
    except ConfigError as exc:
        return error(exc.detail)
    with target.channel() as channel:
        stub = runs_pb2_grpc.RunServiceStub(channel)
        try:
            run = stub.GetRun(runs_pb2.GetRunRequest(run_id=args.run_id), metadata=target.metadata(),
                              timeout=CALL_TIMEOUT_S)
            ended = run.state in RUN_ENDED  # cancelled before, too: not by this command
            if not ended:
                run = stub.CancelRun(runs_pb2.CancelRunRequest(run_id=run.id), metadata=target.metadata(),
                                     timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            return error(rpc_error_line(exc))
    if args.json:
        print(format_json(run, None))
    elif run.state == runs_pb2.RUN_STATE_CANCELLED and not ended:
        print(f"run {run.id} cancelled")
    else:
        print(f"run {run.id} had already ended: {word(runs_pb2.RunState, run.state)}, "
              f"verdict {word(runs_pb2.Verdict, run.verdict).upper()}")
    return ExitCode.OK
