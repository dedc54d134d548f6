"""Commands the fleet server may send a box, and the arguments each one takes.

A command travels as a `command` message whose `name` and `args` are plain JSON, so that a box
that does not know a command (an older agent) can still read its id and refuse it with a reason
instead of dropping it as malformed. The server validates `args` with the model below before
publishing; the agent validates them again and refuses with the field and the problem.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .settings import CAMERA_ID_PATTERN, LogLevel


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RestartCameraArgs(_Args):
    """Close and reopen one camera's stream and restart its detection and health loops."""

    camera_id: str = Field(pattern=CAMERA_ID_PATTERN)


class SnapshotArgs(_Args):
    """Take a picture now: the camera's newest frame, as a JPEG written in the box's state folder."""

    camera_id: str = Field(pattern=CAMERA_ID_PATTERN)
    max_width: int | None = Field(
        default=None, ge=16, le=8192, description="Scale the picture down to at most this many pixels wide."
    )
    quality: int = Field(default=85, ge=10, le=100, description="JPEG quality.")


class SetLogLevelArgs(_Args):
    """Change the agent's log level until the next restart or config document."""

    level: LogLevel


class SealedSecret(_Args):
    """A secret only the box can read: sealed to its own EC P-256 key (protocol/sealing.py), so the
    broker, its logs and anyone reading the down branch see ciphertext only."""

    ephemeral_key: str = Field(max_length=200, description="The sender's one-time P-256 public point, base64.")
    nonce: str = Field(max_length=40, description="AES-GCM nonce, base64 (12 bytes).")
    ciphertext: str = Field(max_length=4000, description="AES-GCM ciphertext and tag, base64.")


class RotateCredentialsArgs(_Args):
    """Switch to a new broker credential: connect with it, answer over the new connection, and fall
    back to the old one (answering refused, with the broker's reason) if the broker refuses it."""

    kind: Literal["password", "certificate"]
    sealed_login: SealedSecret | None = Field(
        default=None, description="password: the new username and password, sealed to the box's key."
    )
    certificate_pem: str | None = Field(
        default=None, max_length=8000,
        description="certificate: the new client certificate for the box's own key (public: no secret travels).",
    )  # fmt: skip

    @model_validator(mode="after")
    def _one_credential(self) -> RotateCredentialsArgs:
        wanted = "sealed_login" if self.kind == "password" else "certificate_pem"
        other = "certificate_pem" if self.kind == "password" else "sealed_login"
        if getattr(self, wanted) is None or getattr(self, other) is not None:
            raise ValueError(f"kind {self.kind} carries {wanted} and not {other}")
        return self


# name -> its arguments; the agent refuses any other name as unknown.
COMMAND_ARGS: dict[str, type[_Args]] = {
    "restart_camera": RestartCameraArgs,
    "snapshot": SnapshotArgs,
    "set_log_level": SetLogLevelArgs,
    "rotate_credentials": RotateCredentialsArgs,
}
COMMANDS: tuple[str, ...] = tuple(COMMAND_ARGS)
