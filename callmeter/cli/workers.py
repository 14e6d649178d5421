"""`callmeter workers list`: the workers the caller may see, with state and capacity."""

from __future__ import annotations

import argparse
import json
import sys

from callmeter.common.exit_codes import ExitCode


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("workers", help="list workers and their state")
    sub = parser.add_subparsers(dest="workers_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="list the workers you may see")
    listing.add_argument("--api", help="API address host:port (default: CALLMETER_API or the profile)")
    listing.add_argument("--project", default="", help="only workers of this project")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=handle_list)


def handle_list(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import json_format

    from callmeter.cli.api_client import resolve_target, rpc_error_line
    from callmeter.common.enum_words import word
    from callmeter.common.errors import ConfigError
    from callmeter.v1 import workers_pb2, workers_pb2_grpc

    try:
        target = resolve_target(args.api)
    except ConfigError as error:
        print(f"callmeter: error: {error.detail}", file=sys.stderr)
        return ExitCode.ERROR
    with target.channel() as channel:
        try:
            reply = workers_pb2_grpc.WorkerServiceStub(channel).ListWorkers(
                workers_pb2.ListWorkersRequest(project_id=args.project), metadata=target.metadata(), timeout=10)
        except grpc.RpcError as exc:
            print(f"callmeter: error: {rpc_error_line(exc)}", file=sys.stderr)
            return ExitCode.ERROR
    if args.json:
        print(json.dumps([json_format.MessageToDict(w, preserving_proto_field_name=True) for w in reply.workers]))
        return ExitCode.OK
    print(f"{'name':<20}{'state':<10}{'endpoints':>10}  {'version':<10}id")
    for worker in reply.workers:
        state = word(workers_pb2.WorkerState, worker.state)
        print(f"{worker.name:<20}{state:<10}{worker.running_endpoints:>10}  {worker.version:<10}{worker.id}")
    return ExitCode.OK
