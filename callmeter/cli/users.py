"""`callmeter users list|create`, `callmeter roles grant|revoke` and `callmeter whoami`: who may do
what, on which organization or project."""

from __future__ import annotations

import argparse

from callmeter.cli.access import (
    ROLES_HELP,
    Tenancy,
    add_api_argument,
    add_json_argument,
    add_scope_arguments,
    print_json,
    print_table,
    role_value,
    roles_text,
    scope_fields,
    scope_text,
    when,
    with_tenancy,
)
from callmeter.common.exit_codes import ExitCode


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    users = commands.add_parser("users", help="list users or create one")
    sub = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="the users holding a role on what you administer, with those roles")
    add_scope_arguments(listing, "only the roles on")
    listing.set_defaults(handler=list_users)
    creating = sub.add_parser("create", help="create a user (then grant it a role with `callmeter roles grant`)")
    creating.add_argument("name")
    creating.add_argument("--email", default="", help="unique among users when given")
    creating.set_defaults(handler=create_user)

    roles = commands.add_parser("roles", help="grant or revoke a user's role on an organization or a project")
    sub = roles.add_subparsers(dest="roles_command", metavar="ACTION", required=True)
    granting = sub.add_parser("grant", help="give a user a role (it replaces the one it held there)")
    granting.add_argument("user_id")
    granting.add_argument("role", type=role_value, help=ROLES_HELP)
    add_scope_arguments(granting, "on", required=True)
    granting.set_defaults(handler=grant_role)
    revoking = sub.add_parser("revoke", help="take a user's role away")
    revoking.add_argument("user_id")
    add_scope_arguments(revoking, "on", required=True)
    revoking.set_defaults(handler=revoke_role)

    whoami = commands.add_parser("whoami", help="the user and token you call the API as, and your roles")
    whoami.set_defaults(handler=who_am_i)
    for command in (listing, creating, granting, revoking, whoami):
        add_api_argument(command)
    for command in (listing, creating, granting, whoami):
        add_json_argument(command)


def list_users(args: argparse.Namespace) -> int:
    from callmeter.v1 import tenancy_pb2

    def action(api: Tenancy) -> int:
        members = api.every(api.stub.ListUsers, tenancy_pb2.ListUsersRequest(**scope_fields(args)), "users")
        if args.json:
            print_json(members)
            return ExitCode.OK
        names = api.scope_names()
        print_table(("name", "email", "roles", "id"), [(m.user.name, m.user.email or "-",
                                                        roles_text(m.bindings, names), m.user.id) for m in members])
        return ExitCode.OK

    return with_tenancy(args.api, action)


def create_user(args: argparse.Namespace) -> int:
    from callmeter.v1 import tenancy_pb2

    def action(api: Tenancy) -> int:
        user = api.call(api.stub.CreateUser, tenancy_pb2.CreateUserRequest(name=args.name, email=args.email))
        if args.json:
            print_json(user)
        else:
            print(f"created user {user.name!r} (id {user.id}); give it a role: "
                  f"callmeter roles grant {user.id} ROLE --project ID")
        return ExitCode.OK

    return with_tenancy(args.api, action)


def grant_role(args: argparse.Namespace) -> int:
    from callmeter.v1 import tenancy_pb2

    def action(api: Tenancy) -> int:
        binding = api.call(api.stub.GrantRole, tenancy_pb2.GrantRoleRequest(binding=tenancy_pb2.RoleBinding(
            user_id=args.user_id, role=args.role, **scope_fields(args))))
        if args.json:
            print_json(binding)
        else:
            print(f"user {binding.user_id} is now {roles_text([binding], api.scope_names())}")
        return ExitCode.OK

    return with_tenancy(args.api, action)


def revoke_role(args: argparse.Namespace) -> int:
    from callmeter.v1 import tenancy_pb2

    def action(api: Tenancy) -> int:
        binding = tenancy_pb2.RoleBinding(user_id=args.user_id, **scope_fields(args))
        api.call(api.stub.RevokeRole, tenancy_pb2.RevokeRoleRequest(binding=binding))
        print(f"user {binding.user_id} holds no role on {scope_text(binding, api.scope_names())} any more")
        return ExitCode.OK

    return with_tenancy(args.api, action)


def who_am_i(args: argparse.Namespace) -> int:
    from callmeter.v1 import tenancy_pb2

    def action(api: Tenancy) -> int:
        me = api.call(api.stub.WhoAmI, tenancy_pb2.WhoAmIRequest())
        if args.json:
            print_json(me)
            return ExitCode.OK
        names = api.scope_names()
        print(f"user   {me.user.name} (id {me.user.id}{f', {me.user.email}' if me.user.email else ''})")
        print(f"token  {me.token.name} (id {me.token.id}), expires {when(me.token.expires_at)}")
        for binding in me.bindings or [None]:
            print(f"role   {roles_text([binding], names) if binding else 'none'}")
        return ExitCode.OK

    return with_tenancy(args.api, action)
