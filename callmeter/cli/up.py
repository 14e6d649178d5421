"""`callmeter up`: the whole platform on this machine until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from callmeter.common.exit_codes import ExitCode


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "up", help="run the whole platform on this machine (embedded stores, a local worker)",
        description="Start NATS, the five services and a local worker on embedded defaults; Ctrl-C stops them.")
    add_platform_arguments(parser)
    parser.add_argument("--new-owner-token", action="store_true",
                        help="revoke the owner token `up` made for this data directory and show a new one "
                             "(when the first one was lost)")
    parser.set_defaults(handler=handle)


def add_platform_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=Path(".callmeter"),
                        help="where state, metrics, certificates and logs live (default: .callmeter)")
    parser.add_argument("--auto-ports", action="store_true",
                        help="bind every service to a free port instead of the fixed defaults")
    parser.add_argument("--no-worker", action="store_true", help="do not start the local worker")
    parser.add_argument("--gateway-listen", metavar="HOST:PORT", default=os.environ.get("CALLMETER_GATEWAY_LISTEN"),
                        help="where the gateway listens for workers (env CALLMETER_GATEWAY_LISTEN; default 127.0.0.1 "
                             "on its usual port; port 0: a free one)")
    parser.add_argument("--dev-cert-names", metavar="NAME,...", default=os.environ.get("CALLMETER_DEV_CERT_NAMES", ""),
                        help="DNS names and IP addresses the gateway's development certificate covers besides "
                             "loopback, comma-separated (env CALLMETER_DEV_CERT_NAMES); a change issues it again")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def print_status(platform) -> None:  # type: ignore[no-untyped-def]
    """The table of running processes: every one healthy, with its address, memory and Prometheus /metrics."""
    print(f"callmeter is up in {platform.started_in_s:.1f} s, all healthy; data in {platform.data_dir}")
    print(f"  {'service':<13}{'pid':>8}  {'address':<24}{'memory':>10}  prometheus")
    total = 0
    for name, pid, address, rss, metrics in platform.status_rows():
        total += rss
        print(f"  {name:<13}{pid:>8}  {address:<24}{rss / 2**20:>7.0f} MB  {metrics}".rstrip())
    print(f"  {'total':<13}{'':>8}  {'':<24}{total / 2**20:>7.0f} MB", flush=True)


def start_platform(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Starts the platform, prints its table, writes the CLI profile; on a ConfigError (it
    propagates) nothing is left running and an owner token not yet shown stays for the next start."""
    from callmeter.cli.platform import Platform

    platform = Platform(args.data_dir, auto_ports=args.auto_ports, with_worker=not args.no_worker,
                        log_level=args.log_level, new_owner_token=args.new_owner_token,
                        gateway_listen=args.gateway_listen, dev_cert_names=args.dev_cert_names)
    platform.start()
    try:
        print_status(platform)
        save_profile(platform)
    except BaseException:
        platform.stop()
        raise
    return platform


def save_profile(platform) -> None:  # type: ignore[no-untyped-def]
    """The platform's address in the CLI profile, with the owner token if one waits to be shown."""
    from callmeter.cli.profile import Profile, read_profile, write_profile
    from callmeter.common.errors import ConfigError

    if platform.owner_token:
        path = write_profile(Profile(api=platform.api_address, token=platform.owner_token))
        print(f"owner API token (shown once; saved in the CLI profile {path}):\n  {platform.owner_token}", flush=True)
        platform.owner_token_shown()
        return
    try:
        previous = read_profile()
    except ConfigError:  # a corrupt profile holds no token worth keeping
        previous = None
    if previous is not None:
        write_profile(Profile(api=platform.api_address, token=previous.token, ca_file=previous.ca_file))


def handle(args: argparse.Namespace) -> int:
    from callmeter.cli.platform import ChildFailing
    from callmeter.common.errors import ConfigError

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        platform = start_platform(args)
    except ConfigError as error:
        print(f"callmeter: error: {error.detail}", file=sys.stderr)
        return ExitCode.ERROR
    print("Ctrl-C stops everything.", flush=True)
    failing = None
    while not stop.wait(0.5):
        try:
            for line in platform.supervise():
                print(f"callmeter: {line}", file=sys.stderr, flush=True)
        except ChildFailing as error:
            failing = error
            break
    codes = platform.stop()
    if failing is not None:
        print(f"callmeter: error: {failing}; everything is stopped. See {platform.data_dir / 'logs'}",
              file=sys.stderr)
        return ExitCode.ERROR
    unclean = [name for name, code in codes.items() if code != 0]
    print("stopped" + (f" ({', '.join(unclean)} did not exit cleanly)" if unclean else " cleanly"))
    return ExitCode.OK if not unclean else ExitCode.ERROR
