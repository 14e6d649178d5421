"""Engine settings, read once from the environment the supervisor passes down.

A plain dataclass rather than the services' pydantic settings, and JSON log lines written
here rather than structlog: an engine is replicated once per few phones, and those two
libraries alone would add about half again to each engine's private memory (docs/engine.md).
The variables are the same ones the worker documents: SIP_IP, SDP_IP, EXTERNAL_IP and
CALLMETER_*.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class SettingError(Exception):
    """A variable that cannot be used; the message names it."""


@dataclass(frozen=True)
class EngineSettings:
    #: Address SIP and RTP bind to (SIP_IP); empty binds all interfaces.
    sip_ip: str = ""
    #: Address written into SDP for media (SDP_IP); empty uses the bound address.
    sdp_ip: str = ""
    #: Public address for Via/Contact behind NAT (EXTERNAL_IP).
    external_ip: str = ""
    log_level: str = "info"
    #: TLS groups: certificate and key this engine presents (needed to accept TLS calls).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    #: TLS groups: verify the peer's certificate against this CA; empty accepts any certificate.
    tls_ca_file: str = ""
    #: The longest one libHandleEvents call waits for a SIP event when no timed action is due
    #: sooner, in ms: how late a command from the supervisor can be read. Timed actions wake the
    #: loop when due whatever this is (docs/engine.md). Media does not depend on it: RTP runs on
    #: pjmedia's threads.
    poll_ms: int = 100

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> EngineSettings:
        level = env.get("CALLMETER_LOG_LEVEL", "info").lower()
        if level not in LEVELS:
            raise SettingError(f"CALLMETER_LOG_LEVEL: {level!r} is not one of {', '.join(LEVELS)}")
        poll = env.get("CALLMETER_ENGINE_POLL_MS", "100")
        if not poll.isdigit() or not 1 <= int(poll) <= 1000:
            raise SettingError(f"CALLMETER_ENGINE_POLL_MS: {poll!r} is not a whole number of ms from 1 to 1000")
        files = {name: env.get(f"CALLMETER_ENGINE_{name.upper()}", "") for name in ("tls_cert_file", "tls_key_file", "tls_ca_file")}
        for name, path in files.items():
            if path and not os.path.isfile(path):
                raise SettingError(f"CALLMETER_ENGINE_{name.upper()}: cannot read {path}")
        return cls(sip_ip=env.get("SIP_IP", ""), sdp_ip=env.get("SDP_IP", ""), external_ip=env.get("EXTERNAL_IP", ""),
                   log_level=level, poll_ms=int(poll), **files)

    def describe(self) -> dict[str, object]:
        return asdict(self)


class Log:
    """JSON lines on stderr, shaped like the services' structlog output (event, level, timestamp)."""

    def __init__(self, level: str = "info", **bound: object) -> None:
        self.threshold = LEVELS[level]
        self.bound = {"service": "engine", "pid": os.getpid(), **bound}

    def set_level(self, level: str) -> None:
        self.threshold = LEVELS[level]

    def _write(self, level: str, event: str, fields: dict[str, object]) -> None:
        if LEVELS[level] < self.threshold:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
        line = {"event": event, "level": level, "timestamp": stamp, **self.bound, **fields}
        sys.stderr.write(json.dumps(line, default=str) + "\n")
        sys.stderr.flush()

    def debug(self, event: str, **fields: object) -> None:
        self._write("debug", event, fields)

    def info(self, event: str, **fields: object) -> None:
        self._write("info", event, fields)

    def warning(self, event: str, **fields: object) -> None:
        self._write("warning", event, fields)

    def error(self, event: str, **fields: object) -> None:
        self._write("error", event, fields)
