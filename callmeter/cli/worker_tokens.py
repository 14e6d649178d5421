"""`callmeter workers token create|list|revoke`: the tokens self-hosted workers present to the gateway.

`create` prints the worker's environment on stdout, one KEY=VALUE line each, so that
`callmeter workers token create lab-1 > worker.env` is what `set -a; . ./worker.env` and
`docker run --env-file worker.env` read; every other line goes to stderr. The API does not know the
gateway's address as workers reach it (behind a load balancer, say), so it comes from --gateway.
"""

from __future__ import annotations

import argparse
import re

from callmeter.cli.access import (
    Tenancy,
    add_api_argument,
    add_json_argument,
    add_scope_arguments,
    note,
    print_json,
    print_table,
    scope_fields,
    scope_text,
    when,
    with_tenancy,
)
from callmeter.common.exit_codes import ExitCode

ADDRESS = re.compile(r"([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):([0-9]{1,5})")
# What a value in an env file may hold so that sh and docker read the same: no quoting needed.
ENV_VALUE = re.compile(r"[A-Za-z0-9_./:@+,=-]+")


def gateway_address(text: str) -> str:
    """An argparse type: HOST:PORT."""
    match = ADDRESS.fullmatch(text)
    if match is None or not 0 < int(match[2]) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return text


def env_path(text: str) -> str:
    """An argparse type: a path that can be written in an env file as it is."""
    if ENV_VALUE.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(f"{text!r}: only letters, digits and _./:@+,=- can be written in an env "
                                         "file that sh and docker read alike")
    return text


def add_parser(workers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """`token` under `callmeter workers`."""
    parser = workers.add_parser("token", help="create, list or revoke worker tokens")
    sub = parser.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    creating = sub.add_parser("create", help="create a worker token for a project (with neither --project nor "
                                             "--org: your only one); prints the worker's environment lines, the "
                                             "token shown this once, on stdout")
    creating.add_argument("name")
    add_scope_arguments(creating, "for the workers of")
    creating.add_argument("--gateway", metavar="HOST:PORT", type=gateway_address,
                          help="the gateway's address as the worker reaches it (CALLMETER_GATEWAY_ADDRESS)")
    creating.add_argument("--ca-file", metavar="PATH", type=env_path,
                          help="on the worker's host, the CA that signed the gateway's certificate, when it is not "
                               "one the system trusts (CALLMETER_CA_FILE)")
    creating.set_defaults(handler=create_token)
    listing = sub.add_parser("list", help="the worker tokens of what you administer")
    add_scope_arguments(listing, "only the tokens of")
    listing.add_argument("--all", action="store_true", help="revoked tokens too")
    add_json_argument(listing)
    listing.set_defaults(handler=list_tokens)
    revoking = sub.add_parser("revoke", help="revoke a worker token: its workers are disconnected within seconds")
    revoking.add_argument("token_id")
    revoking.set_defaults(handler=revoke_token)
    for command in (creating, listing, revoking):
        add_api_argument(command)


def create_token(args: argparse.Namespace) -> int:
    from callmeter.v1 import tenancy_pb2

    def action(api: Tenancy) -> int:
        created = api.call(api.stub.CreateWorkerToken,
                           tenancy_pb2.CreateWorkerTokenRequest(name=args.name, **scope_fields(args)))
        token = created.token
        note(f"created worker token {token.name!r} (id {token.id}) for the workers of "
             f"{scope_text(token, api.scope_names())}; the worker's environment follows on stdout, "
             "its token shown this once")
        if args.gateway is None:
            note("no --gateway given: set CALLMETER_GATEWAY_ADDRESS=HOST:PORT on the worker as well")
        lines = {"CALLMETER_GATEWAY_ADDRESS": args.gateway, "CALLMETER_CA_FILE": args.ca_file,
                 "CALLMETER_WORKER_TOKEN": created.secret}
        print("\n".join(f"{key}={value}" for key, value in lines.items() if value is not None))
        return ExitCode.OK

    return with_tenancy(args.api, action)


def list_tokens(args: argparse.Namespace) -> int:
    from callmeter.v1 import tenancy_pb2

    def action(api: Tenancy) -> int:
        tokens = api.every(api.stub.ListWorkerTokens, tenancy_pb2.ListWorkerTokensRequest(
            include_revoked=args.all, **scope_fields(args)), "tokens")
        if args.json:
            print_json(tokens)
            return ExitCode.OK
        names = api.scope_names()
        print_table(("name", "for the workers of", "created (UTC)", "state", "id"), [
            (t.name, scope_text(t, names), when(t.created_at, "-"), "revoked" if t.revoked else "active", t.id)
            for t in tokens])
        return ExitCode.OK

    return with_tenancy(args.api, action)


def revoke_token(args: argparse.Namespace) -> int:
    from callmeter.v1 import tenancy_pb2

    def action(api: Tenancy) -> int:
        token = api.call(api.stub.RevokeWorkerToken, tenancy_pb2.RevokeWorkerTokenRequest(token_id=args.token_id))
        print(f"revoked worker token {token.name!r} (id {token.id}): its workers are disconnected within seconds")
        return ExitCode.OK

    return with_tenancy(args.api, action)
