"""The owner token of `callmeter up`: a failed first start keeps it for the next one, a port in use
stops `up` before anything exists, and `--new-owner-token` replaces a lost one."""

from __future__ import annotations

import contextlib
import errno
import json
import re
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from callmeter.cli.platform import DEFAULT_PORTS
from callmeter.common.stores.database import create_database_engine
from callmeter.state.bootstrap import bootstrap_local
from callmeter.state.migrate import upgrade
from tests.procs import run_callmeter
from tests.test_up import start_up, wait_until_up

SHOWN_TOKEN = re.compile(r"^  (cma_\S+)$", re.MULTILINE)


@contextlib.contextmanager
def listening(port: int) -> Iterator[None]:
    """127.0.0.1:PORT held by a listener; one that another process holds already serves as well."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
        yield


@contextlib.contextmanager
def running_up(data_dir: Path, profile: Path, output: Path, *args: str) -> Iterator[None]:
    process = start_up(data_dir, profile, output, "--no-worker", *args)
    try:
        wait_until_up(process, output)
        yield
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(60)


def test_a_port_in_use_stops_up_before_it_creates_anything(tmp_path: Path) -> None:
    data_dir, profile = tmp_path / "data", tmp_path / "profile.json"
    port = DEFAULT_PORTS["nats"]  # checked first, so it is the one named whatever else holds a default port
    with listening(port):
        result = run_callmeter("up", "--data-dir", str(data_dir), "--no-worker",
                               env={"CALLMETER_PROFILE": str(profile)}, timeout_s=120)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert "nats-server" in line and f"port {port}" in line and "--auto-ports" in line, line
    assert not data_dir.exists() and not profile.exists()


@pytest.mark.parametrize(("fault", "named"), [
    ({"CALLMETER_SHUTDOWN_GRACE_S": "-1"}, "CALLMETER_SHUTDOWN_GRACE_S"),  # the services refuse a setting
    ({"CALLMETER_PROFILE": "{tmp}/a-file/profile.json"}, "CALLMETER_PROFILE"),  # the profile cannot be written
], ids=["service-refuses-a-setting", "profile-not-writable"])
def test_a_failed_first_up_leaves_the_owner_token_to_the_next(tmp_path: Path, fault: dict[str, str],
                                                               named: str) -> None:
    data_dir, profile, output = tmp_path / "data", tmp_path / "profile.json", tmp_path / "up.out"
    (tmp_path / "a-file").touch()
    env = {"CALLMETER_PROFILE": str(profile)} | {k: v.format(tmp=tmp_path) for k, v in fault.items()}
    failed = run_callmeter("up", "--data-dir", str(data_dir), "--auto-ports", "--no-worker", env=env, timeout_s=120)
    assert failed.returncode == 2, failed.stderr
    [line] = failed.stderr.splitlines()
    assert named in line, line
    assert not SHOWN_TOKEN.search(failed.stdout)

    with running_up(data_dir, profile, output):
        [token] = SHOWN_TOKEN.findall(output.read_text())
        assert json.loads(profile.read_text())["token"] == token
        listed = run_callmeter("workers", "list", env={"CALLMETER_PROFILE": str(profile)})
        assert listed.returncode == 0, listed.stderr
    assert not any(token in kept.read_text() for kept in (data_dir / "secrets").iterdir())  # shown, so no longer kept


def test_new_owner_token_replaces_a_lost_one(tmp_path: Path) -> None:
    data_dir, profile = tmp_path / "data", tmp_path / "profile.json"
    with running_up(data_dir, profile, tmp_path / "first.out"):
        lost = json.loads(profile.read_text())["token"]
    profile.unlink()

    output = tmp_path / "second.out"
    with running_up(data_dir, profile, output, "--new-owner-token"):
        [token] = SHOWN_TOKEN.findall(output.read_text())
        assert token != lost and json.loads(profile.read_text())["token"] == token
        listed = run_callmeter("workers", "list", env={"CALLMETER_PROFILE": str(profile)})
        assert listed.returncode == 0, listed.stderr
        refused = run_callmeter("workers", "list", env={"CALLMETER_PROFILE": str(profile), "CALLMETER_TOKEN": lost})
        assert refused.returncode == 2 and "unauthenticated" in refused.stderr, refused.stderr


def test_bootstrap_creates_no_owner_whose_token_cannot_be_kept(tmp_path: Path) -> None:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade(engine)

    def cannot_keep(secret: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    try:
        with pytest.raises(OSError):
            bootstrap_local(engine, existing_worker_token=None, keep_owner_secret=cannot_keep)
        kept: list[str] = []
        boot = bootstrap_local(engine, existing_worker_token=None, keep_owner_secret=kept.append)
        assert boot.owner_token_secret is not None and kept == [boot.owner_token_secret]
    finally:
        engine.dispose()
