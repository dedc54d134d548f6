"""The `move_server` directive: re-point a box (or the whole fleet) to another command centre.

What is signed is the directive (`MoveDirective`, canonical JSON, see signing.py); it travels in a
`move_server` message (messages.MoveServer) retained on each box's `down/move_server` topic, so a box
that was off when ops issued the move gets it on its next connect. The box checks, in this order:
the key (the one pinned at enrolment), the signature, the shape, the target (this box or `*`), the
validity window and that the serial is newer than every move it applied; any failure is a refusal
with one of the reason codes below and the box stays where it is.

The serial is fleet-wide and only goes up: a recorded directive published again (by someone with
broker access, or by a server restored from an old backup) can never move a box back.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from .signing import SignatureError, sign, verify
from .topics import DEVICE_ID_PATTERN

DIRECTIVE_TYPE: Literal["polewatch/move_server/v1"] = "polewatch/move_server/v1"
FLEET = "*"
TARGET_PATTERN = rf"^(\*|{DEVICE_ID_PATTERN[1:-1]})$"
# A pole's clock may be off by this much (it has no RTC battery on every model): tolerated both ways.
CLOCK_SKEW = timedelta(minutes=10)

RefusalReason = Literal[
    "no_trusted_key", "unknown_key", "tampered", "malformed", "not_for_this_box", "not_yet_valid", "expired",
    "replayed",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MoveEndpoint(_Strict):
    host: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9_.:\[\]-]+$",
                      description="The new broker's host name or address (as in its TLS certificate).")  # fmt: skip
    port: int = Field(ge=1, le=65535)
    tls: bool = Field(default=True, description="Connect with TLS (false: plain MQTT, for a private network).")
    ca_pem: str | None = Field(
        default=None, max_length=20000,
        description="The CA the box must trust for the new broker; null: keep the CA it trusts now.",
    )


class MoveDirective(_Strict):
    """What ops sign: where to go, for whom, when it is valid, and its place in the order of moves."""

    type: Literal["polewatch/move_server/v1"] = DIRECTIVE_TYPE
    serial: int = Field(ge=1, le=2**31 - 1, description="Fleet-wide; a box applies only a serial above its last.")
    target: str = Field(pattern=TARGET_PATTERN, description="The device id, or '*' for every box that receives it.")
    mqtt: MoveEndpoint
    server_url: str | None = Field(default=None, max_length=2048, description="The new server's HTTP URL, if any.")
    issued_at: AwareDatetime
    not_before: AwareDatetime
    expires_at: AwareDatetime

    def document(self) -> dict[str, Any]:
        """The JSON object that is signed and sent (no floats, datetimes as ISO strings)."""
        return self.model_dump(mode="json")


class MoveRefused(Exception):
    """Why a box will not move: `reason` is a stable code (RefusalReason), the text says what to do."""

    def __init__(self, reason: RefusalReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def sign_directive(directive: MoveDirective, private_key: Any) -> tuple[dict[str, Any], str, str]:
    """(document, signature, key id) to put in a MoveServer body."""
    document = directive.document()
    signature, kid = sign(document, private_key)
    return document, signature, kid


def check_directive(
    document: dict[str, Any],
    signature: str,
    signed_key_id: str,
    public_key: Any | None,
    *,
    device_id: str,
    last_serial: int,
    now: datetime,
) -> MoveDirective:
    """The directive if this box must follow it; MoveRefused otherwise. The signature is checked over the
    bytes as received before anything in them is believed."""
    if public_key is None:
        raise MoveRefused("no_trusted_key", "this box has no command key (trust.command_key in its config); "
                          "re-enrol it or install the fleet's public key")  # fmt: skip
    try:
        verify(document, signature, signed_key_id, public_key)
    except SignatureError as exc:
        reason: RefusalReason = "unknown_key" if exc.reason == "unknown_key" else (
            "tampered" if exc.reason == "tampered" else "malformed")  # fmt: skip
        raise MoveRefused(reason, str(exc)) from None
    try:
        directive = MoveDirective.model_validate(document)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "directive"
        raise MoveRefused("malformed", f"{where}: {first['msg']}") from None
    if directive.target not in (FLEET, device_id):
        raise MoveRefused("not_for_this_box", f"the directive is for {directive.target!r}, this box is {device_id!r}")
    if now + CLOCK_SKEW < directive.not_before:
        raise MoveRefused("not_yet_valid", f"valid from {directive.not_before.isoformat()}; the box's clock reads "
                          f"{now.isoformat()}")  # fmt: skip
    if now - CLOCK_SKEW > directive.expires_at:
        raise MoveRefused("expired", f"expired at {directive.expires_at.isoformat()}; the box's clock reads "
                          f"{now.isoformat()}: issue a new move")  # fmt: skip
    if directive.serial <= last_serial:
        raise MoveRefused("replayed", f"serial {directive.serial} is not above {last_serial}, the last move this "
                          "box applied: an old directive is never followed again")  # fmt: skip
    return directive
