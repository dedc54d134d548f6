"""Commands the fleet server may send a box, and the arguments each one takes.

A command travels as a `command` message whose `name` and `args` are plain JSON, so that a box
that does not know a command (an older agent) can still read its id and refuse it with a reason
instead of dropping it as malformed. The server validates `args` with the model below before
publishing; the agent validates them again and refuses with the field and the problem.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

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


# name -> its arguments; the agent refuses any other name as unknown.
COMMAND_ARGS: dict[str, type[_Args]] = {
    "restart_camera": RestartCameraArgs,
    "snapshot": SnapshotArgs,
    "set_log_level": SetLogLevelArgs,
}
COMMANDS: tuple[str, ...] = tuple(COMMAND_ARGS)
