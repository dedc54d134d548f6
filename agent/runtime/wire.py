"""The wire form of what the agent sees: detections, rule events, camera health, snapshots.

Pure conversions (monotonic to UTC time, pixels to normalised boxes, a picture to a redacted
JPEG) apart from the loops that call them, so tests can check them without running an agent.
"""

from __future__ import annotations

import base64
import time
from datetime import datetime, timezone

from polewatch.protocol import Box, CameraHealth, LineCounts, RuleEvent, Snapshot

from ..capture.camera_health import CameraHealthChange
from ..config import CameraConfig
from ..inference.events import Phase, Picture
from ..inference.rules import RuleHit
from ..inference.snapshot import Redaction, snapshot_jpeg


def _box(box: tuple[float, float, float, float], width: int, height: int) -> Box:
    x1, y1, x2, y2 = box
    return Box(
        x1=min(max(x1 / width, 0.0), 1.0),
        y1=min(max(y1 / height, 0.0), 1.0),
        x2=min(max(x2 / width, 0.0), 1.0),
        y2=min(max(y2 / height, 0.0), 1.0),
    )


def _wall(mono: float) -> datetime:
    """A time.monotonic() reading as a UTC datetime (the box's clock may be wrong; it is what we have)."""
    return datetime.fromtimestamp(time.time() - (time.monotonic() - mono), timezone.utc)


def camera_health_body(change: CameraHealthChange, since: datetime | None = None) -> CameraHealth:
    """The wire form of a checker's change; the checker works in monotonic time, the wire in UTC.

    `since`: the wall time its start was sent with, so that an end names its start exactly (a
    second conversion would differ by the time between two clock readings, or by an NTP step).
    """
    return CameraHealth(
        camera_id=change.camera_id,
        condition=change.condition,
        phase=change.phase,
        since=since or _wall(change.since),
        until=None if change.until is None else _wall(change.until),
        variant=change.variant,
        value=None if change.value is None else round(change.value, 4),
        threshold=None if change.threshold is None else round(change.threshold, 4),
        detail=change.detail[:300],
    )


def rule_event(
    camera_id: str, hit: RuleHit, width: int, height: int, frame_time: datetime, counts_since: datetime
) -> RuleEvent:
    """The wire form of a rule's event: box normalised like a detection's, counts only on crossings."""
    return RuleEvent(
        camera_id=camera_id,
        rule_id=hit.rule_id,
        rule_type=hit.rule_type,
        event=hit.event,
        event_id=hit.event_id,
        label=hit.label,
        box=_box(hit.box, width, height),
        frame_time=frame_time,
        frame_width=width,
        frame_height=height,
        direction=hit.direction,
        counts=None
        if hit.counts is None
        else {label: LineCounts(a_to_b=a, b_to_a=b) for label, (a, b) in hit.counts.items()},
        counts_since=None if hit.counts is None else counts_since,
        dwell_s=None if hit.dwell_s is None else round(hit.dwell_s, 2),
    )


def redaction_for(camera: CameraConfig, width: int, height: int) -> Redaction:
    privacy = camera.privacy
    return Redaction.from_polygons(
        privacy.masks,
        (width, height),
        normalised=privacy.units == "normalised",
        blur_labels=privacy.blur_labels,
        blur_part=privacy.blur_part,
    )


# What a snapshot message adds around its JPEG: base64 (4/3) and the envelope with the event's fields.
SNAPSHOT_OVERHEAD_BYTES = 2048


def snapshot_jpeg_budget(max_message: int) -> int:
    """The largest JPEG whose snapshot message the outbox still takes (a small outbox cap takes small
    messages: a picture must shrink to fit rather than be refused)."""
    return max(1024, (max_message - SNAPSHOT_OVERHEAD_BYTES) * 3 // 4)


def snapshot_body(
    camera: CameraConfig,
    event_id: str,
    phase: Phase,
    label: str,
    picture: Picture,
    max_bytes: int | None = None,
) -> Snapshot:
    """Redact and encode an event's picture: the one way a frame's pixels become a message.

    `max_bytes` lowers the camera's own JPEG cap (`snapshots.max_bytes`) to what the outbox takes.
    """
    height, width = picture.image.shape[:2]
    settings = camera.snapshots
    data, jpeg_width, jpeg_height, done = snapshot_jpeg(
        picture.image,
        picture.detections,
        redaction_for(camera, width, height),
        max_bytes=settings.max_bytes if max_bytes is None else min(settings.max_bytes, max_bytes),
        max_width=settings.max_width,
        quality=settings.quality,
    )
    return Snapshot(
        camera_id=camera.id,
        event_id=event_id,
        phase=phase,
        label=label,
        score=round(min(max(picture.score, 0.0), 1.0), 4),
        box=_box(picture.box, width, height),
        frame_time=datetime.fromtimestamp(picture.wall_time, timezone.utc),
        width=jpeg_width,
        height=jpeg_height,
        jpeg=base64.b64encode(data).decode("ascii"),
        redactions=done,
    )
