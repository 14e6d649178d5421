"""`callmeter run FILE.yaml`: store the test, start a run, and (with --wait) follow it to a verdict."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from callmeter.common.exit_codes import ExitCode


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("run", help="run a test file through the API")
    parser.add_argument("file", type=Path)
    parser.add_argument("--api", help="API address host:port (default: CALLMETER_API or the profile)")
    parser.add_argument("--project", default="", help="project id (default: the token's only project)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    import grpc

    from callmeter.cli.api_client import rpc_error_line
    from callmeter.cli.testcmd import load_spec_and_target
    from callmeter.v1 import runs_pb2, runs_pb2_grpc, tests_pb2, tests_pb2_grpc

    loaded = load_spec_and_target(args.file, args.api)
    if loaded is None:
        return ExitCode.ERROR
    spec, target = loaded
    with target.channel() as channel:
        try:
            test = tests_pb2_grpc.TestServiceStub(channel).CreateTest(
                tests_pb2.CreateTestRequest(project_id=args.project, spec=spec), metadata=target.metadata(), timeout=30)
            run = runs_pb2_grpc.RunServiceStub(channel).StartRun(
                runs_pb2.StartRunRequest(test_id=test.id, test_version=test.version),
                metadata=target.metadata(), timeout=30)
        except grpc.RpcError as exc:
            print(f"callmeter: error: {rpc_error_line(exc)}", file=sys.stderr)
            return ExitCode.ERROR
    print(f"run {run.id} started")
    return ExitCode.OK
