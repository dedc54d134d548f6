"""The read side: what the API and the live stream ask of the database.

Plain functions over a Session, run in worker threads by their callers, so a slow query never
blocks the event loop that carries the MQTT session and the live streams.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, and_, func, select
from sqlalchemy.orm import Session, aliased

from .models import CameraHealthEvent, Device, Event
from .pagination import DEFAULT_LIMIT, split
from .schemas import CameraHealthOut, CameraHealthPage, DeviceOut, DevicePage, EventOut, EventPage


def all_devices(session: Session, only: Select[Any] | None = None) -> list[DeviceOut]:
    """Every device (the live stream's snapshot); `only`: a select of the device ids to keep (scope.py)."""
    query = select(Device).order_by(Device.device_id)
    if only is not None:
        query = query.where(Device.device_id.in_(only))
    return [DeviceOut.of(row) for row in session.scalars(query)]


def list_devices(
    session: Session,
    *,
    limit: int = DEFAULT_LIMIT,
    after: str | None = None,
    online: bool | None = None,
    only: Select[Any] | None = None,
) -> DevicePage:
    """By device id; `after` is the keyset cursor (the last id of the previous page)."""
    query = select(Device).order_by(Device.device_id).limit(limit + 1)
    if only is not None:
        query = query.where(Device.device_id.in_(only))
    if after is not None:
        query = query.where(Device.device_id > after)
    if online is not None:
        query = query.where(Device.online == online)
    rows, more = split(list(session.scalars(query)), limit)
    return DevicePage(items=[DeviceOut.of(r) for r in rows], next=rows[-1].device_id if more and rows else None)


def get_device(session: Session, device_id: str) -> DeviceOut | None:
    row = session.get(Device, device_id)
    return DeviceOut.of(row) if row is not None else None


def list_events(
    session: Session,
    *,
    device_id: str | None = None,
    label: str | None = None,
    limit: int = DEFAULT_LIMIT,
    before: int | None = None,
    only: Select[Any] | None = None,
) -> EventPage:
    """Newest first; `before` is the keyset cursor (an id), stable while new events arrive."""
    query = select(Event).order_by(Event.id.desc()).limit(limit + 1)
    if only is not None:
        query = query.where(Event.device_id.in_(only))
    if device_id is not None:
        query = query.where(Event.device_id == device_id)
    if label is not None:
        query = query.where(Event.label == label)
    if before is not None:
        query = query.where(Event.id < before)
    rows, more = split(list(session.scalars(query)), limit)
    return EventPage(items=[EventOut.of(r) for r in rows], next=str(rows[-1].id) if more and rows else None)


def events_after(session: Session, after: int, limit: int, only: Select[Any] | None = None) -> list[EventOut]:
    """Oldest first from `after` (exclusive): the replay a resuming stream sends."""
    query = select(Event).where(Event.id > after).order_by(Event.id).limit(limit)
    if only is not None:
        query = query.where(Event.device_id.in_(only))
    return [EventOut.of(row) for row in session.scalars(query)]


def latest_events(session: Session, count: int, only: Select[Any] | None = None) -> list[EventOut]:
    """The newest `count` events, oldest first (the order a feed appends them in)."""
    query = select(Event).order_by(Event.id.desc()).limit(count)
    if only is not None:
        query = query.where(Event.device_id.in_(only))
    rows = list(session.scalars(query))
    return [EventOut.of(row) for row in reversed(rows)]


def max_event_id(session: Session) -> int:
    return int(session.scalar(select(func.coalesce(func.max(Event.id), 0))) or 0)


def list_camera_health(
    session: Session,
    *,
    device_id: str | None = None,
    camera_id: str | None = None,
    condition: str | None = None,
    open_only: bool = False,
    limit: int = DEFAULT_LIMIT,
    before: int | None = None,
    only: Select[Any] | None = None,
) -> CameraHealthPage:
    """Newest first, keyset-paginated by id like the events.

    `open_only`: the conditions still open, i.e. starts without their end (same device, camera,
    condition and since) and without a newer start of the same condition, which supersedes them
    (an agent restarted while the condition held, so its old run never sent the end).
    """
    row = CameraHealthEvent
    query = select(row).order_by(row.id.desc()).limit(limit + 1)
    if only is not None:
        query = query.where(row.device_id.in_(only))
    if device_id is not None:
        query = query.where(row.device_id == device_id)
    if camera_id is not None:
        query = query.where(row.camera_id == camera_id)
    if condition is not None:
        query = query.where(row.condition == condition)
    if before is not None:
        query = query.where(row.id < before)
    if open_only:
        end = aliased(CameraHealthEvent)
        ended = (
            select(end.id)
            .where(
                and_(
                    end.phase == "end",
                    end.device_id == row.device_id,
                    end.camera_id == row.camera_id,
                    end.condition == row.condition,
                    end.since == row.since,
                )
            )
            .exists()
        )
        newer = aliased(CameraHealthEvent)
        superseded = (
            select(newer.id)
            .where(
                and_(
                    newer.phase == "start",
                    newer.device_id == row.device_id,
                    newer.camera_id == row.camera_id,
                    newer.condition == row.condition,
                    newer.since > row.since,
                )
            )
            .exists()
        )
        query = query.where(row.phase == "start", ~ended, ~superseded)
    rows, more = split(list(session.scalars(query)), limit)
    items = [CameraHealthOut.of(r) for r in rows]
    return CameraHealthPage(items=items, next=str(rows[-1].id) if more and rows else None)
