"""`callmeter orgs list|create` and `callmeter projects list|create`: where tests, runs, workers and
roles belong."""

from __future__ import annotations

import argparse

from callmeter.cli.access import (
    Tenancy,
    add_api_argument,
    add_json_argument,
    print_json,
    print_table,
    when,
    with_tenancy,
)
from callmeter.common.exit_codes import ExitCode


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    orgs = commands.add_parser("orgs", help="list organizations or create one")
    sub = orgs.add_subparsers(dest="orgs_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="the organizations you hold a role in")
    listing.set_defaults(handler=list_organizations)
    creating = sub.add_parser("create", help="create an organization; you become its owner")
    creating.add_argument("name")
    creating.set_defaults(handler=create_organization)
    for command in (listing, creating):
        add_api_argument(command)
        add_json_argument(command)

    projects = commands.add_parser("projects", help="list projects or create one")
    sub = projects.add_subparsers(dest="projects_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="the projects you may see")
    listing.add_argument("--org", metavar="ID", default="", help="only the projects of this organization")
    listing.set_defaults(handler=list_projects)
    creating = sub.add_parser("create", help="create a project (needs the admin role on its organization)")
    creating.add_argument("name")
    creating.add_argument("--org", metavar="ID", default="",
                          help="in this organization (default: the only one you hold a role in)")
    creating.set_defaults(handler=create_project)
    for command in (listing, creating):
        add_api_argument(command)
        add_json_argument(command)


def list_organizations(args: argparse.Namespace) -> int:
    from callmeter.v1 import tenancy_pb2

    def action(api: Tenancy) -> int:
        organizations = api.every(api.stub.ListOrganizations, tenancy_pb2.ListOrganizationsRequest(), "organizations")
        if args.json:
            print_json(organizations)
        else:
            print_table(("name", "created (UTC)", "id"),
                        [(o.name, when(o.created_at, "-"), o.id) for o in organizations])
        return ExitCode.OK

    return with_tenancy(args.api, action)


def create_organization(args: argparse.Namespace) -> int:
    from callmeter.v1 import tenancy_pb2

    def action(api: Tenancy) -> int:
        organization = api.call(api.stub.CreateOrganization, tenancy_pb2.CreateOrganizationRequest(name=args.name))
        if args.json:
            print_json(organization)
        else:
            print(f"created organization {organization.name!r} (id {organization.id}); you are its owner")
        return ExitCode.OK

    return with_tenancy(args.api, action)


def list_projects(args: argparse.Namespace) -> int:
    from callmeter.v1 import tenancy_pb2

    def action(api: Tenancy) -> int:
        projects = api.every(api.stub.ListProjects, tenancy_pb2.ListProjectsRequest(organization_id=args.org),
                             "projects")
        if args.json:
            print_json(projects)
            return ExitCode.OK
        names = api.scope_names()
        print_table(("name", "organization", "created (UTC)", "id"),
                    [(p.name, names.get(p.organization_id, p.organization_id), when(p.created_at, "-"), p.id)
                     for p in projects])
        return ExitCode.OK

    return with_tenancy(args.api, action)


def create_project(args: argparse.Namespace) -> int:
    from callmeter.v1 import tenancy_pb2

    def action(api: Tenancy) -> int:
        project = api.call(api.stub.CreateProject,
                           tenancy_pb2.CreateProjectRequest(organization_id=args.org, name=args.name))
        if args.json:
            print_json(project)
        else:
            print(f"created project {project.name!r} (id {project.id}) in organization {project.organization_id}")
        return ExitCode.OK

    return with_tenancy(args.api, action)
