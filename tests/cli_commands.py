"""CLI commands run in this process through `callmeter`'s own parser; stdout and stderr as pytest's
capsys caught them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from callmeter.cli.main import build_parser


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_cli(capsys: pytest.CaptureFixture[str], env: dict[str, str], argv: tuple[str, ...]) -> Result:
    capsys.readouterr()
    with environment(env):
        try:
            args = build_parser().parse_args(argv)
            code = int(args.handler(args))
        except SystemExit as stopped:  # argparse: usage and one error line
            code = int(stopped.code or 0)
    out, err = capsys.readouterr()
    return Result(code, out, err)


def runner(capsys: pytest.CaptureFixture[str], env: dict[str, str]) -> Callable[..., Result]:
    """``run(token, *argv)``: the command as the holder of ``token``, with ``env`` set."""
    return lambda token, *argv: run_cli(capsys, {**env, "CALLMETER_TOKEN": token}, argv)


def api_runner(capsys: pytest.CaptureFixture[str], api: str, token: str) -> Callable[..., Result]:
    """``run(*argv)``: the command against the API at ``api`` as the holder of ``token``."""
    env = {"CALLMETER_API": api, "CALLMETER_TOKEN": token, "CALLMETER_PROFILE": "/nonexistent/profile.json"}
    return lambda *argv: run_cli(capsys, env, argv)
