"""Settings: environment → typed object, errors naming the variable, secrets masked."""

from __future__ import annotations

import pytest

from callmeter.common.errors import ConfigError
from callmeter.common.settings import describe, load_settings
from services.api.settings import ApiSettings
from services.worker.settings import WorkerSettings


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLMETER_GRPC_PORT", "6000")
    monkeypatch.setenv("CALLMETER_DATABASE_URL", "postgresql://u@db/x")
    settings = load_settings(ApiSettings)
    assert settings.grpc_port == 6000
    assert settings.database_url == "postgresql+psycopg://u@db/x"  # always psycopg 3


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLMETER_SHUTDOWN_GRACE_S", "soon")
    with pytest.raises(ConfigError) as error:
        load_settings(ApiSettings)
    assert error.value.setting == "CALLMETER_SHUTDOWN_GRACE_S"
    assert "'soon'" in error.value.detail


def test_operator_names_for_network_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLMETER_WORKER_TOKEN", "cmw_secret")
    monkeypatch.setenv("SIP_IP", "127.0.0.2")
    monkeypatch.setenv("SDP_IP", "127.0.0.3")
    monkeypatch.setenv("EXTERNAL_IP", "192.0.2.1")
    settings = load_settings(WorkerSettings)
    assert (settings.sip_ip, settings.sdp_ip, settings.external_ip) == ("127.0.0.2", "127.0.0.3", "192.0.2.1")


def test_secrets_and_url_passwords_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLMETER_WORKER_TOKEN", "cmw_secret")
    assert describe(load_settings(WorkerSettings))["worker_token"] == "***"
    monkeypatch.setenv("CALLMETER_DATABASE_URL", "postgresql://user:hunter2@db/x")
    shown = describe(load_settings(ApiSettings))["database_url"]
    assert "hunter2" not in shown and "user:***@db" in shown


def test_labels_must_be_key_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLMETER_WORKER_TOKEN", "x")
    monkeypatch.setenv("CALLMETER_WORKER_LABELS", "region=eu, gpu")
    with pytest.raises(ConfigError) as error:
        load_settings(WorkerSettings)
    assert error.value.setting == "CALLMETER_WORKER_LABELS" and "'gpu'" in error.value.detail
