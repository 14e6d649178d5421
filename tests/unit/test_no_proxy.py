"""NO_PROXY for the worker's link to the gateway: host suffixes as urllib reads them, and CIDR
ranges for targets given by IP address, as curl and gRPC core read them (callmeter/common/channels.py)."""

from __future__ import annotations

import pytest

from callmeter.common.channels import proxy_for, proxy_options

PROXY = "http://127.0.0.1:3128"


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("grpc_proxy", "https_proxy", "http_proxy", "no_proxy", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", PROXY)


@pytest.mark.parametrize(("no_proxy", "address"), [
    ("10.0.0.0/8", "10.1.2.3:443"),
    ("example.com, 192.168.0.0/16", "192.168.7.9:50053"),
    ("fd00::/8", "[fd12::1]:443"),
    ("10.1.2.3", "10.1.2.3:443"),
    (".example.com", "gw.example.com:443"),
    ("example.com", "gw.example.com:443"),
    ("*", "anything:443"),
])
def test_no_proxy_covers(monkeypatch: pytest.MonkeyPatch, no_proxy: str, address: str) -> None:
    monkeypatch.setenv("NO_PROXY", no_proxy)
    assert proxy_for(address) is None
    assert proxy_options(address) == [("grpc.enable_http_proxy", 0)]


@pytest.mark.parametrize(("no_proxy", "address"), [
    ("10.0.0.0/8", "11.1.2.3:443"),
    ("10.0.0.0/8", "gw.example.com:443"),  # a range never matches a name
    ("192.168.0.0/16, not-a-range/99", "172.16.0.1:443"),
    ("10.0.0.0/8", "[::ffff:b00:1]:443"),
    ("fd00::/8", "10.0.0.1:443"),
    ("other.com", "gw.example.com:443"),
])
def test_no_proxy_does_not_cover(monkeypatch: pytest.MonkeyPatch, no_proxy: str, address: str) -> None:
    monkeypatch.setenv("NO_PROXY", no_proxy)
    assert proxy_for(address) == PROXY
    assert proxy_options(address) == [("grpc.http_proxy", PROXY)]
