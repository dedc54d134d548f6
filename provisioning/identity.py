"""The box's own key pair: made on the box, kept on the box, its fingerprint is the box's identity.

Made once and reused on every later run, so running the enrolment twice (a dropped link, a
technician who is not sure it worked) presents the same key and the server answers with the same
device instead of a second one. The private key file is created owner-only and never sent anywhere;
the server gets a certificate signing request, which proves the box holds the key.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

KEY_NAME = "box.key"


class IdentityError(RuntimeError):
    """The box's key exists but cannot be used; the text says what to do."""


def key_path(state_dir: Path) -> Path:
    return state_dir / "identity" / KEY_NAME


def load_or_create_key(state_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, bool]:
    """The box's key and whether it was made just now."""
    path = key_path(state_dir)
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise IdentityError(
                f"{path} is not a readable private key ({exc}); if this box was never enrolled, delete it and "
                "run again, otherwise ask ops to revoke the old device first"
            ) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IdentityError(f"{path} holds a {type(key).__name__}, expected an EC key")
        return key, False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # O_EXCL: two runs racing never both write a key; the loser reads the winner's.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_or_create_key(state_dir)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return key, True


def fingerprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 of the DER public key, hex: what the server stores to recognise this box again."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def signing_request(key: ec.EllipticCurvePrivateKey) -> str:
    """A PEM CSR; the subject is informative only, the server names the certificate after the device."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"polewatch-box-{socket.gethostname()[:40]}")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()
