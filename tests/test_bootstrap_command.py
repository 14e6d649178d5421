"""The `callmeter bootstrap` parser: a worker host builds it without the platform's dependencies,
and deploy/k8s/bootstrap-job.yaml runs it with the database the services use."""

from __future__ import annotations

import argparse
import subprocess
import sys

import yaml

from callmeter.cli import bootstrap
from callmeter.common.settings import env_name
from services.api.settings import ApiSettings
from tests.procs import ROOT

K8S = ROOT / "deploy" / "k8s"


def parser() -> argparse.ArgumentParser:
    built = argparse.ArgumentParser(prog="callmeter")
    bootstrap.add_parser(built.add_subparsers(required=True))
    return built


def container(manifest: str, kind: str) -> dict:  # type: ignore[type-arg]
    [obj] = [doc for doc in yaml.safe_load_all((K8S / manifest).read_text()) if doc and doc["kind"] == kind]
    [only] = obj["spec"]["template"]["spec"]["containers"]
    return only  # type: ignore[no-any-return]


def test_the_parser_needs_no_sqlalchemy() -> None:
    # Every subcommand's parser is built for any command: `callmeter worker` on a host with
    # callmeter[worker] only must not need the platform's SQLAlchemy.
    script = ("import argparse, sys; from callmeter.cli import bootstrap; "
              "bootstrap.add_parser(argparse.ArgumentParser().add_subparsers()); "
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'alembic', 'psycopg')))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, "[]\n"), result.stderr


def test_the_job_runs_bootstrap_with_the_services_database_secret() -> None:
    job = container("bootstrap-job.yaml", "Job")

    args = parser().parse_args(job["args"])

    assert args.handler is bootstrap.handle and args.database_url is None  # from the environment, not the args
    assert args.organization and args.owner and not args.new_owner_token
    [database] = job["env"]
    [api_database] = [env for env in container("api.yaml", "Deployment")["env"] if env["name"] == database["name"]]
    assert database["name"] == bootstrap.DATABASE_URL_ENV == env_name(ApiSettings, "database_url")
    assert database["valueFrom"] == api_database["valueFrom"]


def test_the_jobs_lost_token_variant_asks_for_a_new_owner_token() -> None:
    """The comment at the top of the manifest uncomments one line with sed: it must stay a valid Job."""
    text = (K8S / "bootstrap-job.yaml").read_text().replace("# - --new-owner-token", "- --new-owner-token")
    [job] = [doc for doc in yaml.safe_load_all(text) if doc and doc["kind"] == "Job"]

    args = parser().parse_args(job["spec"]["template"]["spec"]["containers"][0]["args"])

    assert args.new_owner_token
