"""`callmeter test validate|apply FILE.yaml`: check a test file, or store it through the API."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from callmeter.common.exit_codes import ExitCode


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("test", help="validate or store test files")
    sub = parser.add_subparsers(dest="test_command", metavar="ACTION", required=True)
    validate = sub.add_parser("validate", help="check a test file here, storing nothing")
    validate.add_argument("file", type=Path)
    validate.set_defaults(handler=handle_validate)
    apply = sub.add_parser("apply", help="create the test, or a new version of it, through the API")
    apply.add_argument("file", type=Path)
    apply.add_argument("--api", help="API address host:port (default: CALLMETER_API or the profile)")
    apply.add_argument("--project", default="", help="project id (default: the token's only project)")
    apply.set_defaults(handler=handle_apply)


def handle_validate(args: argparse.Namespace) -> int:
    from callmeter.common.testspec import SpecError, load_spec_file

    try:
        spec = load_spec_file(args.file)
    except SpecError as error:
        for problem in error.violations:
            print(f"{args.file}: {problem.field}: {problem.description}", file=sys.stderr)
        return ExitCode.ERROR
    endpoints = sum(group.count for group in spec.groups)
    print(f"{args.file}: valid: test {spec.name!r}, {len(spec.groups)} groups, {endpoints} endpoints")
    return ExitCode.OK


def load_spec_and_target(file: Path, api: str | None):  # type: ignore[no-untyped-def]
    """The parsed test file and the API to send it to, or None after printing why not."""
    from callmeter.cli.api_client import resolve_target
    from callmeter.common.errors import ConfigError
    from callmeter.common.testspec import SpecError, load_spec_file

    try:
        return load_spec_file(file), resolve_target(api)
    except SpecError as error:
        for problem in error.violations:
            print(f"{file}: {problem.field}: {problem.description}", file=sys.stderr)
    except ConfigError as error:
        print(f"callmeter: error: {error.detail}", file=sys.stderr)
    return None


def handle_apply(args: argparse.Namespace) -> int:
    import grpc

    from callmeter.cli.api_client import rpc_error_line
    from callmeter.v1 import tests_pb2, tests_pb2_grpc

    loaded = load_spec_and_target(args.file, args.api)
    if loaded is None:
        return ExitCode.ERROR
    spec, target = loaded
    with target.channel() as channel:
        try:
            test = tests_pb2_grpc.TestServiceStub(channel).CreateTest(
                tests_pb2.CreateTestRequest(project_id=args.project, spec=spec), metadata=target.metadata(), timeout=30)
        except grpc.RpcError as exc:
            print(f"callmeter: error: {rpc_error_line(exc)}", file=sys.stderr)
            return ExitCode.ERROR
    print(f"test {test.spec.name!r} stored as {test.id} version {test.version}")
    return ExitCode.OK
