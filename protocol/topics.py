"""The MQTT topic tree.

    polewatch/v1/<device_id>/up/<kind>      device -> server
    polewatch/v1/<device_id>/down/<kind>    server -> device

Direction sits right after the device id so a broker ACL confines a box with exactly one pattern
per direction (`polewatch/v1/%u/up/#` write, `polewatch/v1/%u/down/#` read). The version is part of
the path so a v2 fleet can share a broker with v1 boxes during a migration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

ROOT = "polewatch"
VERSION = "v1"
PREFIX = f"{ROOT}/{VERSION}"

Direction = Literal["up", "down"]

# Device ids appear in topics and in broker usernames: keep them to characters that are safe in both
# (no MQTT wildcards, no separators, no spaces).
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)


class TopicError(ValueError):
    """A topic that is not part of the Polewatch v1 tree."""


def check_device_id(device_id: str) -> str:
    if not _DEVICE_ID_RE.match(device_id):
        raise ValueError(
            f"device id {device_id!r} is not valid: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return device_id


def up(device_id: str, kind: str) -> str:
    return f"{PREFIX}/{check_device_id(device_id)}/up/{kind}"


def down(device_id: str, kind: str) -> str:
    return f"{PREFIX}/{check_device_id(device_id)}/down/{kind}"


def all_up() -> str:
    """What the server subscribes to: every device's up branch."""
    return f"{PREFIX}/+/up/#"


def device_down_filter(device_id: str) -> str:
    """What a device subscribes to: its own down branch only."""
    return f"{PREFIX}/{check_device_id(device_id)}/down/#"


@dataclass(frozen=True)
class ParsedTopic:
    device_id: str
    direction: Direction
    kind: str


def parse(topic: str) -> ParsedTopic:
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != ROOT:
        raise TopicError(f"topic {topic!r} is not of the form {PREFIX}/<device>/<up|down>/<kind>")
    if parts[1] != VERSION:
        raise TopicError(f"topic {topic!r} has version {parts[1]!r}; this build speaks {VERSION}")
    direction = parts[3]
    if direction not in ("up", "down"):
        raise TopicError(f"topic {topic!r} has direction {direction!r}; expected 'up' or 'down'")
    try:
        device_id = check_device_id(parts[2])
    except ValueError as exc:
        raise TopicError(str(exc)) from exc
    return ParsedTopic(device_id=device_id, direction="up" if direction == "up" else "down", kind=parts[4])
