"""deploy/systemd/: the worker's unit is one systemd accepts, hardened, and starting the worker with
settings that exist; the sample worker.env is a configuration the worker accepts, as the docs show it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from callmeter.common.exit_codes import ExitCode
from callmeter.common.settings import env_name, load_settings
from services.worker import main as worker_main
from services.worker.settings import WorkerSettings
from tests.procs import ROOT

UNIT = ROOT / "deploy" / "systemd" / "callmeter-worker.service"
ENV_EXAMPLE = ROOT / "deploy" / "systemd" / "worker.env.example"
DOC = ROOT / "docs" / "self-hosted-worker.md"
SETTINGS = {env_name(WorkerSettings, field) for field in WorkerSettings.model_fields}
#: The most `systemd-analyze security` may rate the unit's exposure (0 best, 10 worst; ≤ 2 is "OK").
MAX_EXPOSURE = 2.0


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Section → its (key, value) lines in order, repeated keys kept; comments left out."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, value = line.split("=", 1)
        current.append((key, value))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [value for name, value in section if name == key]


def with_optional_lines(text: str) -> str:
    """The unit with its commented-out options (credentials, a port below 1024) switched on."""
    return re.sub(r"^#\s*((?:LoadCredential|Environment|AmbientCapabilities|CapabilityBoundingSet)=)", r"\1", text,
                  flags=re.MULTILINE)


def test_the_unit_runs_the_worker_hardened_from_its_environment_file() -> None:
    unit = parse_unit(UNIT.read_text())
    assert set(unit) == {"Unit", "Service", "Install"}
    service = dict(unit["Service"])
    assert service["ExecStart"] == "/opt/callmeter/venv/bin/callmeter worker"
    assert service["EnvironmentFile"] == "/etc/callmeter/worker.env"
    assert (service["Restart"], service["RestartPreventExitStatus"]) == ("on-failure", str(int(ExitCode.ERROR)))
    assert service["KillMode"] == "mixed"  # SIGTERM to the supervisor alone: it stops its engines
    assert float(service["TimeoutStopSec"]) > 2 * worker_main.STOP_TIMEOUT_S + 10
    for key, value in {"DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
                       "MemoryDenyWriteExecute": "yes", "CapabilityBoundingSet": ""}.items():
        assert service[key] == value, key
    assert "AmbientCapabilities" not in service  # nothing binds below 1024 by default
    assert "StateDirectory" not in service  # the worker writes nothing
    assert int(service["LimitNOFILE"]) >= 65536
    assert values(unit["Service"], "SystemCallFilter") == ["@system-service", "~@privileged"]
    assert "network-online.target" in dict(unit["Unit"])["After"]
    assert dict(unit["Install"])["WantedBy"] == "multi-user.target"


def test_the_optional_credentials_lines_hand_the_worker_its_secrets_file() -> None:
    service = parse_unit(with_optional_lines(UNIT.read_text()))["Service"]
    [credential] = values(service, "LoadCredential")
    name, source = credential.split(":", 1)
    assert source == "/etc/callmeter/" + name
    environment = dict(value.split("=", 1) for value in values(service, "Environment"))
    assert set(environment) <= SETTINGS, set(environment) - SETTINGS
    assert environment["CALLMETER_SECRETS_FILE"] == f"/run/credentials/%n/{name}"
    assert values(service, "AmbientCapabilities") == values(service, "CapabilityBoundingSet")[-1:] == \
        ["CAP_NET_BIND_SERVICE"]


@pytest.fixture
def runnable_unit(tmp_path: Path) -> Path:
    """The unit, options on, starting this venv's callmeter (systemd-analyze checks the command exists)."""
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is not installed (make system-deps: Debian's package systemd)")
    text = with_optional_lines(UNIT.read_text()).replace("/opt/callmeter/venv/bin/callmeter",
                                                         str(Path(sys.executable).parent / "callmeter"))
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    return unit


def test_systemd_analyze_verify_finds_nothing(runnable_unit: Path) -> None:
    result = subprocess.run(["systemd-analyze", "verify", str(runnable_unit)], capture_output=True, text=True,
                            timeout=60)
    # An unknown key or a bad value is only a warning, exit code 0: nothing may be said at all.
    assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result.stdout + result.stderr


def test_systemd_analyze_security_rates_the_unit_ok(runnable_unit: Path) -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(runnable_unit)],
                            capture_output=True, text=True, timeout=60)
    exposure = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert exposure is not None, result.stdout + result.stderr
    assert float(exposure[1]) <= MAX_EXPOSURE, result.stdout


def env_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_the_sample_worker_env_is_a_configuration_the_worker_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    sample = env_lines(ENV_EXAMPLE.read_text())
    assert set(sample) <= SETTINGS, set(sample) - SETTINGS
    commented = set(re.findall(r"^#([A-Z_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert commented <= SETTINGS, commented - SETTINGS
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    for name, value in sample.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(WorkerSettings)
    assert settings.worker_token.get_secret_value().startswith("cmw_")
    assert [(label.key, label.value) for label in settings.labels()] == [("site", "a"), ("region", "eu-west")]


def test_the_docs_show_the_sample_worker_env_as_it_is() -> None:
    blocks = re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert ENV_EXAMPLE.read_text() in blocks, "docs/self-hosted-worker.md: copy deploy/systemd/worker.env.example"
