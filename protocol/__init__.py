"""The wire contract shared by the agent and the fleet server.

Both sides import this package and never each other, so the contract is the only coupling between
what runs on a pole and what runs in the command centre.
"""

from . import topics
from .ids import message_id_time_ms, new_message_id
from .messages import (
    CORE_KINDS,
    KINDS,
    SCHEMA_VERSION,
    AnyMessage,
    Body,
    Box,
    CameraHealth,
    CameraHealthMessage,
    CameraStatus,
    Detection,
    DetectionMessage,
    Health,
    HealthMessage,
    LineCounts,
    MessageError,
    OutboxStatus,
    Presence,
    PresenceMessage,
    PriorityCounts,
    RuleEvent,
    RuleEventMessage,
    V1Message,
    build,
    decode,
    encode,
    json_schema,
)

__all__ = [
    "CORE_KINDS",
    "KINDS",
    "SCHEMA_VERSION",
    "AnyMessage",
    "Body",
    "Box",
    "CameraHealth",
    "CameraHealthMessage",
    "CameraStatus",
    "Detection",
    "DetectionMessage",
    "Health",
    "HealthMessage",
    "LineCounts",
    "MessageError",
    "OutboxStatus",
    "Presence",
    "PresenceMessage",
    "PriorityCounts",
    "RuleEvent",
    "RuleEventMessage",
    "V1Message",
    "build",
    "decode",
    "encode",
    "json_schema",
    "message_id_time_ms",
    "new_message_id",
    "topics",
]
