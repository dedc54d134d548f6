"""The remote config document: merging it over the box's own file, and keeping it across restarts.

The box's file (`--config`) says who the box is and how it reaches the broker; the document the
server publishes retained on `down/config` (protocol/settings.py: `AgentSettings`) says what it
watches and how. The effective config is the file with the document laid over it: objects merge
key by key, anything else (numbers, strings, lists such as `cameras`) replaces the file's value
whole. A camera listed by the document keeps the `reference` view its id has in the file (a local
path the server cannot know).

The last applied document is saved in the state folder, so a box that restarts while the broker is
unreachable comes back with what it last applied, not with its factory file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from polewatch.protocol import AgentSettings

from .config import AgentConfig, ConfigError
from .state_files import move_aside, read_json, write_json

log = logging.getLogger("polewatch.agent.config")

STATE_FILE = "remote-config.json"
REMOTE_KEYS = frozenset(AgentSettings.model_fields)


class ConfigRefused(ConfigError):
    """A document that cannot be applied; `field` is the first field at fault (dotted), if known."""

    def __init__(self, message: str, field: str | None) -> None:
        super().__init__(message)
        self.field = field


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _merge(base.get(key), value)
        return merged
    return patch


def refusal(exc: ValidationError, prefix: str = "") -> ConfigRefused:
    """A refusal naming the field and the problem of every error (at most five)."""
    parts: list[str] = []
    first: str | None = None
    for err in exc.errors(include_url=False)[:5]:
        if not err["loc"] and err["type"] == "value_error":
            # A check across sections: its text starts with the field it is about.
            text = str(err["ctx"]["error"])
            where = text.split(":", 1)[0] if ":" in text else None
            parts.append(text)
        else:
            where = prefix + ".".join(str(p) for p in err["loc"])
            parts.append(f"{where}: {err['msg']}")
        first = first or where
    return ConfigRefused("; ".join(parts), first)


def effective_config(local: AgentConfig, settings: AgentSettings) -> AgentConfig:
    """The box's file with the document laid over it, validated as a whole (raises ConfigRefused)."""
    # A top-level null is "not set" too (every top-level key is optional); nested nulls are values.
    patch = {k: v for k, v in settings.model_dump(exclude_unset=True).items() if v is not None}
    references = {cam.id: cam.reference for cam in local.cameras if cam.reference is not None}
    for camera in patch.get("cameras") or []:
        if camera["id"] in references:
            camera["reference"] = references[camera["id"]]
    data = _merge(local.model_dump(), patch)
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise refusal(exc) from None


@dataclass(frozen=True)
class Refusal:
    version: int
    reason: str


class RemoteConfigStore:
    """The applied document and the last refused version, in one atomically replaced file."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE
        self.applied_version: int | None = None
        self.applied: AgentSettings | None = None
        self.refused: Refusal | None = None
        self._load()

    def _load(self) -> None:
        raw = read_json(self.path)
        if raw is None:
            return
        try:
            applied = raw.get("applied")
            if applied is not None:
                self.applied = AgentSettings.model_validate(applied["config"])
                self.applied_version = int(applied["version"])
            refused = raw.get("refused")
            if refused is not None:
                self.refused = Refusal(int(refused["version"]), str(refused["reason"]))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:  # ValidationError is a ValueError
            self.applied = self.applied_version = self.refused = None
            move_aside(self.path, f"not a saved config document: {exc}")

    def _save(self) -> None:
        applied: dict[str, Any] | None = None
        refused: dict[str, Any] | None = None
        if self.applied is not None:
            document = self.applied.model_dump(mode="json", exclude_unset=True)
            applied = {"version": self.applied_version, "config": document}
        if self.refused is not None:
            refused = {"version": self.refused.version, "reason": self.refused.reason}
        write_json(self.path, {"applied": applied, "refused": refused})

    def save_applied(self, version: int, settings: AgentSettings) -> None:
        self.applied_version, self.applied = version, settings
        if self.refused is not None and self.refused.version <= version:
            self.refused = None
        self._save()

    def save_refused(self, version: int, reason: str) -> None:
        self.refused = Refusal(version, reason)
        self._save()
