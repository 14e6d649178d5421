"""SIP credentials by reference, resolved on the worker and never sent to the platform.

Looked up first in the environment — CALLMETER_CREDENTIAL_<REF>_PASSWORD and optionally
..._USERNAME and ..._REALM, with REF upper-cased and non-alphanumerics as "_" — then in the
secrets file (YAML, docs/engine.md "Credentials")::

    lab: {username: lab, password: secret, realm: "*"}
    office: {password: "pw-{n}"}          # {n}: the endpoint's number
    pbx:
      passwords: {101: s3cret, 102: {username: alice, password: other}}
      # or passwords_file: pbx.csv        (columns number,password[,username])

An engine gets a credential as ``EngineStart.credentials[REF]`` and each number of its table as
``[REF#N]`` (``plan.credential_key``); the engine fills ``{n}``. Messages never show a password,
nor a cell or line of the files, which could be one.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any

import yaml

from callmeter.common.errors import ConfigError
from callmeter.v1 import engine_pb2
from services.worker.engine.plan import credential_key

SETTING = "CALLMETER_SECRETS_FILE"
KEYS = ("username", "password", "realm", "passwords", "passwords_file")
CSV_COLUMNS = ({"number", "password"}, {"number", "password", "username"})
# Every engine of a run gets the tables of the run's credentials whole, in one EngineStart
# frame (at most 16 MiB): 100,000 numbers are about 7 MB.
MAX_TABLE_NUMBERS = 100_000

#: A credential's entries of EngineStart.credentials, by key.
Entries = dict[str, engine_pb2.Credential]
#: A table: number → (username, may be empty; password).
Table = dict[int, tuple[str, str]]


def _env_prefix(ref: str) -> str:
    return "CALLMETER_CREDENTIAL_" + re.sub(r"[^A-Za-z0-9]", "_", ref).upper() + "_"


def load_secrets_file(path: Path | None) -> dict[str, Entries]:
    """Each credential of the file, as the entries an engine gets; all of them or a ConfigError."""
    if path is None:
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(SETTING, f"cannot read {path}: {exc}") from None
    except yaml.YAMLError as exc:  # its own text quotes the file's line: it may hold a password
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "unreadable"
        raise ConfigError(SETTING, f"{path} is not YAML{line}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(SETTING, f"{path} must map credential names to their settings ({', '.join(KEYS)})")
    secrets = {str(ref): _entries(path, str(ref), entry) for ref, entry in data.items()}
    numbers = sum(key != ref for ref, entries in secrets.items() for key in entries)
    if numbers > MAX_TABLE_NUMBERS:
        raise ConfigError(SETTING, f"{path}: its tables hold {numbers:,} numbers, at most {MAX_TABLE_NUMBERS:,}")
    return secrets


def _entries(path: Path, ref: str, entry: Any) -> Entries:
    where = f"{path}: credential {ref!r}"
    if "#" in ref:
        raise ConfigError(SETTING, f"{where}: a name cannot contain '#' (it marks a table's numbers)")
    if not isinstance(entry, dict):
        raise ConfigError(SETTING, f"{where} must be a mapping of {', '.join(KEYS)}")
    unknown = [str(key) for key in entry if key not in KEYS]
    if unknown:
        raise ConfigError(SETTING, f"{where}: unknown key {', '.join(map(repr, unknown))}; known: {', '.join(KEYS)}")
    if "passwords" in entry and "passwords_file" in entry:
        raise ConfigError(SETTING, f"{where}: give passwords or passwords_file, not both")
    if "password" not in entry and "passwords" not in entry and "passwords_file" not in entry:
        raise ConfigError(SETTING, f"{where} needs a password (which may hold {{n}}), passwords or passwords_file")
    username, realm = str(entry.get("username", "")), str(entry.get("realm", ""))
    if "passwords" in entry:
        table = _yaml_table(where, entry["passwords"])
    elif "passwords_file" in entry:
        table = _csv_table(where, path.parent / str(entry["passwords_file"]))
    else:
        table = {}
    entries = {credential_key(ref, number): engine_pb2.Credential(username=user or username, password=password,
                                                                  realm=realm)
               for number, (user, password) in table.items()}
    if "password" in entry:  # also for the numbers the table lacks
        if not isinstance(entry["password"], str):  # as in _add
            raise ConfigError(SETTING, f"{where}: the password is not text; quote it")
        entries[ref] = engine_pb2.Credential(username=username, password=entry["password"], realm=realm)
    return entries


def _number(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 0 else None
    if isinstance(value, str) and re.fullmatch(r"[0-9]+", value.strip()):
        return int(value)
    return None


def _add(table: Table, where: str, key: Any, username: Any, password: Any) -> None:
    number = _number(key)
    if number is None:
        raise ConfigError(SETTING, f"{where}: a number is not a whole number ≥ 0 (not shown: it may be a password)")
    if number in table:
        raise ConfigError(SETTING, f"{where}: number {number} is there twice")
    if not isinstance(password, str):  # YAML reads 0123 as 83 and yes as True: never send those
        raise ConfigError(SETTING, f"{where}: the password of number {number} is not text; quote it")
    if not password:
        raise ConfigError(SETTING, f"{where}: the password of number {number} is empty")
    table[number] = (str(username or ""), password)


def _yaml_table(where: str, passwords: Any) -> Table:
    if not isinstance(passwords, dict) or not passwords:
        raise ConfigError(SETTING, f"{where}: passwords must map numbers to a password or to {{username, password}}")
    table: Table = {}
    for key, value in passwords.items():
        if isinstance(value, dict):
            if "password" not in value or not set(value) <= {"username", "password"}:
                raise ConfigError(SETTING, f"{where}: an entry of passwords needs a password and at most a username")
            _add(table, where, key, value.get("username"), value["password"])
        else:
            _add(table, where, key, "", value)
    return table


def _csv_table(where: str, path: Path) -> Table:
    table: Table = {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            columns = [name.strip() for name in reader.fieldnames or []]
            if set(columns) not in CSV_COLUMNS or len(columns) != len(set(columns)):
                raise ConfigError(SETTING, f"{where}: the first line of {path} must name the columns "
                                  "number,password or number,password,username")
            reader.fieldnames = columns
            for row in reader:
                if None in row or None in row.values():
                    raise ConfigError(SETTING, f"{where}: {path}, line {reader.line_num}: {len(columns)} columns "
                                      "expected")
                _add(table, f"{where}: {path}, line {reader.line_num}", row["number"], row.get("username"),
                     row["password"])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(SETTING, f"{where}: cannot read {path}: {exc}") from None
    if not table:
        raise ConfigError(SETTING, f"{where}: {path} has no numbers")
    return table


def resolve(refs: set[str], secrets: dict[str, Entries]) -> tuple[Entries, list[str]]:
    """EngineStart.credentials for the refs (their tables' numbers too), and the refs found nowhere."""
    found: Entries = {}
    missing: list[str] = []
    for ref in sorted(refs):
        prefix = _env_prefix(ref)
        if "#" not in ref and f"{prefix}PASSWORD" in os.environ:  # "#" would pass for a table's number
            found[ref] = engine_pb2.Credential(username=os.environ.get(f"{prefix}USERNAME", ""),
                                               password=os.environ[f"{prefix}PASSWORD"],
                                               realm=os.environ.get(f"{prefix}REALM", ""))
        elif ref in secrets:
            found.update(secrets[ref])
        else:
            missing.append(ref)
    return found, missing
