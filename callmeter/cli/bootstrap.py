"""`callmeter bootstrap`: the first organization and owner of a production database, once.

Run as a Kubernetes Job (deploy/k8s/bootstrap-job.yaml) or by hand. The owner's API token is
the only thing on stdout, alone on its line, so that a Job's log or a script can take it; every
other line goes to stderr. The schema is migrated first, as the services do at their start.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from callmeter.common.exit_codes import ExitCode

if TYPE_CHECKING:
    from callmeter.state.bootstrap import OrganizationBootstrap

DATABASE_URL_ENV = "CALLMETER_DATABASE_URL"  # the services' setting (services/api/settings.py)


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "bootstrap", help="create the first organization and owner of a production database",
        description="Migrate the schema if it is older, create the organization with its owner and print the "
                    "owner's API token once, alone on stdout. Run again, it creates nothing and prints no token.")
    parser.add_argument("--database-url", metavar="URL",
                        help=f"postgresql://USER:PASSWORD@HOST/DB (default: {DATABASE_URL_ENV}, which keeps the "
                             "password out of the process list)")
    parser.add_argument("--organization", metavar="NAME", required=True, type=_name, help="the organization's name")
    parser.add_argument("--owner", metavar="NAME", required=True, type=_name, help="the owner's user name")
    parser.add_argument("--project", metavar="NAME", type=_name, help="also create this project in the organization")
    parser.add_argument("--new-owner-token", action="store_true",
                        help="revoke the owner's bootstrap token and print a new one (when it was lost)")
    parser.add_argument("--add-owner", action="store_true",
                        help="make --owner another owner of an organization that exists, with a token of their own")
    parser.set_defaults(handler=handle)


def _name(text: str) -> str:
    from callmeter.state.models import NAME_LENGTH  # SQLAlchemy: a worker host builds this parser without it

    name = text.strip()
    if not name or len(name) > NAME_LENGTH:
        raise argparse.ArgumentTypeError(f"a name of 1 to {NAME_LENGTH} characters (got {text!r})")
    return name


def handle(args: argparse.Namespace) -> int:
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from callmeter.common.errors import ConfigError
    from callmeter.common.stores.database import create_database_engine
    from callmeter.state.bootstrap import OrganizationRefused, OwnerRefused, bootstrap_organization
    from callmeter.state.migrate import current_revision, ensure_schema

    url, setting = (args.database_url, "--database-url") if args.database_url else (
        os.environ.get(DATABASE_URL_ENV), DATABASE_URL_ENV)
    if not url:
        return _error(f"no database: pass --database-url or set {DATABASE_URL_ENV}")
    try:
        engine = create_database_engine(url, setting)
    except ConfigError as exc:
        return _error(exc.detail)
    try:
        before = current_revision(engine)
        ensure_schema(engine)
        after = current_revision(engine)
        if after != before:
            _say(f"migrated the schema from {before or 'nothing'} to {after}")
        result = bootstrap_organization(engine, args.organization, args.owner, args.project,
                                        new_owner_token=args.new_owner_token, add_owner=args.add_owner)
    except OwnerRefused as exc:
        return _error(f"{exc.detail}; pass --add-owner to make {args.owner!r} another owner")
    except OrganizationRefused as exc:
        return _error(exc.detail)
    except CommandError as exc:  # e.g. a revision this version does not know: a newer callmeter migrated it
        return _error(f"cannot migrate the schema: {exc}")
    except SQLAlchemyError as exc:
        reason = str(exc.orig if getattr(exc, "orig", None) else exc).strip().splitlines()[0]
        return _error(f"the database failed: {reason}")
    finally:
        engine.dispose()
    _report(args, result)
    return ExitCode.OK


def _report(args: argparse.Namespace, result: OrganizationBootstrap) -> None:
    """What was found and made, on stderr; a token made now, alone on stdout."""
    if result.organization_created:
        _say(f"created organization {args.organization!r} (id {result.organization_id}) with owner {args.owner!r}")
    elif result.owner_created:
        _say(f"organization {args.organization!r} exists; added {args.owner!r} as another owner")
    else:
        _say(f"organization {args.organization!r} (id {result.organization_id}) exists with owner(s) "
             f"{', '.join(map(repr, result.owners))}")
    if args.project is not None:
        _say(f"{'created' if result.project_created else 'found'} project {args.project!r} (id {result.project_id})")
    if result.revoked_owner_tokens:
        _say(f"revoked {result.revoked_owner_tokens} earlier bootstrap token(s) of {args.owner!r}")
    if result.owner_token_secret is None:
        _say("no token printed: it was shown when the owner was made "
             "(--new-owner-token revokes it and prints a new one)")
        return
    _say(f"the API token of owner {args.owner!r} follows on stdout, shown this once: keep it now")
    print(result.owner_token_secret, flush=True)


def _say(line: str) -> None:
    print(f"callmeter bootstrap: {line}", file=sys.stderr, flush=True)


def _error(line: str) -> int:
    print(f"callmeter: error: {line}", file=sys.stderr)
    return ExitCode.ERROR
