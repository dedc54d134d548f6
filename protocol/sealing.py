"""Sealing a secret to a box's own key: ephemeral ECDH on P-256, HKDF-SHA256, AES-256-GCM.

The box's key is the EC P-256 key it made at provisioning (provisioning/identity.py) and never
shares; the server knows its public half from the enrolment CSR. A rotated broker password travels
in a command on the box's down branch, which the broker stores and may log: sealed, only the box can
read it, and the device id is bound in as associated data, so a secret sealed for box A and replayed
into box B's down branch does not open. Both sides import this module (it needs `cryptography`,
which the base protocol package does not).
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .commands import SealedSecret

_INFO = b"polewatch credential rotation v1"


class SealError(ValueError):
    """The sealed secret cannot be opened: garbled, tampered with, or sealed for another key or box."""


def _key(shared: bytes, ephemeral: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral, info=_INFO).derive(shared)


def seal(public_key: ec.EllipticCurvePublicKey, plaintext: bytes, device_id: str) -> SealedSecret:
    if not isinstance(public_key.curve, ec.SECP256R1):
        raise SealError(f"the box's key is on {public_key.curve.name}, expected secp256r1 (P-256)")
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    point = ephemeral.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    nonce = os.urandom(12)
    key = _key(ephemeral.exchange(ec.ECDH(), public_key), point)
    ciphertext = AESGCM(key).encrypt(nonce, plaintext, device_id.encode())
    b64 = base64.b64encode
    return SealedSecret(
        ephemeral_key=b64(point).decode(), nonce=b64(nonce).decode(), ciphertext=b64(ciphertext).decode()
    )


def open_sealed(private_key: ec.EllipticCurvePrivateKey, sealed: SealedSecret, device_id: str) -> bytes:
    try:
        point = base64.b64decode(sealed.ephemeral_key, validate=True)
        nonce = base64.b64decode(sealed.nonce, validate=True)
        ciphertext = base64.b64decode(sealed.ciphertext, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SealError(f"not base64: {exc}") from None
    if len(nonce) != 12:
        raise SealError(f"the nonce is {len(nonce)} bytes, expected 12")
    try:
        ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError as exc:
        raise SealError(f"the ephemeral key is not a P-256 point: {exc}") from None
    key = _key(private_key.exchange(ec.ECDH(), ephemeral), point)
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, device_id.encode())
    except InvalidTag:
        raise SealError(
            "the secret does not open with this box's key (tampered with, garbled, or sealed for another box)"
        ) from None
