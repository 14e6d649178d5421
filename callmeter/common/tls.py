"""The platform's TLS: the internal links' settings, and a development CA for ``callmeter up``.

Internal links are mutual TLS. The orchestrator and metrics-ingest serve only callers that present
a certificate of the platform's CA; the api, the gateway and the orchestrator present theirs when
they call them. Each of these processes has one certificate for both ends (server and client
auth) and the CA: ``CALLMETER_INTERNAL_CERT_FILE``, ``CALLMETER_INTERNAL_KEY_FILE``,
``CALLMETER_INTERNAL_CA_FILE``. Without them it does not start, unless
``CALLMETER_INSECURE_INTERNAL=true`` (plaintext, every caller trusted: a development host only).

The development CA, under DIR: ca.pem / ca-key.pem; server.pem / server-key.pem, the gateway's
certificate for workers (server auth); internal-NAME.pem / internal-NAME-key.pem for each of
INTERNAL_PARTIES (server and client auth); all valid for localhost, 127.0.0.1 and ::1, the
gateway's also for the names and addresses ``up`` is given (``--dev-cert-names``). Existing files
are reused, so a second ``up`` keeps the trust that workers already pinned; a certificate whose
names differ from those asked for is issued again by the same CA. Production uses real
certificates from settings.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier
from pydantic_settings import BaseSettings, SettingsConfigDict

from callmeter.common.errors import ConfigError
from callmeter.common.grpc_server import TlsFiles
from callmeter.common.settings import ENV_PREFIX, env_name

VALIDITY = dt.timedelta(days=825)
LOOPBACK = ("localhost", "127.0.0.1", "::1")
#: The processes on the internal links, each with a certificate of its own in development.
INTERNAL_PARTIES = ("api", "orchestrator", "gateway", "metrics")
INTERNAL_FIELDS = ("internal_cert_file", "internal_key_file", "internal_ca_file")


class InternalTlsSettings(BaseSettings):
    """The settings of a process on the internal links; a base of its settings class."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    #: This process's certificate chain and key (PEM) on the internal links, with both server and
    #: client auth (it serves them, calls over them, or both).
    internal_cert_file: Path | None = None
    internal_key_file: Path | None = None
    #: The platform's CA (PEM), which signed every certificate on the internal links.
    internal_ca_file: Path | None = None
    #: true: without the three files above, the internal links are plaintext and every caller is
    #: trusted (a development host only). Ignored when they are set.
    insecure_internal: bool = False

    def internal_tls(self) -> TlsFiles | None:
        """The files, or None for plaintext where insecure_internal allows it; a ConfigError when
        they are not all set."""
        if not set_together(self, *INTERNAL_FIELDS):
            if self.insecure_internal:
                return None
            cert, key, ca = (env_name(type(self), field) for field in INTERNAL_FIELDS)
            raise ConfigError(cert, f"required: the internal services accept only callers with a certificate of "
                                    f"the platform's CA; set it, {key} and {ca}, or "
                                    f"{env_name(type(self), 'insecure_internal')}=true for plaintext on a "
                                    "development host")
        return internal_files(self.internal_cert_file, self.internal_key_file,  # type: ignore[arg-type]
                              self.internal_ca_file)


def internal_files(cert: Path, key: Path, ca: Path) -> TlsFiles:
    """A process's files on the internal links, named by their settings."""
    names = (env_name(InternalTlsSettings, field) for field in INTERNAL_FIELDS)
    return TlsFiles(cert, key, ca, *names)


def set_together(settings: BaseSettings, *fields: str) -> bool:
    """Whether all of ``fields`` are set (False when none is); some without the others is a
    ConfigError naming the first one missing."""
    given = [field for field in fields if getattr(settings, field) is not None]
    if given and len(given) < len(fields):
        missing = next(field for field in fields if getattr(settings, field) is None)
        names = ", ".join(env_name(type(settings), field) for field in given)
        raise ConfigError(env_name(type(settings), missing), f"required with {names}")
    return bool(given)


@dataclass(frozen=True)
class DevPki:
    ca_cert: Path
    #: The gateway's certificate for workers.
    server_cert: Path
    server_key: Path

    def internal(self, party: str) -> TlsFiles:
        """The internal-link files of one of INTERNAL_PARTIES."""
        directory = self.ca_cert.parent
        return internal_files(directory / f"internal-{party}.pem", directory / f"internal-{party}-key.pem",
                              self.ca_cert)


def ensure_dev_pki(directory: Path, hosts: tuple[str, ...] = LOOPBACK, gateway_names: tuple[str, ...] = ()) -> DevPki:
    """The development CA and certificates under ``directory``, each valid for ``hosts``; the
    gateway's for ``gateway_names`` too (DNS names or IP addresses)."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = DevPki(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    ca_key_path = directory / "ca-key.pem"
    if not (pki.ca_cert.exists() and ca_key_path.exists()):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        _write_key(ca_key_path, ca_key)
        pki.ca_cert.write_bytes(_ca_certificate(ca_key).public_bytes(serialization.Encoding.PEM))
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    _ensure_certificate(ca_cert, ca_key, pki.server_cert, pki.server_key,  # type: ignore[arg-type]
                        "callmeter-gateway", tuple(dict.fromkeys(hosts + gateway_names)),
                        (ExtendedKeyUsageOID.SERVER_AUTH,))
    for party in INTERNAL_PARTIES:
        files = pki.internal(party)
        _ensure_certificate(ca_cert, ca_key, files.cert, files.key,  # type: ignore[arg-type]
                            f"callmeter-{party}", hosts, (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH))
    return pki


def _ensure_certificate(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, cert_path: Path,
                        key_path: Path, common_name: str, hosts: tuple[str, ...],
                        usages: tuple[ObjectIdentifier, ...]) -> None:
    if cert_path.exists() and key_path.exists() and certificate_names(cert_path) == set(hosts):
        return
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_certificate(ca_cert, ca_key, key, common_name, hosts, usages=usages)
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def certificate_names(cert_path: Path) -> set[str]:
    """The DNS names and IP addresses (as text) a PEM certificate is valid for."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {*names.get_values_for_type(x509.DNSName), *map(str, names.get_values_for_type(x509.IPAddress))}


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "callmeter development CA")])
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )


def issue_certificate(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    hosts: tuple[str, ...],
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    usages: tuple[ObjectIdentifier, ...] = (ExtendedKeyUsageOID.SERVER_AUTH,),
) -> x509.Certificate:
    """A certificate for ``hosts`` signed by the CA, for ``usages`` (server auth, client auth;
    validity overridable for tests)."""
    now = dt.datetime.now(dt.timezone.utc)
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(minutes=5))
        .not_valid_after(not_after or now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.touch(mode=0o600)
    path.write_bytes(data)
