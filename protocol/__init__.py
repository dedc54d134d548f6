"""The wire contract shared by the agent and the fleet server.

Both sides import this package and never each other, so the contract is the only coupling between
what runs on a pole and what runs in the command centre.
"""

from . import topics
from .ids import message_id_time_ms, new_message_id
from .messages import (
    KINDS,
    SCHEMA_VERSION,
    AnyMessage,
    Body,
    Box,
    CameraStatus,
    Detection,
    DetectionMessage,
    Health,
    HealthMessage,
    MessageError,
    OutboxStatus,
    Presence,
    PresenceMessage,
    PriorityCounts,
    build,
    decode,
    encode,
    json_schema,
)

__all__ = [
    "KINDS",
    "SCHEMA_VERSION",
    "AnyMessage",
    "Body",
    "Box",
    "CameraStatus",
    "Detection",
    "DetectionMessage",
    "Health",
    "HealthMessage",
    "MessageError",
    "OutboxStatus",
    "Presence",
    "PresenceMessage",
    "PriorityCounts",
    "build",
    "decode",
    "encode",
    "json_schema",
    "message_id_time_ms",
    "new_message_id",
    "topics",
]
