"""The enrolment exchange: a technician's one-time code and a box's public key in, an identity out.

HTTP rather than MQTT, because before enrolment the box has no broker account. The code is the
only secret the technician carries; it is single-use, expires, and is bound to one pole, so a code
photographed off a work order is worth one box on that pole for a few days and nothing else. The
box's private key is made on the box and never travels: the request carries a certificate signing
request (which also proves the box holds the key), and the box's identity on later re-runs is the
fingerprint of that key, so running the command twice never makes a second device.

Both the server and the technician's tool import these models; neither imports the other.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from .topics import DEVICE_ID_PATTERN

# Crockford-like alphabet without the look-alikes (0/O, 1/I/L, U): read aloud over a bad phone line
# and typed on a phone keyboard at the top of a ladder.
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_GROUPS = 3
CODE_GROUP_LEN = 4
CODE_PATTERN = rf"^[{CODE_ALPHABET}]{{{CODE_GROUP_LEN}}}(-[{CODE_ALPHABET}]{{{CODE_GROUP_LEN}}}){{{CODE_GROUPS - 1}}}$"
_CODE_RE = re.compile(CODE_PATTERN)


def new_enrolment_code() -> str:
    """A fresh code like `K7QF-9XM2-PAH4`: 12 symbols of 30, about 59 bits."""
    groups = ["".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_GROUP_LEN)) for _ in range(CODE_GROUPS)]
    return "-".join(groups)


def normalise_code(text: str) -> str:
    """Accept what a person types: any case, with spaces or without dashes (look-alike letters are never issued)."""
    compact = re.sub(r"[\s-]", "", text.upper())
    if len(compact) == CODE_GROUPS * CODE_GROUP_LEN:
        compact = "-".join(compact[i : i + CODE_GROUP_LEN] for i in range(0, len(compact), CODE_GROUP_LEN))
    if not _CODE_RE.match(compact):
        raise ValueError(
            f"{text!r} is not an enrolment code: expected {CODE_GROUPS} groups of {CODE_GROUP_LEN} letters and "
            "digits, like K7QF-9XM2-PAH4 (it is printed on the work order)"
        )
    return compact


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BoxFacts(_Strict):
    """What the server records about the hardware at enrolment (for the registry and support)."""

    hostname: str = Field(max_length=255)
    machine: str = Field(max_length=64, description="CPU architecture, e.g. aarch64.")
    model: str | None = Field(default=None, max_length=255, description="Board model, e.g. 'Raspberry Pi 5'.")
    os: str | None = Field(default=None, max_length=255)
    agent_version: str = Field(max_length=64)
    inference_providers: list[str] = Field(default_factory=list, max_length=16)
    checks_failed: list[str] = Field(default_factory=list, max_length=32, description="Names of failed box checks.")


class CameraFacts(_Strict):
    """What the camera probe found, so the server knows the camera before the first heartbeat."""

    camera_id: str = Field(min_length=1, max_length=64)
    url_redacted: str = Field(max_length=2048, description="The camera URL without its password.")
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    codec: str = Field(max_length=32)
    fps: float = Field(ge=0)


class EnrolmentRequest(_Strict):
    code: str = Field(description="The one-time code from the work order.")
    csr_pem: str = Field(max_length=8192, description="PEM certificate signing request made with the box's own key.")
    box: BoxFacts
    cameras: list[CameraFacts] = Field(default_factory=list, max_length=16)

    @field_validator("code")
    @classmethod
    def _code(cls, value: str) -> str:
        return normalise_code(value)


class BrokerGrant(_Strict):
    host: str
    port: int = Field(ge=1, le=65535)
    tls: bool
    ca_pem: str | None = Field(default=None, description="The CA the box must trust for the broker (TLS).")
    username: str
    password: str = Field(description="Shown once: the server keeps only the broker's hash of it.")
    client_certificate_pem: str | None = Field(default=None, description="Signed from the box's request.")
    certificate_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="The broker's certificate listener: the box logs in there with its client certificate "
        "(and key) alone, and the password is then only a fallback for the password listener.",
    )  # fmt: skip


class EnrolmentGrant(_Strict):
    """The server's answer: who the box is now, where to connect, and what to run."""

    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    pole_id: str
    site: str | None = None
    box_fingerprint: str = Field(description="SHA-256 of the box's public key: its identity across re-runs.")
    broker: BrokerGrant
    server_url: str = Field(description="Where the box reports over HTTP (later enrolment steps, updates).")
    config: dict[str, Any] | None = Field(
        default=None, description="The remote config document, if the code had a preset."
    )
    command_key_pem: str | None = Field(
        default=None, max_length=2000,
        description="The fleet's command-signing public key (Ed25519, PEM): the box pins it and follows a signed "
        "directive (move_server) only when this key verifies it.",
    )
    reissued: bool = Field(
        default=False, description="True when this box had enrolled before: same identity, new password."
    )
    enrolled_at: AwareDatetime


class EnrolmentRefused(_Strict):
    """Why the server would not enrol (HTTP 4xx body): a stable reason and what the technician should do."""

    reason: str = Field(description="expired | used | unknown | revoked | invalid | rate_limited")
    detail: str
