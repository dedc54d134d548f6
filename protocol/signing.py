"""Signed directives from the fleet: canonical JSON and Ed25519, shared by the signer and the verifier.

A directive that re-points a box to another broker is the most dangerous thing the server can send:
whoever can forge one owns the fleet. Broker access alone must therefore not be enough, so the
directive is signed with the fleet's command key (held by the server, never on the broker) and each
box checks it against the public key pinned at enrolment.

The signature covers canonical JSON bytes of the directive (keys sorted, no whitespace, UTF-8, no
floats), computed from the JSON object exactly as it travels: the verifier canonicalises what it
received *before* parsing it into a model, so nothing a parser fills in or normalises is trusted
unsigned. Floats are refused because their text form is the one thing two JSON encoders disagree on.

This module needs `cryptography` (in the agent's and the server's extras), so the base package
(`polewatch.protocol`) does not import it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KEY_ID_PREFIX = "ed25519:"


class SignatureError(ValueError):
    """A signature that does not verify, or a key or value that cannot be used; `reason` is a stable code."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _check_canonical(value: Any, where: str) -> None:
    if isinstance(value, float):
        raise SignatureError(f"{where}: floats are not allowed in a signed document (use an integer or a string)",
                             reason="malformed")  # fmt: skip
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise SignatureError(f"{where}: object keys must be strings", reason="malformed")
            _check_canonical(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_canonical(item, f"{where}[{index}]")
    elif not (value is None or isinstance(value, str | int | bool)):
        raise SignatureError(f"{where}: {type(value).__name__} is not a JSON value", reason="malformed")


def canonical_json(value: dict[str, Any]) -> bytes:
    """The one byte string both sides sign and verify for `value`."""
    _check_canonical(value, "directive")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short stable name of a public key (SHA-256 of its raw bytes), so a box can say which key it trusts."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KEY_ID_PREFIX + hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def load_public_key(pem: bytes | str) -> Ed25519PublicKey:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"not a PEM public key: {exc}", reason="bad_key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"the key is {type(key).__name__}, not an Ed25519 public key", reason="bad_key")
    return key


def sign(document: dict[str, Any], private_key: Ed25519PrivateKey) -> tuple[str, str]:
    """(signature in base64, key id) of `document`'s canonical bytes."""
    signature = private_key.sign(canonical_json(document))
    return base64.b64encode(signature).decode(), key_id(private_key.public_key())


def verify(document: dict[str, Any], signature: str, signed_key_id: str, public_key: Ed25519PublicKey) -> None:
    """Raise SignatureError unless `document` was signed, unchanged, by `public_key`.

    reason: `unknown_key` (signed by another key than the pinned one), `tampered` (the bytes or the
    signature were changed), `malformed` (not canonicalisable, signature not base64).
    """
    trusted = key_id(public_key)
    if signed_key_id != trusted:
        raise SignatureError(f"signed by key {signed_key_id[:80]!r}; this box trusts only {trusted!r}",
                             reason="unknown_key")  # fmt: skip
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("the signature is not base64", reason="malformed") from None
    data = canonical_json(document)
    try:
        public_key.verify(raw, data)
    except InvalidSignature:
        raise SignatureError("the signature does not match the directive: it was changed after signing",
                             reason="tampered") from None  # fmt: skip
