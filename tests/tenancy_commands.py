"""The tenancy commands (orgs, projects, users, roles, whoami, tokens, workers) run in this process,
from a parser of their own modules, as `callmeter` runs them; stdout and stderr as pytest's capsys
caught them."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from callmeter.cli import orgs, tokens, users, workers


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callmeter")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (orgs, users, tokens, workers):
        module.add_parser(commands)
    return parser


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


def runner(capsys: pytest.CaptureFixture[str], env: dict[str, str]) -> Callable[..., Result]:
    """``run(token, *argv)``: the command as the holder of ``token``, with ``env`` set."""

    def run(token: str, *argv: str) -> Result:
        capsys.readouterr()
        with environment({**env, "CALLMETER_TOKEN": token}):
            try:
                args = parser().parse_args(argv)
                code = int(args.handler(args))
            except SystemExit as stopped:  # argparse: usage and one error line
                code = int(stopped.code or 0)
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run
