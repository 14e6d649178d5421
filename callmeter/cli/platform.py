"""The whole platform on one machine (`callmeter up`): embedded stores, five service processes.

Layout of DATA_DIR (reused by the next `up`):
  tls/         development CA, the gateway's certificate for workers, and each service's
               certificate for the internal links (mutual TLS, callmeter/common/tls.py)
  state.db     SQLite configuration and state
  metrics/     chDB metrics store (owned by metrics-ingest)
  nats/        the embedded nats-server's JetStream store and log
  secrets/     the local worker's token; the owner's until `up` has shown it (0600)
  logs/        one log file per service
  run/         ready files the services write once serving

Start order follows dependencies: nats → metrics → orchestrator → gateway → api → worker.
Stop order is the reverse, each child drained with SIGTERM.
A child that dies while `up` runs is restarted with backoff (`Backoff`, `Platform.supervise`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from callmeter.common.channels import check_health
from callmeter.common.children import orphan_proof
from callmeter.common.errors import ConfigError
from callmeter.common.stores.database import create_database_engine
from callmeter.common.stores.nats import EmbeddedNats, free_port
from callmeter.common.tls import ensure_dev_pki

# Fixed ports of a default `up`, so that the CLI profile stays valid across restarts.
DEFAULT_PORTS = {
    "nats": 4250,
    "metrics": 50054,
    "orchestrator": 50052,
    "gateway": 50053,
    "api": 50051,
    "worker": 3030,
}
PROMETHEUS_PORTS = {"metrics": 9104, "orchestrator": 9102, "gateway": 9103, "api": 9101}
SERVICE_ORDER = ("metrics", "orchestrator", "gateway", "api", "worker")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


@dataclass
class Backoff:
    """Restart delays of one child: ``first_s`` doubling to ``max_s``; a child up for ``stable_s``
    starts again from ``first_s``; the ``give_up_after``-th quick failure in a row gives up."""

    first_s: float = 1.0
    max_s: float = 30.0
    stable_s: float = 60.0
    give_up_after: int = 5
    failures: int = 0  # quick failures in a row

    def next_delay(self, uptime_s: float) -> float | None:
        """Delay before restarting a child that ran ``uptime_s``; None to give up."""
        if uptime_s >= self.stable_s:
            self.failures = 0
        self.failures += 1
        if self.failures >= self.give_up_after:
            return None
        return min(self.first_s * 2 ** (self.failures - 1), self.max_s)


class ChildFailing(Exception):
    """A child died too often in a row; its one-line reason is the message."""


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    address: str
    log_file: Path
    ready_file: Path
    env: dict[str, str]  # as given to _spawn, to restart it alike
    started_at: float  # time.monotonic() of the spawn
    backoff: Backoff
    restart_at: float | None = None  # monotonic time of a scheduled restart


def last_log_line(log_file: Path) -> str:
    try:
        lines = log_file.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Platform:
    def __init__(self, data_dir: Path, auto_ports: bool = False, with_worker: bool = True,
                 log_level: str = "info", database_url: str | None = None, new_owner_token: bool = False,
                 gateway_listen: str | None = None, dev_cert_names: str = "") -> None:
        self.data_dir = data_dir.resolve()
        #: (host, port) the gateway binds; None: 127.0.0.1 on its usual port.
        self.gateway_listen = parse_listen(gateway_listen) if gateway_listen else None
        #: Names and addresses the gateway's development certificate covers besides loopback.
        self.dev_cert_names = tuple(name.strip() for name in dev_cert_names.split(",") if name.strip())
        self._database_url = database_url  # the embedded SQLite file when None
        self.auto_ports = auto_ports
        self.with_worker = with_worker
        self.log_level = log_level
        self.nats: EmbeddedNats | None = None
        self.children: dict[str, Child] = {}
        self._new_owner_token = new_owner_token  # revoke the owner's bootstrap token, make a new one
        #: The owner's secret until it has been shown: made now, or kept from a start that failed.
        self.owner_token: str | None = None
        self.started_in_s = 0.0
        self._nats_backoff = Backoff()
        self._nats_started_at = 0.0
        self._nats_restart_at: float | None = None

    # -- paths and ports --------------------------------------------------------------
    def _port(self, name: str) -> int:
        """Fixed by default; with auto ports a free one chosen now, so that every address is
        known before any service starts and they can all start at once."""
        return free_port() if self.auto_ports else DEFAULT_PORTS[name]

    def _prometheus_port(self, name: str) -> int:
        return 0 if self.auto_ports else PROMETHEUS_PORTS[name]

    def _check_ports_free(self) -> None:
        """A fixed port in use stops the start before anything is created."""
        ports = [("nats-server", DEFAULT_PORTS["nats"])]
        ports += [(name, DEFAULT_PORTS[name]) for name in SERVICE_ORDER
                  if (name != "worker" or self.with_worker) and (name != "gateway" or self.gateway_listen is None)]
        ports += [(f"{name} /metrics", port) for name, port in PROMETHEUS_PORTS.items()]
        for what, port in ports:
            check_port_free(what, "127.0.0.1", port)

    def _gateway_bind(self) -> tuple[str, int]:
        """Where the gateway listens: --gateway-listen (a free port for port 0) or 127.0.0.1."""
        if self.gateway_listen is None:
            return "127.0.0.1", self._port("gateway")
        host, port = self.gateway_listen
        if port != 0:
            check_port_free("--gateway-listen", host, port)
        return host, port or free_port_on(host)

    @property
    def database_url(self) -> str:
        return self._database_url or f"sqlite:///{self.data_dir / 'state.db'}"

    @property
    def api_address(self) -> str:
        return self.children["api"].address

    # -- start ------------------------------------------------------------------------
    def start(self) -> None:
        began = time.monotonic()
        if not self.auto_ports:
            self._check_ports_free()
        for sub in ("logs", "run", "secrets"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        gateway_host, gateway_port = self._gateway_bind()
        # The local worker and `up` dial a wildcard bind on loopback; any other address as given.
        dial_host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(gateway_host, gateway_host)
        pki = ensure_dev_pki(self.data_dir / "tls", gateway_names=(*self.dev_cert_names, dial_host))
        worker_token = self._bootstrap_state()
        self.nats = EmbeddedNats(self.data_dir / "nats", port=self._port("nats"))
        self.nats.start()
        self._nats_started_at = time.monotonic()
        try:
            address = {name: f"127.0.0.1:{self._port(name)}" for name in ("metrics", "orchestrator", "api")}
            address["gateway"] = join_host_port(dial_host, gateway_port)
            common = {"CALLMETER_NATS_URL": self.nats.url, "CALLMETER_LOG_LEVEL": self.log_level,
                      "CALLMETER_LOG_FORMAT": "json"}
            envs = {
                "metrics": {"CALLMETER_CLICKHOUSE_URL": f"chdb://{self.data_dir / 'metrics'}"},
                "orchestrator": {"CALLMETER_DATABASE_URL": self.database_url,
                                 "CALLMETER_METRICS_ADDRESS": address["metrics"]},
                "gateway": {"CALLMETER_GRPC_HOST": gateway_host,
                            "CALLMETER_TLS_CERT_FILE": str(pki.server_cert), "CALLMETER_TLS_KEY_FILE": str(pki.server_key),
                            "CALLMETER_ORCHESTRATOR_ADDRESS": address["orchestrator"]},
                "api": {"CALLMETER_DATABASE_URL": self.database_url, "CALLMETER_ORCHESTRATOR_ADDRESS": address["orchestrator"],
                        "CALLMETER_METRICS_ADDRESS": address["metrics"]},
            }
            # Every address is known, so the services start together; each is then waited for.
            for name, env in envs.items():
                self._spawn(name, {**common, **env, **pki.internal(name).env(),
                                   "CALLMETER_GRPC_PORT": address[name].rsplit(":", 1)[1],
                                   "CALLMETER_PROMETHEUS_PORT": str(self._prometheus_port(name))}, address[name])
            self._wait(self.children["gateway"], lambda: check_health(address["gateway"], pki.ca_cert))
            if self.with_worker:
                self._spawn_worker(address["gateway"], pki.ca_cert, worker_token, common)
            # The internal services answer only a certificate of the CA: `up` holds them all, and
            # asks as the api does.
            for name in ("metrics", "orchestrator"):
                self._wait(self.children[name], lambda name=name: check_health(address[name],
                                                                               identity=pki.internal("api")))
            self._wait(self.children["api"], lambda: check_health(address["api"]))
            if self.with_worker:
                worker = self.children["worker"]
                self._wait(worker, lambda: worker_ready(worker.address), "not connected to the gateway")
        except BaseException:
            self.stop()
            raise
        self.started_in_s = time.monotonic() - began

    def _bootstrap_state(self) -> str:
        """Migrates the state store and creates the local owner and worker tokens on first start.

        A new owner secret is kept in secrets/ in the same transaction, so that a start failing
        later leaves it to the next one; `owner_token_shown` forgets it.
        """
        from callmeter.state.bootstrap import bootstrap_local
        from callmeter.state.migrate import upgrade

        engine = create_database_engine(self.database_url)
        try:
            upgrade(engine)
            token_file = self.data_dir / "secrets" / "worker-token"
            result = bootstrap_local(engine, existing_worker_token=token_file.read_text().strip()
                                     if token_file.exists() else None, new_owner_token=self._new_owner_token,
                                     keep_owner_secret=lambda secret: keep_secret(self._owner_token_file, secret))
        finally:
            engine.dispose()
        if result.worker_token_secret is not None:
            keep_secret(token_file, result.worker_token_secret)
        if self._owner_token_file.exists():
            self.owner_token = self._owner_token_file.read_text().strip()
        return token_file.read_text().strip()

    @property
    def _owner_token_file(self) -> Path:
        return self.data_dir / "secrets" / "owner-token"

    def owner_token_shown(self) -> None:
        """The owner's secret has been shown and saved in the CLI profile: it is no longer kept."""
        self._owner_token_file.unlink(missing_ok=True)
        self.owner_token = None

    def _spawn(self, name: str, env: dict[str, str], address: str, backoff: Backoff | None = None) -> Child:
        ready_file = self.data_dir / "run" / f"{name}.ready"
        ready_file.unlink(missing_ok=True)
        log_file = self.data_dir / "logs" / f"{name}.log"
        full_env = {**os.environ, **env, "CALLMETER_READY_FILE": str(ready_file)}
        with log_file.open("ab") as log:
            # Run from the data directory: whatever a child writes relative to its working directory
            # (chDB caches protobuf schemas in ./__cache__) stays there, not in the user's directory.
            process = subprocess.Popen(orphan_proof([sys.executable, "-m", "callmeter.cli.main", name]), env=full_env,
                                       cwd=self.data_dir / "run", stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       process_group=0)
        child = self.children[name] = Child(name, process, address, log_file, ready_file, env, time.monotonic(),
                                            backoff or Backoff())
        return child

    def _spawn_worker(self, gateway_address: str, ca_file: Path, token: str, common: dict[str, str]) -> None:
        health_port = self._port("worker")
        self._spawn("worker", {
            **common, "CALLMETER_GATEWAY_ADDRESS": gateway_address, "CALLMETER_CA_FILE": str(ca_file),
            "CALLMETER_WORKER_TOKEN": token, "CALLMETER_WORKER_NAME": "local",
            "CALLMETER_HEALTH_PORT": str(health_port),
            # The local worker's SIP and RTP stay on loopback (pjsua would write the host's
            # default address into SDP otherwise).
            "SIP_IP": "127.0.0.1",
            # Engines present the development certificate on TLS transports (TLS test groups).
            "CALLMETER_ENGINE_TLS_CERT_FILE": str(self.data_dir / "tls" / "server.pem"),
            "CALLMETER_ENGINE_TLS_KEY_FILE": str(self.data_dir / "tls" / "server-key.pem"),
        }, f"127.0.0.1:{health_port}")

    def _wait(self, child: Child, ready: Callable[[], bool], what: str = "not healthy") -> None:
        """Until the child has written its ready file and ``ready()`` holds; ConfigError if it dies."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (child.ready_file.exists() and ready()):
            self._check_alive(child)
            if time.monotonic() > deadline:
                raise ConfigError(child.name, f"{what} within {START_TIMEOUT_S:.0f} s; see {child.log_file}")
            time.sleep(0.05)

    @staticmethod
    def _check_alive(child: Child) -> None:
        if child.process.poll() is not None:
            # A child's one-line error already starts with "callmeter: error: ".
            reason = last_log_line(child.log_file).removeprefix("callmeter: error: ")
            raise ConfigError(child.name, f"exited with code {child.process.returncode}: {reason} "
                                          f"(log: {child.log_file})")

    # -- run and stop -------------------------------------------------------------------
    def status_rows(self) -> list[tuple[str, int, str, int, str]]:
        """(name, pid, address, resident bytes, Prometheus /metrics URL or "") of every child,
        nats-server included."""
        rows = []
        if self.nats is not None and self.nats.process is not None:
            rows.append(("nats-server", self.nats.process.pid, self.nats.url, rss_bytes(self.nats.process.pid), ""))
        for child in self.children.values():
            rows.append((child.name, child.process.pid, child.address, rss_bytes(child.process.pid),
                         metrics_url(child)))
        return rows

    def supervise(self) -> list[str]:
        """One look at the children: a dead one is scheduled for a restart after its backoff, one
        whose time has come is started again. Returns one line per restart scheduled (the child,
        its exit code, the last line of its log); raises ChildFailing when a child gives up."""
        now = time.monotonic()
        lines = []
        if self.nats is not None and self.nats.process is not None and self.nats.process.poll() is not None:
            if (line := self._restart_nats(now)) is not None:
                lines.append(line)
        for child in list(self.children.values()):
            if child.restart_at is None and child.process.poll() is not None:
                delay = child.backoff.next_delay(now - child.started_at)
                line = (f"{child.name} exited with code {child.process.returncode} "
                        f"(log: {child.log_file}: {last_log_line(child.log_file)})")
                if delay is None:
                    raise ChildFailing(f"{line}; {child.backoff.failures} quick failures in a row, giving up")
                child.restart_at = now + delay
                lines.append(f"{line}; restarting in {delay:.0f} s")
            elif child.restart_at is not None and now >= child.restart_at:
                self._spawn(child.name, child.env, child.address, child.backoff)
        return lines

    def _restart_nats(self, now: float) -> str | None:
        """As for a child; the services reconnect to the new nats-server on the same port."""
        assert self.nats is not None and self.nats.process is not None
        if self._nats_restart_at is None:
            line = (f"nats-server exited with code {self.nats.process.returncode} "
                    f"(log: {self.nats.log_file}: {last_log_line(self.nats.log_file)})")
            delay = self._nats_backoff.next_delay(now - self._nats_started_at)
            if delay is None:
                raise ChildFailing(f"{line}; {self._nats_backoff.failures} quick failures in a row, giving up")
            self._nats_restart_at = now + delay
            return f"{line}; restarting in {delay:.0f} s"
        if now >= self._nats_restart_at:
            self._nats_restart_at, self._nats_started_at = None, now
            try:
                self.nats.start()
            except ConfigError:
                pass  # it exited again: the next look counts it
        return None

    def stop(self) -> dict[str, int | None]:
        """Stops the children in reverse order; returns each one's exit code (None if killed)."""
        codes: dict[str, int | None] = {}
        for name in reversed(list(self.children)):
            process = self.children[name].process
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                    codes[name] = None
                    continue
            codes[name] = process.returncode
        self.children.clear()
        if self.nats is not None:
            self.nats.stop()
        return codes


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``) of --gateway-listen; a ConfigError naming it otherwise."""
    host, _, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(host) if ":" in host else None
        number = int(port)
        if not host or not 0 <= number <= 65535:
            raise ValueError
    except ValueError:
        raise ConfigError("--gateway-listen", f"expected HOST:PORT (port 0 to 65535), "
                                              f"got {value!r}") from None
    return host, number


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_port_free(what: str, host: str, port: int) -> None:
    """A port in use (or an address not of this host) stops the start before anything is created."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        # As the services bind: connections of an earlier `up` in TIME_WAIT are no conflict.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(what, f"cannot listen on port {port} of {host} ({exc.strerror}); "
                                    "stop what holds it, or pass --auto-ports") from None


def free_port_on(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def keep_secret(path: Path, secret: str) -> None:
    """Writes the secret readable by this user only, atomically; a failure is a ConfigError."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.touch(mode=0o600)
        tmp.write_text(secret + "\n")
        tmp.replace(path)
    except OSError as exc:
        raise ConfigError("", f"cannot keep a token in {path} ({exc.filename}: {exc.strerror})") from None


def metrics_url(child: Child) -> str:
    """Where Prometheus scrapes a started child: the worker on its health port, a service on the
    port its ready file gives (a free one with --auto-ports)."""
    if child.name == "worker":
        return f"http://{child.address}/metrics"
    port = json.loads(child.ready_file.read_text())["prometheus_port"]
    return f"http://127.0.0.1:{port}/metrics"


def worker_ready(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/readyz", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False
