"""Exit codes of every callmeter command, each with its help text. Only entry points exit."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    # `callmeter run`: the run finished and a quality gate did not hold.
    RUN_FAILED = 1
    # A bad setting, a bad argument, or an error before any result existed.
    ERROR = 2
    # Stopped by a second Ctrl-C / SIGTERM before draining finished.
    INTERRUPTED = 130


HELP: dict[ExitCode, str] = {
    ExitCode.OK: "success; for `run`, the verdict was PASS",
    ExitCode.RUN_FAILED: "the run's verdict was FAIL: at least one quality gate did not hold",
    ExitCode.ERROR: "an error: bad settings or arguments, an unreachable service, a run that could not finish",
    ExitCode.INTERRUPTED: "interrupted twice; stopped without draining",
}
