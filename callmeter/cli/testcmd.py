"""`callmeter tests validate|apply FILE.yaml`: check a test file, or store it through the API;
`callmeter tests list|show|delete`: the stored tests. `test` is the same command (an alias)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from callmeter.common.exit_codes import ExitCode

if TYPE_CHECKING:
    import grpc

    from callmeter.cli.api_client import ApiTarget
    from callmeter.v1 import common_pb2, runs_pb2, tests_pb2, tests_pb2_grpc


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from callmeter.cli.results import add_trend_command
    from callmeter.cli.runs import positive_count

    parser = commands.add_parser("tests", aliases=["test"], help="validate or store test files; list, show or "
                                                                 "delete stored tests")
    sub = parser.add_subparsers(dest="test_command", metavar="ACTION", required=True)
    validate = sub.add_parser("validate", help="check a test file, storing nothing: by the API against its "
                                               "workers when a platform is configured, else here against "
                                               "callmeter's own SIP engine")
    validate.add_argument("file", type=Path)
    validate.add_argument("--api", help="API address host:port (default: CALLMETER_API or the profile)")
    validate.add_argument("--project", default="", help="project id (default: the token's only project)")
    validate.set_defaults(handler=handle_validate)
    apply = sub.add_parser("apply", help="create the test, or a new version of it, through the API")
    apply.add_argument("file", type=Path)
    apply.add_argument("--api", help="API address host:port (default: CALLMETER_API or the profile)")
    apply.add_argument("--project", default="", help="project id (default: the token's only project)")
    apply.set_defaults(handler=handle_apply)
    listing = sub.add_parser("list", help="list the tests you may see: version, size, last run, last update")
    listing.add_argument("--archived", action="store_true", help="list archived tests too")
    listing.add_argument("--json", action="store_true", help="print JSON")
    showing = sub.add_parser("show", help="show a test and its spec; --yaml prints a file to edit and apply again")
    showing.add_argument("test", help="the test's name or id")
    showing.add_argument("--version", type=positive_count, default=0, help="this version (default: the newest)")
    output = showing.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the test as one JSON object")
    output.add_argument("--yaml", action="store_true", help="print only the spec, as a test file")
    deleting = sub.add_parser("delete", help="destroy a test that has no runs, or archive one that has (its runs "
                                             "are kept; `apply` brings it back)")
    deleting.add_argument("test", help="the test's name or id")
    deleting.add_argument("--yes", action="store_true", help="do not ask first")
    for command, handler, project in ((listing, handle_list, "only the tests of this project"),
                                      (showing, handle_show, "the test's project, to find TEST by name"),
                                      (deleting, handle_delete, "the test's project, to find TEST by name")):
        command.add_argument("--project", default="", help=project)
        command.add_argument("--api", help="API address host:port (default: CALLMETER_API or the profile)")
        command.set_defaults(handler=handler)
    add_trend_command(sub)


def handle_validate(args: argparse.Namespace) -> int:
    """The same checks everywhere (callmeter/common/spec_check.py); what the workers can do is the
    API's to say when a platform is configured, else callmeter's own SIP engine stands in."""
    import grpc

    from callmeter.cli.api_client import NoApiAddress, error, resolve_target, rpc_error_line
    from callmeter.common.errors import ConfigError
    from callmeter.common.spec_check import ENGINE, check_spec
    from callmeter.common.testspec import SpecError, load_spec_file

    try:
        spec = load_spec_file(args.file)
        target = resolve_target(args.api)
    except SpecError as problems:
        return refused(args.file, problems.violations)
    except NoApiAddress:
        target = None
    except ConfigError as config:  # a platform is configured but cannot be used
        return error(config.detail)
    if target is None:
        violations, against = check_spec(spec, ENGINE), "callmeter's own SIP engine; no platform configured"
    else:
        try:
            violations, against = _api_violations(target, args.project, spec), f"the workers of {target.address}"
        except grpc.RpcError as exc:
            if exc.code().name not in _NO_ANSWER:  # type: ignore[attr-defined]
                return error(rpc_error_line(exc))
            print(f"callmeter: warning: the API at {target.address} did not answer ({rpc_error_line(exc)}); "
                  "checking against callmeter's own SIP engine instead of the workers", file=sys.stderr)
            violations, against = check_spec(spec, ENGINE), "callmeter's own SIP engine; the API did not answer"
    if violations:
        return refused(args.file, violations)
    endpoints = sum(group.count for group in spec.groups)
    print(f"{args.file}: valid: test {spec.name!r}, {len(spec.groups)} groups, {endpoints} endpoints "
          f"(checked against {against})")
    return ExitCode.OK


# RPC codes on which `validate` checks here instead: the API is down, or too old to validate.
_NO_ANSWER = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "UNIMPLEMENTED"})


def _api_violations(target: ApiTarget, project_id: str, spec: tests_pb2.TestSpec) -> list[common_pb2.FieldViolation]:
    from callmeter.cli.api_client import CALL_TIMEOUT_S
    from callmeter.v1 import tests_pb2, tests_pb2_grpc

    with target.channel() as channel:
        reply = tests_pb2_grpc.TestServiceStub(channel).ValidateTest(
            tests_pb2.ValidateTestRequest(project_id=project_id, spec=spec), metadata=target.metadata(),
            timeout=CALL_TIMEOUT_S)
    return list(reply.violations)


def refused(file: Path, violations: Sequence[common_pb2.FieldViolation]) -> int:
    """Prints a line per problem of the test file; returns the exit code of a refused file."""
    from callmeter.common.testspec import problem_lines

    for line in problem_lines(file, list(violations)):
        print(line, file=sys.stderr)
    return ExitCode.ERROR


def load_spec_and_target(file: Path, api: str | None):  # type: ignore[no-untyped-def]
    """The parsed test file and the API to send it to, or None after printing why not."""
    from callmeter.cli.api_client import error, resolve_target
    from callmeter.common.errors import ConfigError
    from callmeter.common.testspec import SpecError, load_spec_file

    try:
        return load_spec_file(file), resolve_target(api)
    except SpecError as problems:
        refused(file, problems.violations)
    except ConfigError as config:
        error(config.detail)
    return None


def apply_test(channel: grpc.Channel, target: ApiTarget, project_id: str,
               spec: tests_pb2.TestSpec) -> tuple[tests_pb2.Test, str]:
    """Creates the test, or stores the spec as its new version when a test of that name exists (and
    differs). Returns the test and what happened: "created", "updated" or "unchanged"."""
    from callmeter.cli.api_client import CALL_TIMEOUT_S
    from callmeter.v1 import tests_pb2, tests_pb2_grpc

    stub = tests_pb2_grpc.TestServiceStub(channel)
    existing = _only([test for test in _every_test(stub, target, project_id, archived=True)
                      if test.spec.name == spec.name], spec.name)
    if existing is None:
        return stub.CreateTest(tests_pb2.CreateTestRequest(project_id=project_id, spec=spec),
                               metadata=target.metadata(), timeout=CALL_TIMEOUT_S), "created"
    if existing.spec == spec and not existing.archived:
        return existing, "unchanged"
    return stub.UpdateTest(tests_pb2.UpdateTestRequest(test_id=existing.id, spec=spec),
                           metadata=target.metadata(), timeout=CALL_TIMEOUT_S), "updated"


def _every_test(stub: tests_pb2_grpc.TestServiceStub, target: ApiTarget, project_id: str,
                archived: bool) -> list[tests_pb2.Test]:
    from callmeter.cli.api_client import every_page
    from callmeter.v1 import tests_pb2

    return list(every_page(stub.ListTests, tests_pb2.ListTestsRequest(project_id=project_id, include_archived=archived),
                           "tests", target))


def _only(tests: list[tests_pb2.Test], name: str) -> tests_pb2.Test | None:
    """The one test of the list, None for none; several (of one name in several projects) are an error."""
    from callmeter.common.errors import CallmeterError, ErrorCode

    if len(tests) > 1:
        raise CallmeterError(ErrorCode.INVALID_ARGUMENT, f"tests named {name!r} exist in several projects "
                             f"({', '.join(test.project_id for test in tests)}); pass --project")
    return tests[0] if tests else None


def find_test(stub: tests_pb2_grpc.TestServiceStub, target: ApiTarget, name_or_id: str,
              project_id: str) -> tests_pb2.Test:
    """The newest version of the test of this id, else of this name, among those the caller may see
    (archived too); a CallmeterError if there is none, or several of that name."""
    from callmeter.common.errors import CallmeterError, ErrorCode

    tests = _every_test(stub, target, project_id, archived=True)
    found = _only([test for test in tests if test.id == name_or_id]
                  or [test for test in tests if test.spec.name == name_or_id], name_or_id)
    if found is None:
        raise CallmeterError(ErrorCode.NOT_FOUND, f"no test {name_or_id!r} (by name or id)"
                             + (f" in project {project_id}" if project_id else ""))
    return found


def _with_api(api: str | None, action: Callable[[grpc.Channel, ApiTarget], int]) -> int:
    """``action`` on a channel to the API; an RPC that fails, or a test not found, is one error line and exit 2."""
    from callmeter.cli.access import with_api
    from callmeter.cli.api_client import error
    from callmeter.common.errors import CallmeterError

    def guarded(channel: grpc.Channel, target: ApiTarget) -> int:
        try:
            return action(channel, target)
        except CallmeterError as exc:
            return error(exc.detail)

    return with_api(api, guarded)


def handle_list(args: argparse.Namespace) -> int:
    """A row per test with its newest run's verdict (or state, while it has none): a ListRuns of one
    run per test."""
    import json

    from callmeter.cli.access import print_table, when
    from callmeter.cli.api_client import CALL_TIMEOUT_S
    from callmeter.cli.json_words import message_json
    from callmeter.v1 import common_pb2, runs_pb2, runs_pb2_grpc, tests_pb2_grpc

    def action(channel: grpc.Channel, target: ApiTarget) -> int:
        runs = runs_pb2_grpc.RunServiceStub(channel)
        listed = []
        for test in _every_test(tests_pb2_grpc.TestServiceStub(channel), target, args.project, archived=args.archived):
            newest = runs.ListRuns(runs_pb2.ListRunsRequest(test_id=test.id, page=common_pb2.PageRequest(page_size=1)),
                                   metadata=target.metadata(), timeout=CALL_TIMEOUT_S).runs
            listed.append((test, newest[0] if newest else None))
        if args.json:
            print(json.dumps([{**message_json(test), "last_run": message_json(run) if run else None}
                              for test, run in listed]))
            return ExitCode.OK
        print_table(["name", "version", "groups", "endpoints", "last run", "updated (UTC)", "id"], [
            [test.spec.name + (" (archived)" if test.archived else ""), str(test.version), str(len(test.spec.groups)),
             str(sum(group.count for group in test.spec.groups)), _last_run_text(run), when(test.updated_at), test.id]
            for test, run in listed])
        return ExitCode.OK

    return _with_api(args.api, action)


def _last_run_text(run: runs_pb2.Run | None) -> str:
    """"pass", "fail", "error" once judged; the state ("running") before; "-" for no run."""
    from callmeter.common.enum_words import word
    from callmeter.v1 import runs_pb2

    if run is None:
        return "-"
    return word(runs_pb2.Verdict, run.verdict) if run.verdict else word(runs_pb2.RunState, run.state)


def handle_show(args: argparse.Namespace) -> int:
    from callmeter.cli.access import print_json, when
    from callmeter.cli.api_client import CALL_TIMEOUT_S
    from callmeter.common.testspec import spec_to_yaml
    from callmeter.v1 import tests_pb2, tests_pb2_grpc

    def action(channel: grpc.Channel, target: ApiTarget) -> int:
        stub = tests_pb2_grpc.TestServiceStub(channel)
        newest = find_test(stub, target, args.test, args.project)
        test = newest if args.version in (0, newest.version) else stub.GetTest(
            tests_pb2.GetTestRequest(test_id=newest.id, version=args.version), metadata=target.metadata(),
            timeout=CALL_TIMEOUT_S)
        if args.json:
            print_json(test)
        elif args.yaml:
            print(spec_to_yaml(test.spec), end="")
        else:
            endpoints = sum(group.count for group in test.spec.groups)
            print(f"test {test.spec.name!r}: id {test.id}, project {test.project_id}")
            print(f"version {test.version} of {newest.version}; created {when(test.created_at)}, "
                  f"updated {when(test.updated_at)} (UTC){'; archived' if test.archived else ''}")
            print(f"{len(test.spec.groups)} groups, {endpoints} endpoints\n")
            print(spec_to_yaml(test.spec), end="")
        return ExitCode.OK

    return _with_api(args.api, action)


def handle_delete(args: argparse.Namespace) -> int:
    """Asks first on a terminal, unless --yes; without a terminal, --yes is needed."""
    from callmeter.cli.api_client import CALL_TIMEOUT_S, error
    from callmeter.v1 import tests_pb2, tests_pb2_grpc

    def action(channel: grpc.Channel, target: ApiTarget) -> int:
        stub = tests_pb2_grpc.TestServiceStub(channel)
        test = find_test(stub, target, args.test, args.project)
        if not args.yes:
            if not sys.stdin.isatty():
                return error(f"deleting test {test.spec.name!r} needs --yes (there is no terminal to ask)")
            print(f"delete test {test.spec.name!r} ({test.id})? [y/N] ", end="", file=sys.stderr, flush=True)
            if sys.stdin.readline().strip().lower() not in ("y", "yes"):
                return error(f"test {test.spec.name!r} not deleted")
        reply = stub.DeleteTest(tests_pb2.DeleteTestRequest(test_id=test.id), metadata=target.metadata(),
                                timeout=CALL_TIMEOUT_S)
        if reply.archived:
            print(f"test {test.spec.name!r} archived: it has runs, which are kept; `callmeter tests apply` "
                  "brings it back")
        else:
            print(f"test {test.spec.name!r} deleted: {test.id}")
        return ExitCode.OK

    return _with_api(args.api, action)


def handle_apply(args: argparse.Namespace) -> int:
    import grpc

    from callmeter.cli.api_client import error, rpc_error_line
    from callmeter.common.errors import CallmeterError

    loaded = load_spec_and_target(args.file, args.api)
    if loaded is None:
        return ExitCode.ERROR
    spec, target = loaded
    with target.channel() as channel:
        try:
            test, outcome = apply_test(channel, target, args.project, spec)
        except grpc.RpcError as exc:
            return error(rpc_error_line(exc))
        except CallmeterError as exc:
            return error(exc.detail)
    print(f"test {test.spec.name!r} {outcome}: {test.id} version {test.version}")
    return ExitCode.OK
