"""`callmeter workers list`: the workers the caller may see, with state and capacity; and
`callmeter workers token …`, their tokens (callmeter/cli/worker_tokens.py)."""

from __future__ import annotations

import argparse

from callmeter.cli import worker_tokens
from callmeter.cli.access import add_api_argument, add_json_argument, print_json, with_api
from callmeter.common.exit_codes import ExitCode


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("workers", help="list workers and their state, manage worker tokens")
    sub = parser.add_subparsers(dest="workers_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="list the workers you may see")
    add_api_argument(listing)
    listing.add_argument("--project", default="", help="only workers of this project")
    add_json_argument(listing)
    listing.set_defaults(handler=handle_list)
    worker_tokens.add_parser(sub)


def handle_list(args: argparse.Namespace) -> int:
    from callmeter.cli.api_client import every_page
    from callmeter.common.enum_words import word
    from callmeter.v1 import workers_pb2, workers_pb2_grpc

    def action(channel, target) -> int:  # type: ignore[no-untyped-def]
        workers = list(every_page(workers_pb2_grpc.WorkerServiceStub(channel).ListWorkers,
                                  workers_pb2.ListWorkersRequest(project_id=args.project), "workers", target))
        if args.json:
            print_json(workers)
            return ExitCode.OK
        print(f"{'name':<20}{'state':<10}{'endpoints':>10}  {'version':<10}id")
        for worker in workers:
            state = word(workers_pb2.WorkerState, worker.state)
            print(f"{worker.name:<20}{state:<10}{worker.running_endpoints:>10}  {worker.version:<10}{worker.id}")
        return ExitCode.OK

    return with_api(args.api, action)
