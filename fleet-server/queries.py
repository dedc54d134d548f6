"""The read side: what the API and the live stream ask of the database.

Plain functions over a Session, run in worker threads by their callers, so a slow query never
blocks the event loop that carries the MQTT session and the live streams.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .models import Device, Event
from .schemas import DeviceOut, EventOut, EventPage


def list_devices(session: Session) -> list[DeviceOut]:
    rows = session.scalars(select(Device).order_by(Device.device_id))
    return [DeviceOut.of(row) for row in rows]


def get_device(session: Session, device_id: str) -> DeviceOut | None:
    row = session.get(Device, device_id)
    return DeviceOut.of(row) if row is not None else None


def list_events(
    session: Session,
    *,
    device_id: str | None = None,
    label: str | None = None,
    limit: int = 50,
    before: int | None = None,
) -> EventPage:
    """Newest first; `before` is the keyset cursor (an id), stable while new events arrive."""
    query = select(Event).order_by(Event.id.desc()).limit(limit + 1)
    if device_id is not None:
        query = query.where(Event.device_id == device_id)
    if label is not None:
        query = query.where(Event.label == label)
    if before is not None:
        query = query.where(Event.id < before)
    rows = list(session.scalars(query))
    more = len(rows) > limit
    items = [EventOut.of(row) for row in rows[:limit]]
    return EventPage(items=items, next_before=items[-1].id if more and items else None)


def events_after(session: Session, after: int, limit: int) -> list[EventOut]:
    """Oldest first from `after` (exclusive): the replay a resuming stream sends."""
    rows = session.scalars(select(Event).where(Event.id > after).order_by(Event.id).limit(limit))
    return [EventOut.of(row) for row in rows]


def latest_events(session: Session, count: int) -> list[EventOut]:
    """The newest `count` events, oldest first (the order a feed appends them in)."""
    rows = list(session.scalars(select(Event).order_by(Event.id.desc()).limit(count)))
    return [EventOut.of(row) for row in reversed(rows)]


def max_event_id(session: Session) -> int:
    return int(session.scalar(select(func.coalesce(func.max(Event.id), 0))) or 0)
