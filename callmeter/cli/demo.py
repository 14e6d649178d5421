"""`callmeter demo`: the platform on embedded defaults in a fresh directory, checked end to end.

It starts NATS, the five services and a local worker, shows them healthy, asks the API (with the
bootstrap owner token) for the workers and requires the local worker ONLINE — which proves the
chain worker → TLS → gateway → orchestrator → database → API — then stops everything.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from callmeter.common.exit_codes import ExitCode


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("demo", help="start the platform from nothing, check it end to end, stop")
    parser.add_argument("--keep", type=Path, default=None,
                        help="use and keep this data directory instead of a temporary one")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from callmeter.cli.platform import Platform
    from callmeter.cli.up import print_status
    from callmeter.common.errors import ConfigError

    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="callmeter-demo-") as tmp:
        data_dir = args.keep or Path(tmp)
        platform = Platform(data_dir, auto_ports=True)
        try:
            platform.start()
        except ConfigError as error:
            print(f"callmeter: error: {error.detail}", file=sys.stderr)
            return ExitCode.ERROR
        try:
            print_status(platform)
            online = _local_worker_online(platform)
        finally:
            codes = platform.stop()
    unclean = [name for name, code in codes.items() if code != 0]
    print(f"local worker online through the API: {'yes' if online else 'NO'}")
    print(f"stopped {'cleanly' if not unclean else 'with errors in ' + ', '.join(unclean)}; "
          f"demo took {time.monotonic() - began:.1f} s")
    return ExitCode.OK if online and not unclean else ExitCode.ERROR


def _local_worker_online(platform, timeout_s: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    """Polls the API's ListWorkers with the owner token until the local worker is ONLINE."""
    import grpc

    from callmeter.common.channels import sync_channel
    from callmeter.v1 import workers_pb2, workers_pb2_grpc

    metadata = [("authorization", f"Bearer {platform.owner_token}")]
    deadline = time.monotonic() + timeout_s
    with sync_channel(platform.api_address) as channel:
        stub = workers_pb2_grpc.WorkerServiceStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.ListWorkers(workers_pb2.ListWorkersRequest(), metadata=metadata, timeout=5)
            except grpc.RpcError as exc:
                print(f"callmeter: error: ListWorkers: {exc.code().name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
                return False
            if any(w.name == "local" and w.state == workers_pb2.WORKER_STATE_ONLINE for w in reply.workers):
                return True
            time.sleep(0.5)
    return False
