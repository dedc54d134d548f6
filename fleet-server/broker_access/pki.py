"""A small certificate authority for the broker's TLS: the CA, the broker's certificate, device certificates.

For development, the demo and the tests; a city with its own PKI brings its own files instead. Keys
are EC P-256 (fast on a Raspberry Pi, accepted by every TLS stack Mosquitto and Python use) and are
written owner-read-only; a box's key is made on the box and only its public half ever comes here
(`sign_device_csr`), so the server never holds a box's private key.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
LEAF_DAYS = 825
# A box's client certificate is short-lived: a stolen one is worth weeks at most even if nobody
# revokes it, and the server renews it well before (`polewatch server rotate-credentials`).
CLIENT_DAYS = 30


@dataclass(frozen=True)
class CertificateAuthority:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def load(cls, cert_file: Path, key_file: Path) -> CertificateAuthority:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_file} is not an EC private key")
        return cls(cert, key)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_ca(common_name: str = "Polewatch development CA") -> CertificateAuthority:
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert, key)


def _leaf(
    ca: CertificateAuthority,
    public_key: ec.EllipticCurvePublicKey,
    common_name: str,
    usage: x509.ObjectIdentifier,
    names: list[x509.GeneralName] | None = None,
    days: int = LEAF_DAYS,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def broker_certificate(
    ca: CertificateAuthority, hosts: list[str], key: ec.EllipticCurvePrivateKey | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The broker's server certificate, valid for each host name or IP address in `hosts`."""
    if not hosts:
        raise ValueError("the broker certificate needs at least one host name or IP address")
    key = key or new_key()
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return _leaf(ca, key.public_key(), hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, names), key


def device_csr(device_id: str, key: ec.EllipticCurvePrivateKey) -> x509.CertificateSigningRequest:
    """Made on the box: asks for a client certificate whose common name is the device id."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())


def sign_device_csr(ca: CertificateAuthority, csr: x509.CertificateSigningRequest, device_id: str) -> x509.Certificate:
    """Sign a box's request, refusing one that names another device or whose signature is wrong."""
    if not csr.is_signature_valid:
        raise ValueError("the certificate request's signature is not valid")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or names[0].value != device_id:
        raise ValueError(f"the certificate request names {[n.value for n in names]}, not device {device_id!r}")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise ValueError("the certificate request must carry an EC P-256 key")
    return client_certificate(ca, public_key, device_id)


def client_certificate(
    ca: CertificateAuthority, public_key: ec.EllipticCurvePublicKey, device_id: str, days: int = CLIENT_DAYS
) -> x509.Certificate:
    """A box's short-lived client certificate; its CN is the device id, which the broker's certificate
    listener uses as the username (and client id), so the box's rules are its dynsec role's."""
    return _leaf(ca, public_key, device_id, ExtendedKeyUsageOID.CLIENT_AUTH, days=days)


def revocation_list(ca: CertificateAuthority, serials: list[int], *, days: int = 7) -> bytes:
    """The CA's CRL (PEM) listing `serials`; the broker refuses these at the TLS handshake once it
    has re-read the file (SIGHUP)."""
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=days))
    )
    for serial in sorted(set(serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - dt.timedelta(minutes=5))
            .build()
        )
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def write_revocation_list(path: Path, ca: CertificateAuthority, serials: list[int]) -> None:
    """Replace the CRL atomically: the broker may re-read it at any moment and must never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(revocation_list(ca, serials))
    os.replace(tmp, path)


def write_certificate(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Owner read/write only, created that way (never world-readable, not even for an instant)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    path.chmod(0o600)


def sign_csr_as(ca: CertificateAuthority, csr: x509.CertificateSigningRequest, device_id: str) -> x509.Certificate:
    """Sign a box's request into a certificate for a device id the server chose, whatever the
    request's subject says: at enrolment the box does not know its id yet, and what it names itself
    must never decide which device it becomes. The signature still proves it holds the key."""
    if not csr.is_signature_valid:
        raise ValueError("the certificate request's signature is not valid")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise ValueError("the certificate request must carry an EC P-256 key")
    return client_certificate(ca, public_key, device_id)


def revoked_serials(path: Path) -> list[int]:
    """The serials a CRL file lists (none when it does not exist yet)."""
    if not path.is_file():
        return []
    return [entry.serial_number for entry in x509.load_pem_x509_crl(path.read_bytes())]


def certificate_serial(text: str) -> int:
    """A serial as the audit log shows it (hex), or a certificate file's (PEM) serial."""
    candidate = Path(text)
    if candidate.is_file():
        return x509.load_pem_x509_certificate(candidate.read_bytes()).serial_number
    try:
        return int(text.removeprefix("0x").replace(":", ""), 16)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a certificate file nor a hex serial (the device.enrol audit entry's "
            "certificate_serial)"
        ) from None
