"""What the tenancy commands share (orgs, projects, users, roles, tokens, worker tokens, whoami):
a call to the TenancyService with its one-line errors, the scope and role arguments, and how
roles, scopes and times are shown."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc
    from google.protobuf.message import Message
    from google.protobuf.timestamp_pb2 import Timestamp

    from callmeter.cli.api_client import ApiTarget
    from callmeter.v1 import tenancy_pb2

EXPIRY = re.compile(r"([0-9]{1,7})([smhd])")
EXPIRY_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
MAX_EXPIRY = timedelta(days=3650)
ROLES_HELP = "viewer, runner, editor, admin or owner, each allowed what the ones before it are"


def add_api_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api", help="API address host:port (default: CALLMETER_API or the profile)")


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def add_scope_arguments(parser: argparse.ArgumentParser, what: str, required: bool = False) -> None:
    scope = parser.add_mutually_exclusive_group(required=required)
    scope.add_argument("--project", metavar="ID", help=f"{what} this project")
    scope.add_argument("--org", metavar="ID", help=f"{what} this organization")


def scope_fields(args: argparse.Namespace) -> dict[str, str]:
    """The request's ``scope`` oneof from --project or --org; nothing for neither."""
    if args.project is not None:
        return {"project_id": args.project}
    if args.org is not None:
        return {"organization_id": args.org}
    return {}


def role_value(text: str) -> int:
    """An argparse type: a role's word ("runner") as its ``Role`` value."""
    from callmeter.common.enum_words import word
    from callmeter.v1 import tenancy_pb2

    roles = {word(tenancy_pb2.Role, value): value for value in tenancy_pb2.Role.values() if value}
    if text not in roles:
        raise argparse.ArgumentTypeError(f"{text!r} is not a role: {', '.join(roles)}")
    return roles[text]


def expiry(text: str) -> timedelta:
    """An argparse type: 30d, 12h, 90m or 45s from now, at most ten years."""
    match = EXPIRY.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time such as 30d, 12h, 90m or 45s")
    value = timedelta(**{EXPIRY_UNITS[match[2]]: int(match[1])})
    if not timedelta(0) < value <= MAX_EXPIRY:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most {MAX_EXPIRY.days}d (got {text})")
    return value


class Tenancy:
    """The TenancyService on one channel, each call with the caller's token."""

    def __init__(self, channel: grpc.Channel, target: ApiTarget) -> None:
        from callmeter.v1 import tenancy_pb2_grpc

        self.stub = tenancy_pb2_grpc.TenancyServiceStub(channel)
        self.target = target

    def call(self, rpc: Callable[..., Any], request: Message) -> Any:
        from callmeter.cli.api_client import CALL_TIMEOUT_S

        return rpc(request, metadata=self.target.metadata(), timeout=CALL_TIMEOUT_S)

    def every(self, rpc: Callable[..., Any], request: Message, items: str) -> list[Any]:
        from callmeter.cli.api_client import every_page

        return list(every_page(rpc, request, items, self.target))

    def scope_names(self) -> dict[str, str]:
        """The names of the organizations and projects the caller may see, by id."""
        from callmeter.v1 import tenancy_pb2

        names = {organization.id: organization.name for organization in self.every(
            self.stub.ListOrganizations, tenancy_pb2.ListOrganizationsRequest(), "organizations")}
        names.update({project.id: project.name for project in self.every(
            self.stub.ListProjects, tenancy_pb2.ListProjectsRequest(), "projects")})
        return names


def with_api(api: str | None, action: Callable[[grpc.Channel, ApiTarget], int]) -> int:
    """``action`` on a channel to the API; settings that cannot be used, or an RPC that fails, are
    one error line and exit 2."""
    import grpc

    from callmeter.cli.api_client import error, resolve_target, rpc_error_line
    from callmeter.common.errors import ConfigError

    try:
        target = resolve_target(api)
    except ConfigError as exc:
        return error(exc.detail)
    with target.channel() as channel:
        try:
            return action(channel, target)
        except grpc.RpcError as exc:
            return error(rpc_error_line(exc))


def with_tenancy(api: str | None, action: Callable[[Tenancy], int]) -> int:
    return with_api(api, lambda channel, target: action(Tenancy(channel, target)))


def note(text: str) -> None:
    """A line for the person, on stderr: stdout is kept for what a script reads."""
    print(f"callmeter: {text}", file=sys.stderr)


def print_json(data: Message | Iterable[Message]) -> None:
    import json

    from google.protobuf.message import Message

    from callmeter.cli.json_words import message_json

    print(json.dumps(message_json(data) if isinstance(data, Message) else [message_json(item) for item in data]))


def print_table(headings: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Columns as wide as their widest cell, two spaces apart."""
    lines = [list(headings), *(list(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headings))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())


def when(timestamp: Timestamp, unset: str = "never") -> str:
    """A time in UTC to the minute, or ``unset``."""
    if not timestamp.seconds and not timestamp.nanos:
        return unset
    return timestamp.ToDatetime().strftime("%Y-%m-%d %H:%M")


def scope_text(message: tenancy_pb2.RoleBinding | tenancy_pb2.WorkerToken, names: dict[str, str]) -> str:
    """"project voice", or "organization ID" for one the caller may not see by name."""
    scope = message.WhichOneof("scope")
    if scope is None:
        return "-"
    scope_id = getattr(message, scope)
    return f"{scope.removesuffix('_id')} {names.get(scope_id, scope_id)}"


def roles_text(bindings: Iterable[tenancy_pb2.RoleBinding], names: dict[str, str]) -> str:
    """"runner on project voice, viewer on organization acme", or "-"."""
    from callmeter.common.enum_words import word
    from callmeter.v1 import tenancy_pb2

    return ", ".join(f"{word(tenancy_pb2.Role, b.role)} on {scope_text(b, names)}" for b in bindings) or "-"
