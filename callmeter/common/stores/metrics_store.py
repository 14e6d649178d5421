"""The metrics store: clickhouse-connect to chDB (chdb:///DIR, embedded) or a ClickHouse server."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from callmeter.common.errors import ConfigError

SCHEMES = ("chdb", "http", "https")


def check_metrics_store_url(url: str, setting: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ConfigError(setting, f"unknown scheme {scheme!r}; use chdb:///DIR or http(s)://HOST:PORT")
    return url


def connect_metrics_store(url: str, setting: str = "CALLMETER_CLICKHOUSE_URL"):  # type: ignore[no-untyped-def]
    """A clickhouse-connect client; a store that cannot be reached is a ConfigError."""
    import clickhouse_connect  # platform extra; imported late so the worker never needs it

    check_metrics_store_url(url, setting)
    parts = urlsplit(url)
    if parts.scheme == "chdb" and parts.path:
        Path(parts.path).mkdir(parents=True, exist_ok=True)
    try:
        client = clickhouse_connect.get_client(dsn=url)
        client.command("SELECT 1")
    except Exception as exc:  # clickhouse-connect raises several unrelated types here
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(setting, f"cannot open {url}: {reason}") from None
    return client
