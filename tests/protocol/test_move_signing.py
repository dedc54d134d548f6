"""The signed move directive: canonical bytes, Ed25519 signatures, and every reason a box refuses one."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from polewatch.protocol import MoveServer, MoveServerMessage, build, decode, encode, topics
from polewatch.protocol.move import MoveDirective, MoveEndpoint, MoveRefused, check_directive, sign_directive
from polewatch.protocol.signing import SignatureError, canonical_json, key_id, load_public_key, public_pem

NOW = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)
KEY = Ed25519PrivateKey.generate()


def directive(**changes: Any) -> MoveDirective:
    fields: dict[str, Any] = {
        "serial": 7, "target": "*", "mqtt": MoveEndpoint(host="mqtt.bontang.example", port=8883),
        "issued_at": NOW, "not_before": NOW, "expires_at": NOW + timedelta(days=30),
    }  # fmt: skip
    fields.update(changes)
    return MoveDirective(**fields)


def check(document: dict[str, Any], signature: str, kid: str, *, last: int = 0, now: datetime = NOW,
          device: str = "pole-a") -> MoveDirective:  # fmt: skip
    return check_directive(document, signature, kid, KEY.public_key(), device_id=device, last_serial=last, now=now)


def test_canonical_json_is_independent_of_key_order_and_spacing() -> None:
    a = {"b": 1, "a": {"y": "é", "x": [True, None]}}
    b = {"a": {"x": [True, None], "y": "é"}, "b": 1}
    assert canonical_json(a) == canonical_json(b) == '{"a":{"x":[true,null],"y":"é"},"b":1}'.encode()


def test_floats_are_refused_in_a_signed_document() -> None:
    with pytest.raises(SignatureError, match=r"directive\.port: floats are not allowed"):
        canonical_json({"port": 8883.0})


def test_a_signed_directive_verifies_after_the_wire_round_trip() -> None:
    document, signature, kid = sign_directive(directive(), KEY)
    body = MoveServer(command_id="move-7-pole-a", directive=document, signature=signature, key_id=kid)
    sent = encode(build(body, device_id="pole-a", seq=1))
    received = decode(sent, topics.parse(topics.down("pole-a", "move_server")), kinds=("move_server",))
    assert isinstance(received, MoveServerMessage)
    got = check(received.body.directive, received.body.signature, received.body.key_id)
    assert got == directive() and kid == key_id(KEY.public_key())


def test_a_changed_byte_is_tampering() -> None:
    document, signature, kid = sign_directive(directive(), KEY)
    forged = copy.deepcopy(document)
    forged["mqtt"]["host"] = "evil.example"
    with pytest.raises(MoveRefused) as caught:
        check(forged, signature, kid)
    assert caught.value.reason == "tampered"


def test_another_key_is_unknown_even_with_a_valid_signature() -> None:
    other = Ed25519PrivateKey.generate()
    document, signature, kid = sign_directive(directive(), other)
    with pytest.raises(MoveRefused) as caught:
        check(document, signature, kid)
    assert caught.value.reason == "unknown_key" and key_id(KEY.public_key()) in caught.value.detail
    # Claiming the trusted key's id does not help: the signature does not verify with it.
    with pytest.raises(MoveRefused) as caught:
        check(document, signature, key_id(KEY.public_key()))
    assert caught.value.reason == "tampered"


@pytest.mark.parametrize(
    ("changes", "last", "device", "reason"),
    [
        ({"expires_at": NOW - timedelta(hours=1)}, 0, "pole-a", "expired"),
        ({"not_before": NOW + timedelta(hours=1)}, 0, "pole-a", "not_yet_valid"),
        ({}, 7, "pole-a", "replayed"),
        ({}, 9, "pole-a", "replayed"),
        ({"target": "pole-b"}, 0, "pole-a", "not_for_this_box"),
    ],
)
def test_validly_signed_but_refused(changes: dict[str, Any], last: int, device: str, reason: str) -> None:
    document, signature, kid = sign_directive(directive(**changes), KEY)
    with pytest.raises(MoveRefused) as caught:
        check(document, signature, kid, last=last, device=device)
    assert caught.value.reason == reason


def test_clock_skew_of_a_few_minutes_is_tolerated_and_the_own_target_accepted() -> None:
    document, signature, kid = sign_directive(directive(target="pole-a", not_before=NOW + timedelta(minutes=5)), KEY)
    assert check(document, signature, kid, last=6).serial == 7


def test_a_signed_document_that_is_not_a_directive_is_malformed() -> None:
    document = {"type": "polewatch/move_server/v1", "serial": 8}
    from polewatch.protocol.signing import sign

    signature, kid = sign(document, KEY)
    with pytest.raises(MoveRefused) as caught:
        check(document, signature, kid)
    assert caught.value.reason == "malformed" and "target" in caught.value.detail


def test_public_key_pem_round_trip_and_a_wrong_key_file() -> None:
    pem = public_pem(KEY.public_key())
    assert key_id(load_public_key(pem)) == key_id(KEY.public_key())
    with pytest.raises(SignatureError, match="not a PEM public key"):
        load_public_key("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
