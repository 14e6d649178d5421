"""`callmeter test validate|apply FILE.yaml`: check a test file, or store it through the API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from callmeter.common.exit_codes import ExitCode

if TYPE_CHECKING:
    import grpc

    from callmeter.cli.api_client import ApiTarget
    from callmeter.v1 import common_pb2, tests_pb2


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("test", help="validate or store test files")
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
    from callmeter.cli.api_client import CALL_TIMEOUT_S, every_page
    from callmeter.common.errors import CallmeterError, ErrorCode
    from callmeter.v1 import tests_pb2, tests_pb2_grpc

    stub = tests_pb2_grpc.TestServiceStub(channel)
    named = [test for test in every_page(stub.ListTests, tests_pb2.ListTestsRequest(
        project_id=project_id, include_archived=True), "tests", target) if test.spec.name == spec.name]
    if len(named) > 1:
        raise CallmeterError(ErrorCode.INVALID_ARGUMENT, f"tests named {spec.name!r} exist in several projects "
                             f"({', '.join(t.project_id for t in named)}); pass --project")
    if not named:
        return stub.CreateTest(tests_pb2.CreateTestRequest(project_id=project_id, spec=spec),
                               metadata=target.metadata(), timeout=CALL_TIMEOUT_S), "created"
    if named[0].spec == spec and not named[0].archived:
        return named[0], "unchanged"
    return stub.UpdateTest(tests_pb2.UpdateTestRequest(test_id=named[0].id, spec=spec),
                           metadata=target.metadata(), timeout=CALL_TIMEOUT_S), "updated"


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
