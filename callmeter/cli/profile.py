"""The local CLI profile: where the API is and which token to use, written by `callmeter up`.

`--api` / CALLMETER_API and CALLMETER_TOKEN override what the profile says.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from callmeter.common.errors import ConfigError


@dataclass(frozen=True)
class Profile:
    api: str
    token: str
    #: CA that signed the API's certificate, when the API serves TLS.
    ca_file: str | None = None


def profile_path() -> Path:
    if os.environ.get("CALLMETER_PROFILE"):
        return Path(os.environ["CALLMETER_PROFILE"])
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config_home / "callmeter" / "profile.json"


def write_profile(profile: Profile) -> Path:
    """Atomically, readable by this user only; a profile that cannot be written is a ConfigError."""
    path = profile_path()
    tmp = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.touch(mode=0o600)
        tmp.write_text(json.dumps(asdict(profile), indent=2) + "\n")
        tmp.replace(path)
    except OSError as exc:
        raise ConfigError("CALLMETER_PROFILE", f"cannot write the CLI profile {path} ({exc.filename}: {exc.strerror}); "
                                               "point CALLMETER_PROFILE at a writable file") from None
    return path


def read_profile() -> Profile | None:
    """The profile, None when there is none, or a ConfigError naming it (one line)."""
    path = profile_path()
    try:
        data = json.loads(path.read_text())
        profile = Profile(api=data["api"], token=data["token"], ca_file=data.get("ca_file"))
        if not (isinstance(profile.api, str) and isinstance(profile.token, str)
                and isinstance(profile.ca_file, (str, type(None)))):
            raise TypeError("api and token must be strings, ca_file a string or null")
        if "\0" in (profile.ca_file or ""):
            raise ValueError("ca_file holds a NUL character")
    except (FileNotFoundError, NotADirectoryError):  # none yet
        return None
    # unreadable, not UTF-8, not JSON, nested too deep, not the profile's shape
    except (OSError, ValueError, TypeError, KeyError, RecursionError) as exc:
        problem = f"no {exc} in it" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
        raise ConfigError("CALLMETER_PROFILE", f"the CLI profile {path} cannot be read ({problem}); fix or delete "
                                               "it, or pass --api and set CALLMETER_TOKEN") from None
    return profile
