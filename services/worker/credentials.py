"""SIP credentials by reference, resolved on the worker and never sent to the platform.

Looked up first in the environment — CALLMETER_CREDENTIAL_<REF>_USERNAME, ..._PASSWORD and
optionally ..._REALM, with REF upper-cased and non-alphanumerics as "_" — then in the secrets
file (YAML: ``REF: {username: ..., password: ..., realm: ...}``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from callmeter.common.errors import ConfigError
from callmeter.v1 import engine_pb2


def _env_prefix(ref: str) -> str:
    return "CALLMETER_CREDENTIAL_" + re.sub(r"[^A-Za-z0-9]", "_", ref).upper() + "_"


def load_secrets_file(path: Path | None) -> dict[str, engine_pb2.Credential]:
    if path is None:
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError("CALLMETER_SECRETS_FILE", f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("CALLMETER_SECRETS_FILE", f"{path} must map credential names to username/password")
    credentials = {}
    for ref, entry in data.items():
        if not isinstance(entry, dict) or "username" not in entry or "password" not in entry:
            raise ConfigError("CALLMETER_SECRETS_FILE", f"{path}: credential {ref!r} needs username and password")
        credentials[str(ref)] = engine_pb2.Credential(username=str(entry["username"]), password=str(entry["password"]),
                                                      realm=str(entry.get("realm", "")))
    return credentials


def resolve(refs: set[str], secrets: dict[str, engine_pb2.Credential]) -> tuple[dict[str, engine_pb2.Credential], list[str]]:
    """The credentials for the refs, and the refs found nowhere."""
    found: dict[str, engine_pb2.Credential] = {}
    missing: list[str] = []
    for ref in sorted(refs):
        prefix = _env_prefix(ref)
        if f"{prefix}USERNAME" in os.environ and f"{prefix}PASSWORD" in os.environ:
            found[ref] = engine_pb2.Credential(username=os.environ[f"{prefix}USERNAME"],
                                               password=os.environ[f"{prefix}PASSWORD"],
                                               realm=os.environ.get(f"{prefix}REALM", ""))
        elif ref in secrets:
            found[ref] = secrets[ref]
        else:
            missing.append(ref)
    return found, missing
