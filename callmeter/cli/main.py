"""Entry point of the `callmeter` console script.

Each service subcommand imports only that service, so a worker host never loads the platform's
dependencies. Service subcommands take their settings from CALLMETER_* variables (listed by
`callmeter SERVICE --help`); the driving subcommands (`up`, `demo`, `run`, `test`) take flags.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from callmeter import __version__
from callmeter.common.exit_codes import HELP, ExitCode

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
        default = "required" if field.is_required() else f"default {field.get_default(call_default_factory=False)!r}"
        lines.append(f"  {env_name(settings_cls, name):<34} {default}")
    return "\n".join(lines)


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
    from callmeter.cli import demo, run, runs, testcmd, up, workers

    for module in (up, demo, run, runs, testcmd, workers):
        module.add_parser(commands)
    return parser


def _service_handler(module_name: str) -> Callable[[argparse.Namespace], int]:
    def handler(_args: argparse.Namespace) -> int:
        return int(importlib.import_module(module_name).main())

    return handler


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # A service's --help lists its environment variables; that needs its settings imported.
    if len(argv) >= 2 and argv[0] in SERVICES and argv[1] in ("-h", "--help"):
        module_name, help_text = SERVICES[argv[0]]
        print(f"usage: callmeter {argv[0]}\n\n{help_text}\n\n{_settings_epilog(module_name)}")
        return ExitCode.OK
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
