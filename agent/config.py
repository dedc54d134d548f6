"""The agent's configuration file: what a box needs to know to watch its cameras and report.

A bad config must stop the agent before it touches a camera, with a message that names the field
and the problem, because the person reading it is a technician on a ladder, not a developer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

# The remote-settable models live in the wire contract (the server validates documents with them);
# they are re-exported here, where the agent's code has always found them.
from polewatch.protocol.settings import (
    DEFAULT_LABELS,
    DEFAULT_LEFT_BEHIND_LABELS,
    MIN_OUTBOX_BYTES,
    RULE_ID_PATTERN,
    AgentSettings,
    BlurredConfig,
    CameraHealthConfig,
    CameraSettings,
    CoveredConfig,
    DetectSettings,
    FrozenConfig,
    LeftBehindRuleConfig,
    LineRuleConfig,
    LogLevel,
    LoiterRuleConfig,
    LowFpsConfig,
    MotionConfig,
    OutboxConfig,
    OutboxTtl,
    PrivacyConfig,
    RuleConfig,
    ShiftedConfig,
    SnapshotConfig,
    ZoneRuleConfig,
    check_rule_labels,
    unique_camera_ids,
)
from polewatch.protocol.topics import DEVICE_ID_PATTERN

__all__ = [
    "DEFAULT_LABELS",
    "DEFAULT_LEFT_BEHIND_LABELS",
    "MIN_OUTBOX_BYTES",
    "RULE_ID_PATTERN",
    "AgentConfig",
    "AgentSettings",
    "BlurredConfig",
    "CameraConfig",
    "CameraHealthConfig",
    "CameraSettings",
    "ConfigError",
    "CoveredConfig",
    "DetectConfig",
    "DetectSettings",
    "FrozenConfig",
    "LeftBehindRuleConfig",
    "LineRuleConfig",
    "LogLevel",
    "LoiterRuleConfig",
    "LowFpsConfig",
    "MotionConfig",
    "MoveConfig",
    "MqttConfig",
    "OutboxConfig",
    "OutboxTtl",
    "PrivacyConfig",
    "RuleConfig",
    "ShiftedConfig",
    "SnapshotConfig",
    "TlsConfig",
    "TrustConfig",
    "ZoneRuleConfig",
    "load_config",
    "parse_config",
]


class ConfigError(ValueError):
    """The config file is missing, unreadable or invalid; the text says where and what."""


class _Strict(BaseModel):
    # A typo in a key is a silent misconfiguration on a pole nobody will visit for months: refuse it.
    model_config = ConfigDict(extra="forbid")


class TlsConfig(_Strict):
    ca_file: Path = Field(description="CA certificate that signed the broker's certificate.")
    cert_file: Path | None = Field(default=None, description="Client certificate, for certificate login.")
    key_file: Path | None = None


class MqttConfig(_Strict):
    host: str = Field(min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    keepalive_s: int = Field(default=30, ge=5, le=600)
    tls: TlsConfig | None = None
    reconnect_max_s: float = Field(default=30.0, gt=0, description="Ceiling of the reconnect backoff.")


class TrustConfig(_Strict):
    command_key: Path = Field(
        description="The fleet's command-signing public key (PEM, Ed25519), written at enrolment: signed "
        "directives (move_server) are followed only when it verifies them."
    )


class MoveConfig(_Strict):
    fallback_after_s: float = Field(
        default=600.0, ge=1, le=7 * 24 * 3600,
        description="After a move, if the new broker has not accepted a connection within this time, go "
        "back to the broker the box left and report it (docs/protocol.md, moving the command centre).",
    )


class CameraConfig(CameraSettings):
    """A camera as the box's own file gives it: the remote settings plus its local reference view."""

    reference: Path | None = Field(
        default=None,
        description="The camera's reference view saved at provisioning (`polewatch provision probe-camera "
        "--reference`); without it the first clear frame after start is the reference.",
    )


class DetectConfig(DetectSettings):
    """Detection settings plus what only the box knows: its model file and how many threads it has."""

    model: Path | None = Field(default=None, description="ONNX model with its .json sidecar; default NanoDet-m.")
    threads: int | None = Field(default=None, ge=1, le=16)


class AgentConfig(_Strict):
    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    state_dir: Path = Field(description="Where the outbox and other state live (outside the release dir).")
    mqtt: MqttConfig
    cameras: list[CameraConfig] = Field(min_length=1)
    detect: DetectConfig = Field(default_factory=DetectConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    health_interval_s: float = Field(default=10.0, ge=1, le=3600)
    log_level: LogLevel = "INFO"
    trust: TrustConfig | None = None
    move: MoveConfig = Field(default_factory=MoveConfig)

    @field_validator("cameras")
    @classmethod
    def _unique_ids(cls, cameras: list[CameraConfig]) -> list[CameraConfig]:
        unique_camera_ids(list(cameras))
        return cameras

    @model_validator(mode="after")
    def _rules_see_their_labels(self) -> AgentConfig:
        check_rule_labels(list(self.cameras), self.detect.labels)
        return self


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        if not err["loc"] and err["type"] == "value_error":
            # A check across sections (rules against detect.labels): its message starts with the field.
            lines.append(f"  {err['ctx']['error']}")
            continue
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "config") -> AgentConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level, got {type(data).__name__}")
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source} is invalid:\n{_describe(exc)}") from None


def load_config(path: Path) -> AgentConfig:
    """Read and validate a YAML config; relative paths in it are taken from the file's folder."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    config = parse_config(data, str(path))
    base = path.parent
    updates: dict[str, Any] = {}
    if not config.state_dir.is_absolute():
        updates["state_dir"] = base / config.state_dir
    cameras = []
    for cam in config.cameras:
        paths: dict[str, Any] = {}
        if "://" not in cam.url and not Path(cam.url).is_absolute():
            paths["url"] = str(base / cam.url)
        if cam.reference is not None and not cam.reference.is_absolute():
            paths["reference"] = base / cam.reference
        cameras.append(cam.model_copy(update=paths) if paths else cam)
    updates["cameras"] = cameras
    if config.trust is not None and not config.trust.command_key.is_absolute():
        updates["trust"] = TrustConfig(command_key=base / config.trust.command_key)
    return config.model_copy(update=updates)
