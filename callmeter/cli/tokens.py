"""`callmeter tokens create|list|revoke`: API tokens. A token has its user's roles: your own, or with
--role those of a user made for it (a service account, e.g. for CI). The secret is shown once, alone
on stdout (`TOKEN=$(callmeter tokens create ci --role runner --project ID)`); only its hash is kept."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from callmeter.cli.access import (
    ROLES_HELP,
    Tenancy,
    add_api_argument,
    add_json_argument,
    add_scope_arguments,
    expiry,
    note,
    print_json,
    print_table,
    role_value,
    roles_text,
    scope_fields,
    when,
    with_tenancy,
)
from callmeter.common.exit_codes import ExitCode

if TYPE_CHECKING:
    from callmeter.v1 import tenancy_pb2


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("tokens", help="create, list or revoke API tokens")
    sub = parser.add_subparsers(dest="tokens_command", metavar="ACTION", required=True)
    creating = sub.add_parser("create", help="create an API token; its secret is printed once, alone on stdout")
    creating.add_argument("name")
    whose = creating.add_mutually_exclusive_group()
    whose.add_argument("--role", type=role_value,
                       help=f"the token of a new user of the token's name holding this role ({ROLES_HELP}) on "
                            "--project or --org; without it, a token of your own")
    whose.add_argument("--user", metavar="ID", default="", help="a token of this user (default: you)")
    add_scope_arguments(creating, "with --role: the role on")
    creating.add_argument("--expires", metavar="IN", type=expiry,
                          help="it expires this long from now: 30d, 12h, 90m or 45s (default: never)")
    creating.set_defaults(handler=create_token)
    listing = sub.add_parser("list", help="your tokens and those of the users holding a role on what you administer")
    listing.add_argument("--all", action="store_true", help="revoked tokens too")
    add_json_argument(listing)
    listing.set_defaults(handler=list_tokens)
    revoking = sub.add_parser("revoke", help="revoke a token: every call with it is refused from now on")
    revoking.add_argument("token_id")
    revoking.set_defaults(handler=revoke_token)
    for command in (creating, listing, revoking):
        add_api_argument(command)


def create_token(args: argparse.Namespace) -> int:
    from callmeter.v1 import tenancy_pb2

    request = tenancy_pb2.CreateApiTokenRequest(name=args.name, user_id=args.user, role=args.role or 0,
                                                **scope_fields(args))
    if args.expires is not None:
        request.expires_at.FromDatetime(datetime.now(UTC) + args.expires)

    def action(api: Tenancy) -> int:
        created = api.call(api.stub.CreateApiToken, request)
        token = created.token
        note(f"created API token {token.name!r} (id {token.id}) of user {token.user_name!r}, "
             f"{roles_text(token.bindings, api.scope_names())}, expires {when(token.expires_at)}; "
             "the secret follows on stdout, shown this once")
        print(created.secret)
        return ExitCode.OK

    return with_tenancy(args.api, action)


def list_tokens(args: argparse.Namespace) -> int:
    from callmeter.v1 import tenancy_pb2

    def action(api: Tenancy) -> int:
        tokens = api.every(api.stub.ListApiTokens, tenancy_pb2.ListApiTokensRequest(include_revoked=args.all),
                           "tokens")
        if args.json:
            print_json(tokens)
            return ExitCode.OK
        names = api.scope_names()
        print_table(("name", "user", "roles", "created (UTC)", "expires", "last used", "state", "id"), [
            (t.name, t.user_name, roles_text(t.bindings, names), when(t.created_at, "-"), when(t.expires_at),
             when(t.last_used_at), state(t), t.id) for t in tokens])
        return ExitCode.OK

    return with_tenancy(args.api, action)


def state(token: tenancy_pb2.ApiToken) -> str:
    """"revoked", "expired" or "active"."""
    if token.revoked:
        return "revoked"
    expired = token.HasField("expires_at") and token.expires_at.ToDatetime(tzinfo=UTC) <= datetime.now(UTC)
    return "expired" if expired else "active"


def revoke_token(args: argparse.Namespace) -> int:
    from callmeter.v1 import tenancy_pb2

    def action(api: Tenancy) -> int:
        token = api.call(api.stub.RevokeApiToken, tenancy_pb2.RevokeApiTokenRequest(token_id=args.token_id))
        print(f"revoked API token {token.name!r} (id {token.id}) of user {token.user_name!r}")
        return ExitCode.OK

    return with_tenancy(args.api, action)
