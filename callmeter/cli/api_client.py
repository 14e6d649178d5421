"""The CLI's connection to the API: address and token from flags, environment or the profile."""

from __future__ import annotations

import os
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


def resolve_target(api: str | None = None) -> ApiTarget:
    """--api over CALLMETER_API over the profile; CALLMETER_TOKEN over the profile's token."""
    profile = read_profile()
    address = api or os.environ.get("CALLMETER_API") or (profile.api if profile else None)
    token = os.environ.get("CALLMETER_TOKEN") or (profile.token if profile else None)
    ca = os.environ.get("CALLMETER_API_CA_FILE") or (profile.ca_file if profile else None)
    if not address:
        raise ConfigError("CALLMETER_API", f"no API address: pass --api, set CALLMETER_API, or run `callmeter up` "
                                           f"(which writes {profile_path()})")
    if not token:
        raise ConfigError("CALLMETER_TOKEN", "no API token: set CALLMETER_TOKEN or run `callmeter up`")
    return ApiTarget(address, token, Path(ca) if ca else None)


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
