"""`callmeter demo`: the whole platform from nothing, one real test, its result, and a clean stop.

It starts NATS, the five services and a local worker on embedded defaults in a fresh directory,
runs the self-call example (two groups of virtual phones calling each other with real RTP)
exactly as `callmeter run FILE --wait` would, prints the summary with MOS and the verdict, and
stops everything. The exit code is the run's: 0 pass, 1 fail, 2 error.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from callmeter.common.exit_codes import ExitCode

DEFAULT_EXAMPLE = Path("examples") / "selfcall.yaml"


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("demo", help="start the platform from nothing, run a real test, print the result",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path, default=DEFAULT_EXAMPLE, help=f"test file to run (default: {DEFAULT_EXAMPLE})")
    parser.add_argument("--keep", type=Path, default=None,
                        help="use and keep this data directory instead of a temporary one")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from callmeter.cli import run
    from callmeter.cli.platform import Platform
    from callmeter.cli.up import print_status
    from callmeter.common.errors import ConfigError

    try:
        found = args.file.is_file()
    except OSError:  # e.g. a name too long
        found = False
    if not found:
        print(f"callmeter: error: no test file {args.file} (run the demo from the repository's top folder)",
              file=sys.stderr)
        return ExitCode.ERROR
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="callmeter-demo-") as tmp:
        platform = Platform(args.keep or Path(tmp), auto_ports=True)
        try:
            platform.start()
        except ConfigError as error:
            print(f"callmeter: error: {error.detail}", file=sys.stderr)
            return ExitCode.ERROR
        try:
            print_status(platform)
            # The same path as `callmeter run FILE --wait`, with the platform's own address and token.
            os.environ["CALLMETER_API"] = platform.api_address
            os.environ["CALLMETER_TOKEN"] = platform.owner_token or ""
            code = run.handle(argparse.Namespace(file=args.file, api=None, project="", wait=True, json=False,
                                                 junit=None, timeout=300.0))
        finally:
            stopped = platform.stop()
    unclean = [name for name, exit_code in stopped.items() if exit_code != 0]
    print(f"stopped {'cleanly' if not unclean else 'with errors in ' + ', '.join(unclean)}; "
          f"demo took {time.monotonic() - began:.1f} s")
    return code if not unclean else ExitCode.ERROR
