"""The agent's configuration file: what a box needs to know to watch its cameras and report.

A bad config must stop the agent before it touches a camera, with a message that names the field
and the problem, because the person reading it is a technician on a ladder, not a developer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ByteSize, ConfigDict, Field, SecretStr, ValidationError, field_validator

from polewatch.protocol.topics import DEVICE_ID_PATTERN

# What the command centre acts on by default: people and vehicles.
DEFAULT_LABELS = ("person", "bicycle", "car", "motorcycle", "bus", "truck")


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


class CameraConfig(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    url: str = Field(min_length=1, description="rtsp://..., http://..., or a path to a video file.")
    loop: bool = Field(default=False, description="Play a file source in a loop, at its own frame rate.")

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if "://" in value and not value.startswith(("rtsp://", "rtsps://", "http://", "https://", "file://")):
            raise ValueError("url scheme must be rtsp, rtsps, http(s) or file, or a plain path to a video file")
        return value


class DetectConfig(_Strict):
    fps: float = Field(default=5.0, gt=0, le=30, description="Frames per second run through the detector.")
    model: Path | None = Field(default=None, description="ONNX model with its .json sidecar; default NanoDet-m.")
    score_threshold: float = Field(default=0.35, gt=0, lt=1)
    labels: list[str] = Field(default_factory=lambda: list(DEFAULT_LABELS), min_length=1)
    threads: int | None = Field(default=None, ge=1, le=16)


class OutboxTtl(_Strict):
    """Seconds a message of each class may wait before it is given up; null: until sent or evicted."""

    telemetry: float | None = Field(default=None, gt=0)
    snapshot: float | None = Field(default=None, gt=0)
    health_event: float | None = Field(default=None, gt=0)
    alert: float | None = Field(default=None, gt=0)


# Smallest outbox worth having: room for a few thousand events besides the write-ahead log.
MIN_OUTBOX_BYTES = 256 * 1024


class OutboxConfig(_Strict):
    """The on-disk outbox (docs/outbox.md): its hard size cap, time-to-live per class, replay pace."""

    max_bytes: ByteSize = Field(
        default=ByteSize(256 * 1024 * 1024),
        ge=MIN_OUTBOX_BYTES,
        description="Hard cap on the outbox files on disk: bytes, or a size such as '256MiB'.",
    )
    ttl_s: OutboxTtl = Field(default_factory=OutboxTtl)
    replay_rate: float | None = Field(
        default=100.0,
        gt=0,
        description="Messages per second sent from the backlog after a reconnect; null: as fast as the broker acks.",
    )
    group_commit_ms: float = Field(
        default=20.0, ge=0, le=200, description="Longest wait to gather messages into one disk commit (fsync)."
    )
    memory_alerts: int = Field(
        default=1000, ge=0, le=100_000, description="Alerts kept in RAM while the disk cannot be written."
    )
    compact_interval_s: float = Field(default=600.0, ge=10, description="How often to check for compaction.")


class AgentConfig(_Strict):
    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    state_dir: Path = Field(description="Where the outbox and other state live (outside the release dir).")
    mqtt: MqttConfig
    cameras: list[CameraConfig] = Field(min_length=1)
    detect: DetectConfig = Field(default_factory=DetectConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    health_interval_s: float = Field(default=10.0, ge=1, le=3600)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("cameras")
    @classmethod
    def _unique_ids(cls, cameras: list[CameraConfig]) -> list[CameraConfig]:
        ids = [c.id for c in cameras]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"camera ids must be unique; repeated: {', '.join(dupes)}")
        return cameras


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False):
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
    cameras = [
        cam.model_copy(update={"url": str(base / cam.url)})
        if "://" not in cam.url and not Path(cam.url).is_absolute()
        else cam
        for cam in config.cameras
    ]
    updates["cameras"] = cameras
    return config.model_copy(update=updates)
