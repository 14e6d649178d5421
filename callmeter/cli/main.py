"""Entry point of the `callmeter` console script.

Each service subcommand imports only that service, so a worker host never loads the platform's
dependencies. Service subcommands take their settings from CALLMETER_* variables (listed by
`callmeter SERVICE --help`); the driving subcommands (`up`, `demo`, `run`, `test`) take flags.
`callmeter worker --local FILE.yaml` runs one test file on this machine without the platform.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from callmeter import __version__
from callmeter.common.exit_codes import HELP, ExitCode

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo

# subcommand → (module with main() and SETTINGS, one-line help)
SERVICES: dict[str, tuple[str, str]] = {
    "api": ("services.api.main", "run the public API service"),
    "orchestrator": ("services.orchestrator.main", "run the orchestrator (run lifecycle, placement, workers)"),
    "gateway": ("services.gateway.main", "run the gateway workers connect to over TLS"),
    "metrics": ("services.metrics.main", "run metrics-ingest (JetStream to ClickHouse, metric queries)"),
    "worker": ("services.worker.main", "run a worker: virtual phones, connected out to a gateway"),
}


def _exit_codes_epilog() -> str:
    return "exit codes:\n" + "\n".join(f"  {int(code):<4}{HELP[code]}" for code in ExitCode)


def _settings_epilog(module_name: str) -> str:
    """Lists the environment variables of a service's settings class."""
    module = importlib.import_module(module_name)
    settings_cls = module.SETTINGS
    from callmeter.common.settings import env_name

    lines = ["environment:"]
    for name, field in settings_cls.model_fields.items():
        lines.append(f"  {env_name(settings_cls, name):<34} {_default_text(field)}")
    if getattr(settings_cls, "HELP_LINES", ()):  # what the service reads besides its settings
        lines += ["", *settings_cls.HELP_LINES]
    return "\n".join(lines)


def _default_text(field: FieldInfo) -> str:
    """"required", "default 'info'", or for a default made when the service starts, an example of it."""
    if field.is_required():
        return "required"
    if field.default is None and field.description:  # unset: the service decides, as the description says
        return f"default {field.description}"
    if field.default_factory is None:
        return f"default {field.default!r}"
    if field.default_factory_takes_validated_data:
        return "default computed at start from the other settings"
    return f"default computed at start, e.g. {field.default_factory()!r}"  # type: ignore[call-arg]


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds (got {text})")
    return value


def _worker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--local", metavar="FILE.yaml", type=Path,
                        help="run this test file on this machine without the platform (no gateway, no token): "
                             "JSON lines on stdout (samples, errors, summary with the verdict of the file's gates; see "
                             "docs/engine.md); exit 0 if every gate held and no endpoint failed, 1 if a gate or an "
                             "endpoint failed, 2 if the run could not start")
    parser.add_argument("--duration", metavar="SECONDS", type=_positive_seconds,
                        help="with --local: stop the run this long after it starts (default: the file's timeout, "
                             "else when every phone has finished or on Ctrl-C)")
    parser.add_argument("--summary-only", action="store_true",
                        help="with --local: print errors and the summary, not the per-second samples")


# Service subcommands that take options besides their environment.
SERVICE_OPTIONS: dict[str, Callable[[argparse.ArgumentParser], None]] = {"worker": _worker_options}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callmeter",
        description="callmeter: SIP load testing and VoIP call quality.",
        epilog=_exit_codes_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"callmeter {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SERVICES.items():
        sub = commands.add_parser(name, help=help_text, description=help_text,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(handler=_service_handler(module_name))
        if name in SERVICE_OPTIONS:
            SERVICE_OPTIONS[name](sub)
    from callmeter.cli import bootstrap, demo, orgs, run, runs, testcmd, tokens, up, users, workers

    for module in (up, bootstrap, demo, run, runs, testcmd, workers, orgs, users, tokens):
        module.add_parser(commands)
    return parser


def _service_handler(module_name: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        if getattr(args, "local", None) is not None:  # `worker --local FILE`: standalone, no platform
            from services.worker import local

            return int(local.main(args.local, duration_s=args.duration, summary_only=args.summary_only))
        if getattr(args, "duration", None) is not None or getattr(args, "summary_only", False):
            print(f"callmeter {args.command}: error: --duration and --summary-only need --local", file=sys.stderr)
            return ExitCode.ERROR
        return int(importlib.import_module(module_name).main())

    return handler


def _service_help(name: str) -> str:
    """A service's help: its options, if any, and the environment variables of its settings."""
    module_name, help_text = SERVICES[name]
    parser = argparse.ArgumentParser(prog=f"callmeter {name}", description=help_text,
                                     epilog=_settings_epilog(module_name),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if name in SERVICE_OPTIONS:
        SERVICE_OPTIONS[name](parser)
    return parser.format_help()


def main(argv: Sequence[str] | None = None) -> int:
    """The exit code of a command; argparse's usage errors and --help exit from inside (SystemExit)."""
    if isinstance(sys.stdout, io.TextIOWrapper):  # a file name that is not UTF-8 is printed, as on stderr
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        try:
            return _run(list(sys.argv[1:] if argv is None else argv))
        finally:
            sys.stdout.flush()  # a closed pipe is found here, not in Python's own flush at exit
    except BrokenPipeError:  # the reader went away (`… | head`)
        # Python flushes stdout again at exit: point it at nothing so that this is the last word.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _last_word("callmeter: error: the output was closed before everything was written")
    except KeyboardInterrupt:
        return _last_word("\ncallmeter: interrupted", ExitCode.INTERRUPTED)


def _run(argv: list[str]) -> int:
    # A service's --help lists its environment variables; that needs its settings imported.
    if len(argv) >= 2 and argv[0] in SERVICES and argv[1] in ("-h", "--help"):
        print(_service_help(argv[0]), end="")
        return ExitCode.OK
    args = build_parser().parse_args(argv)
    for name, value in vars(args).items():  # ids, names, addresses: protobuf and gRPC take UTF-8 only
        if isinstance(value, str) and not _is_utf8(value):
            return _last_word(f"callmeter: error: argument {name}: {value!r} is not UTF-8 text")
    return int(args.handler(args))


def _is_utf8(text: str) -> bool:
    """False for the bytes of an argument that are not UTF-8 (Python decodes them as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _last_word(line: str, code: ExitCode = ExitCode.ERROR) -> int:
    try:
        print(line, file=sys.stderr)
    except OSError:  # stderr went with stdout (`… 2>&1 | head`)
        pass
    return code


if __name__ == "__main__":
    raise SystemExit(main())
