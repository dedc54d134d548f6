"""The broker's TLS files in one directory: a CA and the broker's certificate, made once and kept.

Shared by `polewatch server broker-setup` (Mosquitto) and `polewatch demo` (the embedded broker), so
the demo's TLS comes from the same CA code a deployment's does. Re-running keeps the CA (boxes that
trust it must keep trusting it) and re-issues the broker certificate only when the host names change.
A city with its own PKI replaces the files instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from . import pki


@dataclass(frozen=True)
class BrokerTlsFiles:
    ca_file: Path
    ca_key_file: Path
    cert_file: Path
    key_file: Path


def hosts_of(cert_file: Path) -> set[str]:
    """The host names and IP addresses a certificate is valid for (its subject alternative names)."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v) for v in names.get_values_for_type(x509.IPAddress)} | set(names.get_values_for_type(x509.DNSName))


def ensure_broker_tls(directory: Path, hosts: list[str]) -> BrokerTlsFiles:
    """Make (or keep) `ca.crt`/`ca.key` and `broker.crt`/`broker.key` in `directory` for `hosts`."""
    directory.mkdir(parents=True, exist_ok=True)
    files = BrokerTlsFiles(
        directory / "ca.crt", directory / "ca.key", directory / "broker.crt", directory / "broker.key"
    )
    if files.ca_file.is_file() and files.ca_key_file.is_file():
        ca = pki.CertificateAuthority.load(files.ca_file, files.ca_key_file)
    else:
        ca = pki.make_ca()
        pki.write_certificate(files.ca_file, ca.certificate)
        pki.write_private_key(files.ca_key_file, ca.key)
    if not files.cert_file.is_file() or not files.key_file.is_file() or hosts_of(files.cert_file) != set(hosts):
        cert, key = pki.broker_certificate(ca, hosts)
        pki.write_certificate(files.cert_file, cert)
        pki.write_private_key(files.key_file, key)
    return files
