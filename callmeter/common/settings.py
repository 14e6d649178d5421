"""Typed settings, read once from the environment at an entry point and passed down.

Precedence: explicit keyword arguments (the CLI's flags) over ``CALLMETER_*`` environment
variables over the defaults declared here. A value that does not parse raises ``ConfigError``
naming the environment variable, which the entry point prints as one line before exiting 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from callmeter.common.errors import ConfigError

ENV_PREFIX = "CALLMETER_"

class ProcessSettings(BaseSettings):
    """Settings every callmeter process has."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: json always, console always, or auto: console on a terminal, JSON otherwise.
    log_format: Literal["json", "console", "auto"] = "auto"
    #: When set, the process writes its bound ports here as JSON once it is serving.
    ready_file: Path | None = None


class CommonSettings(ProcessSettings):
    """Settings every gRPC service has."""
    #: Address the gRPC server binds; 0.0.0.0 in containers.
    grpc_host: str = "127.0.0.1"
    #: gRPC port; 0 picks a free one (tests), reported in the ready file.
    grpc_port: int = Field(default=0, ge=0, le=65535)
    #: Address and port of the Prometheus /metrics HTTP endpoint.
    prometheus_host: str = "127.0.0.1"
    prometheus_port: int = Field(default=0, ge=0, le=65535)
    #: Seconds in-flight RPCs get to finish after SIGTERM.
    shutdown_grace_s: float = Field(default=5.0, ge=0, le=300)


S = TypeVar("S", bound=BaseSettings)


def env_name(settings_cls: type[BaseSettings], field: str) -> str:
    """The environment variable that sets ``field`` (an alias where the field has one)."""
    info = settings_cls.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, str):
        return info.validation_alias
    prefix = settings_cls.model_config.get("env_prefix", "")
    return f"{prefix}{field}".upper()


def load_settings(settings_cls: type[S], **overrides: Any) -> S:
    """Builds the settings object or raises ConfigError naming the first bad variable."""
    try:
        return settings_cls(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        error = exc.errors()[0]
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # a check across fields names its variables in the message
            raise ConfigError("", message) from None
        value = error.get("input")
        info = settings_cls.model_fields.get(str(error["loc"][0]))
        secret = (info is not None and info.annotation is SecretStr) or (
            isinstance(value, str) and "://" in value and "@" in value)  # a URL with credentials
        shown = "" if isinstance(value, dict) or value is None or secret else f" (got {value!r})"
        raise ConfigError(env_name(settings_cls, str(error["loc"][0])), f"{message}{shown}") from None


def describe(settings: BaseSettings) -> dict[str, Any]:
    """The settings as loggable values, secrets masked."""
    shown: dict[str, Any] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = "***" if value.get_secret_value() else ""
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, str) and "://" in value and "@" in value:
            value = _mask_url_password(value)
        shown[name] = value
    return shown


def _mask_url_password(url: str) -> str:
    scheme, rest = url.split("://", 1)
    userinfo, host = rest.rsplit("@", 1)
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in userinfo else url
