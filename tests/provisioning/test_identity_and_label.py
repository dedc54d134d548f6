"""The box's key (made once, owner-only, same identity on every re-run) and the label it ends with."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import cv2
import pytest
from cryptography import x509

from polewatch.protocol.enrolment import new_enrolment_code, normalise_code
from polewatch.provisioning.identity import IdentityError, fingerprint, key_path, load_or_create_key, signing_request
from polewatch.provisioning.label import LabelFacts, write_label


def test_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    key, made = load_or_create_key(tmp_path)
    again, made_again = load_or_create_key(tmp_path)
    assert made and not made_again
    assert fingerprint(key.public_key()) == fingerprint(again.public_key())
    assert stat.S_IMODE(key_path(tmp_path).stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path(tmp_path).parent.stat().st_mode) == 0o700
    csr = x509.load_pem_x509_csr(signing_request(key).encode())
    assert csr.is_signature_valid
    assert fingerprint(csr.public_key()) == fingerprint(key.public_key())  # type: ignore[arg-type]


def test_damaged_key_is_reported_not_replaced(tmp_path: Path) -> None:
    load_or_create_key(tmp_path)
    key_path(tmp_path).write_bytes(b"not a key")
    with pytest.raises(IdentityError, match="revoke the old device"):
        load_or_create_key(tmp_path)
    assert key_path(tmp_path).read_bytes() == b"not a key"  # never silently a new identity


def test_codes_survive_how_people_type_them() -> None:
    code = new_enrolment_code()
    assert normalise_code(code.lower().replace("-", " ")) == code
    assert normalise_code(code.replace("-", "")) == code
    with pytest.raises(ValueError, match="printed on the work order"):
        normalise_code("K7QF-9XM2")
    with pytest.raises(ValueError):
        normalise_code("K7QF-9XM2-PAH0")  # 0 is not in the alphabet (looks like O)


def test_label_png_and_pdf_carry_a_readable_qr(tmp_path: Path) -> None:
    facts = LabelFacts("BTG-017", "bontang-p017-3f2a", "Bontang / Api-Api", "2026-11-23", "https://fleet.example")
    png, pdf = write_label(facts, tmp_path)
    assert pdf.read_bytes().startswith(b"%PDF")
    image = cv2.imread(str(png))
    assert image is not None
    text, _, _ = cv2.QRCodeDetector().detectAndDecode(image)
    assert json.loads(text) == {
        "polewatch": 1,
        "pole": "BTG-017",
        "device": "bontang-p017-3f2a",
        "site": "Bontang / Api-Api",
        "enrolled": "2026-11-23",
    }
