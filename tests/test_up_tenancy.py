"""Tenancy from the CLI against a real `callmeter up` (one start for every check, it is slow): who
the owner is, an API token listed and revoked, a viewer refused, and a worker started elsewhere
from the lines `workers token create` prints, disconnected when its token is revoked."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.procs import eventually, http_get, start_service
from tests.cli_commands import Result, runner
from tests.test_up import start_up, wait_until_up


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, tuple[int, str]]]]:
    """A running `up` without its local worker: (data directory, its table of services)."""
    tmp = tmp_path_factory.mktemp("up")
    output = tmp / "up.out"
    process = start_up(tmp / "data", tmp / "profile.json", output, "--no-worker")
    try:
        yield tmp, wait_until_up(process, output)
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0, output.read_text()


@pytest.fixture
def cli(platform: tuple[Path, dict[str, tuple[int, str]]], capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """``cli(token, *argv)`` with the profile `up` wrote; token "" is the owner's, from the profile."""
    tmp, _ = platform
    return runner(capsys, {"CALLMETER_PROFILE": str(tmp / "profile.json"), "CALLMETER_API": "",
                           "CALLMETER_API_CA_FILE": ""})


def test_whoami_names_the_owner(cli: Callable[..., Result]) -> None:
    me = cli("", "whoami")
    assert me.code == 0, me.err
    assert me.out.startswith("user   owner (id ") and "role   owner on organization local" in me.out


def test_a_token_is_listed_until_revoked_and_a_viewer_mints_none(cli: Callable[..., Result]) -> None:
    [organization] = json.loads(cli("", "orgs", "list", "--json").out)
    created = cli("", "tokens", "create", "ci", "--role", "viewer", "--org", organization["id"], "--expires", "1d")
    assert created.code == 0, created.err
    viewer = created.out.strip()
    [token] = [t for t in json.loads(cli("", "tokens", "list", "--json").out) if t["name"] == "ci"]
    assert token["bindings"][0]["role"] == "viewer" and token["expires_at"] is not None

    refused = cli(viewer, "tokens", "create", "more", "--role", "viewer", "--org", organization["id"])
    assert (refused.code, refused.out) == (2, "")
    assert refused.err == "callmeter: error: permission_denied: granting roles needs the admin role\n"
    refused = cli(viewer, "workers", "token", "create", "w9")
    assert refused.code == 2 and "permission_denied" in refused.err

    assert cli("", "tokens", "revoke", token["id"]).code == 0
    assert "ci" not in {t["name"] for t in json.loads(cli("", "tokens", "list", "--json").out)}
    assert "unauthenticated" in cli(viewer, "whoami").err


def test_a_worker_started_from_the_printed_lines_is_disconnected_when_its_token_is_revoked(
        cli: Callable[..., Result], platform: tuple[Path, dict[str, tuple[int, str]]]) -> None:
    tmp, table = platform
    created = cli("", "workers", "token", "create", "w2", "--gateway", table["gateway"][1],
                  "--ca-file", str(tmp / "data" / "tls" / "ca.pem"))
    assert created.code == 0, created.err
    (tmp / "worker.env").write_text(created.out)
    env = dict(line.split("=", 1) for line in (tmp / "worker.env").read_text().splitlines())
    assert set(env) == {"CALLMETER_GATEWAY_ADDRESS", "CALLMETER_CA_FILE", "CALLMETER_WORKER_TOKEN"}
    worker = start_service("worker", tmp, {**env, "CALLMETER_HEALTH_PORT": "0", "CALLMETER_WORKER_NAME": "w2",
                                           "CALLMETER_MAX_ENGINES": "1", "CALLMETER_RECONNECT_INITIAL_S": "0.2",
                                           "CALLMETER_RECONNECT_MAX_S": "0.5"})
    try:
        readyz = f"http://127.0.0.1:{worker.ready['health_port']}/readyz"
        eventually(lambda: http_get(readyz)[0] == 200, timeout_s=30, message="w2 connected")
        workers = json.loads(cli("", "workers", "list", "--json").out)
        assert [w["state"] for w in workers if w["name"] == "w2"] == ["online"]

        [token] = [t for t in json.loads(cli("", "workers", "token", "list", "--json").out) if t["name"] == "w2"]
        assert cli("", "workers", "token", "revoke", token["id"]).code == 0
        # The gateway closes the stream within seconds; the worker's reconnects are refused from then on.
        eventually(lambda: refused(readyz), timeout_s=30, message="w2 disconnected and refused")
    finally:
        assert worker.terminate() == 0, worker.log()[-2000:]


def refused(readyz: str) -> bool:
    status, body = http_get(readyz)
    return status == 503 and "refused this worker's token" in json.loads(body)["last_error"]
