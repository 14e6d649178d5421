"""Client channels to callmeter services, plain, TLS or mutual TLS (the internal links), with the
options every client uses.

HTTP CONNECT proxies: gRPC core reads only the lower-case ``https_proxy``/``no_proxy`` (and
``grpc_proxy``/``http_proxy``), but operators set ``HTTPS_PROXY``/``NO_PROXY`` for the worker's
link to the gateway. For a channel made with ``proxy=True`` the proxy is chosen here from either
spelling, as Python's urllib does (lower case wins), and handed to gRPC as the channel's own
proxy, or turned off for a target that ``NO_PROXY`` covers: a host-suffix entry as urllib reads
it, or an address range such as ``10.0.0.0/8`` for a target given by IP address, as curl and gRPC
core read it. Other channels keep gRPC's default.
"""

from __future__ import annotations

import ipaddress
import urllib.request
from pathlib import Path

import grpc

from callmeter.common.grpc_server import MAX_MESSAGE_BYTES, TlsFiles, read_ca, read_key_pair

CLIENT_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


# gRPC core's order of preference among the proxy variables.
PROXY_SCHEMES = ("grpc", "https", "http")


def proxy_for(address: str) -> str | None:
    """The proxy URL the environment names for ``host:port``, or None (none set, or NO_PROXY)."""
    proxies = urllib.request.getproxies_environment()
    proxy = next((proxies[scheme] for scheme in PROXY_SCHEMES if proxies.get(scheme)), None)
    if proxy is None or urllib.request.proxy_bypass_environment(address, proxies) or in_no_proxy_range(address, proxies):
        return None
    return proxy


def in_no_proxy_range(address: str, proxies: dict[str, str]) -> bool:
    """Whether ``host:port`` (``[v6]:port``) is an IP address inside a CIDR entry of NO_PROXY."""
    host = address[1:].partition("]")[0] if address.startswith("[") else address.rpartition(":")[0] or address
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:  # a name: only the suffix rules apply
        return False
    for entry in proxies.get("no", "").split(","):
        try:
            network = ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            continue
        if ip.version == network.version and ip in network:
            return True
    return False


def proxy_options(address: str) -> list[tuple[str, int | str]]:
    proxy = proxy_for(address)
    return [("grpc.http_proxy", proxy)] if proxy else [("grpc.enable_http_proxy", 0)]


def aio_channel(address: str, ca_file: Path | None = None, ca_setting: str = "CALLMETER_CA_FILE",
                server_name: str | None = None, proxy: bool = False,
                compression: grpc.Compression | None = None, identity: TlsFiles | None = None,
                always_tls: bool = False) -> grpc.aio.Channel:
    """An asyncio channel; TLS when ``ca_file`` is given (the CA that signed the server), mutual TLS
    with ``identity`` (this process's certificate, presented, and the CA that signed the server);
    plaintext with neither, unless ``always_tls``: then TLS trusting the system's roots. Through the
    environment's HTTP proxy when ``proxy``; every message sent compressed with ``compression``
    (servers accept gzip and deflate without any setting)."""
    options = [*CLIENT_OPTIONS, *(proxy_options(address) if proxy else [])]
    credentials = channel_credentials(ca_file, ca_setting, identity)
    if credentials is None and always_tls:
        credentials = grpc.ssl_channel_credentials()
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=options, compression=compression)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(address, credentials, options=options, compression=compression)


def sync_channel(address: str, ca_file: Path | None = None, identity: TlsFiles | None = None) -> grpc.Channel:
    """A blocking channel, for the CLI; TLS as for ``aio_channel``."""
    options = list(CLIENT_OPTIONS)
    credentials = channel_credentials(ca_file, "CALLMETER_CA_FILE", identity)
    if credentials is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, credentials, options=options)


def channel_credentials(ca_file: Path | None, ca_setting: str,
                        identity: TlsFiles | None) -> grpc.ChannelCredentials | None:
    """None for plaintext; a file that cannot be used is a ConfigError naming its setting."""
    if identity is not None:  # its CA, or without one the system's roots
        key, cert = read_key_pair(identity)
        ca = read_ca(identity.ca, identity.ca_setting) if identity.ca else None
        return grpc.ssl_channel_credentials(ca, key, cert)
    if ca_file is not None:
        return grpc.ssl_channel_credentials(read_ca(ca_file, ca_setting))
    return None


def check_health(address: str, ca_file: Path | None = None, timeout_s: float = 2.0, service: str = "",
                 identity: TlsFiles | None = None) -> bool:
    """True when the standard gRPC health service answers SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with sync_channel(address, ca_file, identity) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING
