"""The CLI's connection to the API: address and token from flags, environment or the profile."""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from callmeter.cli.profile import profile_path, read_profile
from callmeter.common.channels import sync_channel
from callmeter.common.errors import ConfigError
from callmeter.common.exit_codes import ExitCode
from callmeter.common.grpc_server import read_pem

# Seconds a unary API call may take.
CALL_TIMEOUT_S = 30


@dataclass(frozen=True)
class ApiTarget:
    address: str
    token: str
    ca_file: Path | None

    def channel(self) -> grpc.Channel:
        return sync_channel(self.address, self.ca_file)

    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")]


class NoApiAddress(ConfigError):
    """No API is configured at all: no --api, CALLMETER_API or profile."""


def resolve_target(api: str | None = None) -> ApiTarget:
    """--api over CALLMETER_API over the profile; CALLMETER_TOKEN over the profile's token;
    CALLMETER_API_CA_FILE over the profile's CA. What cannot be used (an address or token that gRPC
    would refuse, a CA file that cannot be read) is a ConfigError naming where it came from, raised
    here, where the commands catch it, rather than when the channel opens."""
    profile = read_profile()
    address, address_from = _first(("--api", api), ("CALLMETER_API", os.environ.get("CALLMETER_API")),
                                   ("CALLMETER_PROFILE", profile and profile.api))
    token, token_from = _first(("CALLMETER_TOKEN", os.environ.get("CALLMETER_TOKEN")),
                               ("CALLMETER_PROFILE", profile and profile.token))
    ca, ca_from = _first(("CALLMETER_API_CA_FILE", os.environ.get("CALLMETER_API_CA_FILE")),
                         ("CALLMETER_PROFILE", profile and profile.ca_file))
    if not address:
        raise NoApiAddress("CALLMETER_API", f"no API address: pass --api, set CALLMETER_API, or run `callmeter up` "
                                            f"(which writes {profile_path()})")
    if not _printable_ascii(address) or " " in address:
        raise ConfigError(address_from, f"{address!r} is not an API address (host:port)")
    if not token:
        raise ConfigError("CALLMETER_TOKEN", "no API token: set CALLMETER_TOKEN or run `callmeter up`")
    if not _printable_ascii(token):  # a gRPC header value; the token itself is not shown
        raise ConfigError(token_from, "the API token has characters no token has (it is printable ASCII)")
    if ca:
        _check_ca(Path(ca), ca_from)
    return ApiTarget(address, token, Path(ca) if ca else None)


def _first(*candidates: tuple[str, str | None]) -> tuple[str | None, str]:
    """The first value that is set, and the name of where it came from."""
    return next(((value, source) for source, value in candidates if value), (None, ""))


def _printable_ascii(text: str) -> bool:
    return text.isascii() and text.isprintable()


def _check_ca(path: Path, setting: str) -> None:
    """A ConfigError unless ``path`` holds a CA certificate (gRPC would log lines of its own and
    fail every call)."""
    pem = read_pem(path, setting)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem.decode("ascii"))
    except (ssl.SSLError, ValueError):
        raise ConfigError(setting, f"{path} holds no certificate that can be read") from None


def rpc_error_line(exc: grpc.RpcError) -> str:
    code = exc.code()  # type: ignore[attr-defined]
    return f"{code.name.lower()}: {exc.details()}"  # type: ignore[attr-defined]


def error(text: str) -> int:
    """Prints one error line; returns the exit code of a command that failed before any result."""
    print(f"callmeter: error: {text}", file=sys.stderr)
    return ExitCode.ERROR


def every_page(rpc: Callable[..., Any], request: Any, items: str, target: ApiTarget) -> Iterator[Any]:
    """The items of a list RPC, page after page."""
    while True:
        reply = rpc(request, metadata=target.metadata(), timeout=CALL_TIMEOUT_S)
        yield from getattr(reply, items)
        if not reply.page.next_page_token:
            return
        request.page.page_token = reply.page.next_page_token
