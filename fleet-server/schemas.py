"""The JSON shapes of the REST API and the live stream.

Separate from the ORM models so the database can change without changing what the console and
other clients see; the OpenAPI document is generated from these.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from polewatch.protocol import Box, Health

from .models import CameraHealthEvent, Device, Event
from .pagination import Page

log = logging.getLogger(__name__)


class FieldError(BaseModel):
    loc: list[str] = Field(description="Where: e.g. ['query', 'limit'].")
    msg: str
    type: str


class ErrorOut(BaseModel):
    """Every error response: a human-readable reason, and for invalid input what was wrong where."""

    detail: str = Field(description="What went wrong, in a sentence.")
    errors: list[FieldError] | None = Field(default=None, description="Invalid input only: one entry per problem.")


class DeviceOut(BaseModel):
    device_id: str
    online: bool = Field(description="From the device's last presence message (retained online / last-will offline).")
    presence_reason: str | None = Field(description="Why the presence last changed, as the device said.")
    agent_version: str | None
    first_seen: datetime
    last_seen: datetime = Field(description="Server time of the last message from the device.")
    last_presence_at: datetime | None
    last_health: Health | None = Field(description="The newest health report (by the device's clock).")
    last_health_at: datetime | None

    @classmethod
    def of(cls, row: Device) -> DeviceOut:
        health: Health | None = None
        if row.last_health is not None:
            try:
                health = Health.model_validate(row.last_health)
            except ValidationError as exc:  # stored by an older or newer contract: show the rest
                log.warning("stored health does not validate", extra={"device_id": row.device_id, "error": str(exc)})
        return cls(
            device_id=row.device_id,
            online=row.online,
            presence_reason=row.presence_reason,
            agent_version=row.agent_version,
            first_seen=row.first_seen,
            last_seen=row.last_seen,
            last_presence_at=row.last_presence_at,
            last_health=health,
            last_health_at=row.last_health_at,
        )


class DevicePage(Page[DeviceOut]):
    """By device id."""


class EventOut(BaseModel):
    """One stored detection message."""

    id: int = Field(description="Server row id: increases with arrival; the pagination and SSE cursor.")
    message_id: str
    device_id: str
    seq: int
    camera_id: str
    event_id: str = Field(description="Track id: the rows of one tracked object share it.")
    phase: str = Field(description="start, update or end")
    label: str
    score: float
    box: Box
    frame_width: int
    frame_height: int
    frame_time: datetime
    sent_at: datetime
    received_at: datetime

    @classmethod
    def of(cls, row: Event) -> EventOut:
        return cls(
            id=row.id,
            message_id=row.message_id,
            device_id=row.device_id,
            seq=row.seq,
            camera_id=row.camera_id,
            event_id=row.event_id,
            phase=row.phase,
            label=row.label,
            score=row.score,
            box=Box(x1=row.x1, y1=row.y1, x2=row.x2, y2=row.y2),
            frame_width=row.frame_width,
            frame_height=row.frame_height,
            frame_time=row.frame_time,
            sent_at=row.sent_at,
            received_at=row.received_at,
        )


class EventPage(Page[EventOut]):
    """Newest first."""


class CameraHealthOut(BaseModel):
    """One stored camera_health message: a condition of one camera started or ended."""

    id: int = Field(description="Server row id: increases with arrival; the pagination cursor.")
    message_id: str
    device_id: str
    seq: int
    camera_id: str
    condition: str = Field(description="covered, frozen, blurred, shifted or low_fps")
    phase: str = Field(description="start or end")
    since: datetime = Field(description="When the condition began; an end repeats its start's.")
    until: datetime | None = Field(description="End only: when the picture was good again.")
    variant: str | None = Field(description="Covered only: black, white or uniform.")
    value: float | None
    threshold: float | None
    detail: str | None
    sent_at: datetime
    received_at: datetime

    @classmethod
    def of(cls, row: CameraHealthEvent) -> CameraHealthOut:
        return cls(
            id=row.id,
            message_id=row.message_id,
            device_id=row.device_id,
            seq=row.seq,
            camera_id=row.camera_id,
            condition=row.condition,
            phase=row.phase,
            since=row.since,
            until=row.until,
            variant=row.variant,
            value=row.value,
            threshold=row.threshold,
            detail=row.detail,
            sent_at=row.sent_at,
            received_at=row.received_at,
        )


class CameraHealthPage(Page[CameraHealthOut]):
    """Newest first."""


class IngestStatsOut(BaseModel):
    connected: bool = Field(description="Whether the ingest is connected and subscribed right now.")
    connects: int = Field(description="Successful connections since start (1 + reconnects).")
    last_connected_at: datetime | None
    last_error: str | None = Field(description="Why the last connection failed or dropped.")
    accepted: int = Field(description="Messages stored (first delivery of each message id).")
    accepted_by_kind: dict[str, int]
    duplicates: int = Field(description="Redeliveries of a message id already stored; not stored again.")
    rejected: int
    rejected_by_reason: dict[str, int] = Field(
        description="bad_topic, empty_payload, not_json, not_object, unknown_kind, invalid_<kind>, "
        "device_mismatch, kind_mismatch, store_error"
    )
    store_retries: int = Field(
        description="Batches retried because the database was unavailable; their messages stayed "
        "unacknowledged in the broker meanwhile."
    )


class HealthzOut(BaseModel):
    status: str = Field(description="'ok' when the database answers.")
    database: str
    mqtt_connected: bool


def jsonable(model: BaseModel | list[Any]) -> Any:
    """A model (or list of models) as plain JSON types, for the stream."""
    if isinstance(model, list):
        return [m.model_dump(mode="json") if isinstance(m, BaseModel) else m for m in model]
    return model.model_dump(mode="json")
