"""Sealing a rotated broker password to one box's key, and the shape of `rotate_credentials`.

The password travels on the box's down branch, which the broker stores and may log: only the box's
own key may open it, only for that box's device id, and a garbled or tampered one is refused with a
reason rather than taken half-read."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from polewatch.protocol.commands import RotateCredentialsArgs, SealedSecret
from polewatch.protocol.sealing import SealError, open_sealed, seal

SECRET = b'{"username": "box-1~ab12", "password": "s3cret"}'


def test_only_the_box_it_was_sealed_for_opens_it() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    sealed = seal(key.public_key(), SECRET, "box-1")
    assert SECRET not in base64.b64decode(sealed.ciphertext)
    assert open_sealed(key, sealed, "box-1") == SECRET
    with pytest.raises(SealError, match="does not open with this box's key"):
        open_sealed(key, sealed, "box-2")  # replayed into another box's down branch
    with pytest.raises(SealError, match="does not open with this box's key"):
        open_sealed(ec.generate_private_key(ec.SECP256R1()), sealed, "box-1")  # another box's key
    assert seal(key.public_key(), SECRET, "box-1").ephemeral_key != sealed.ephemeral_key  # one-time keys


def test_garbled_or_tampered_secrets_are_refused_with_a_reason() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    sealed = seal(key.public_key(), SECRET, "box-1")
    raw = bytearray(base64.b64decode(sealed.ciphertext))
    raw[0] ^= 0x80
    tampered = sealed.model_copy(update={"ciphertext": base64.b64encode(bytes(raw)).decode()})
    with pytest.raises(SealError, match="tampered"):
        open_sealed(key, tampered, "box-1")
    with pytest.raises(SealError, match="not base64"):
        open_sealed(key, sealed.model_copy(update={"nonce": "!!"}), "box-1")
    with pytest.raises(SealError, match="the nonce is 3 bytes"):
        open_sealed(key, sealed.model_copy(update={"nonce": "AAAA"}), "box-1")
    with pytest.raises(SealError, match="not a P-256 point"):
        open_sealed(key, sealed.model_copy(update={"ephemeral_key": "AAAA"}), "box-1")
    with pytest.raises(SealError, match="secp384r1"):
        seal(ec.generate_private_key(ec.SECP384R1()).public_key(), SECRET, "box-1")


def test_rotate_credentials_carries_exactly_the_credential_of_its_kind() -> None:
    sealed = SealedSecret(ephemeral_key="AA", nonce="AA", ciphertext="AA")
    assert RotateCredentialsArgs(kind="password", sealed_login=sealed).certificate_pem is None
    assert RotateCredentialsArgs(kind="certificate", certificate_pem="PEM").sealed_login is None
    for wrong in (
        {"kind": "password"},
        {"kind": "password", "certificate_pem": "PEM"},
        {"kind": "certificate", "certificate_pem": "PEM", "sealed_login": sealed.model_dump()},
        {"kind": "token", "certificate_pem": "PEM"},
        {"kind": "certificate", "certificate_pem": "PEM", "extra": 1},
    ):
        with pytest.raises(ValidationError):
            RotateCredentialsArgs.model_validate(wrong)
