"""Message bodies of each outbox priority class, for the outbox tests (no server imports here).

There is no snapshot message kind yet (a later issue brings pictures), so snapshots are presence
bodies carrying a picture-sized payload, put with `priority=Priority.SNAPSHOT`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from polewatch.agent.config import OutboxConfig
from polewatch.agent.uplink.outbox import Outbox
from polewatch.agent.uplink.priority import Priority
from polewatch.protocol import Body, Box, CameraStatus, Detection, Health, Presence


def alert(n: int) -> Detection:
    return Detection(
        event_id=f"trk-{n}",
        phase="start",
        camera_id="cam1",
        label="person",
        score=0.8,
        box=Box(x1=0.1, y1=0.2, x2=0.3, y2=0.6),
        frame_time=datetime.now(timezone.utc),
        frame_width=768,
        frame_height=576,
    )


def telemetry(n: int) -> Health:
    return Health(
        agent_version=f"test-{n}",
        uptime_s=float(n),
        cpu_percent=12.5,
        memory_percent=40.0,
        memory_rss_bytes=200_000_000,
        disk_percent=30.0,
        disk_free_bytes=10_000_000_000,
        cameras=[CameraStatus(camera_id="cam1", connected=True, fps=10.0)],
    )


def health_event(n: int) -> Presence:
    return Presence(state="online", reason=f"event-{n}")


def snapshot(n: int, size: int = 2000) -> Presence:
    return Presence(state="online", reason=f"snap-{n}-" + "x" * size)


MAKERS: dict[Priority, Any] = {
    Priority.TELEMETRY: telemetry,
    Priority.SNAPSHOT: snapshot,
    Priority.HEALTH_EVENT: health_event,
    Priority.ALERT: alert,
}


def body_of(priority: Priority, n: int) -> Body:
    body: Body = MAKERS[priority](n)
    return body


def open_outbox(path: Path, device: str = "pole-a", *, retry_s: float = 0.2, **config: Any) -> Outbox:
    """An outbox with a test config: `group_commit_ms` defaults to 2 so blocking `add`s stay quick,
    and a disk that failed is tried again every `retry_s`."""
    values: dict[str, Any] = {"group_commit_ms": 2.0}
    values.update(config)
    return Outbox(path, device, config=OutboxConfig(**values), retry_s=retry_s)
