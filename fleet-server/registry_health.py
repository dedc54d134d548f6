"""Health roll-up of registered devices: per device, per site and for the whole fleet.

Each camera is up, degraded or down, from what the server last heard:
- down: the box is offline or silent (a blind spot whatever the camera does), the newest health
  report says the camera is not connected (or its `state` says down), or a camera the registry
  expects is missing from the report;
- degraded: connected, but a camera-health condition (covered, frozen, blurred, shifted, low_fps)
  is open on it;
- up: otherwise.
A device is `never_seen` (registered, no message yet), `offline` (presence offline, or nothing heard
for `stale_after_s`), `degraded` (online with a camera not up) or `ok`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.orm import Session, aliased

from .models import CameraHealthEvent, Device, Pole, RegisteredDevice

STALE_AFTER_S = 300.0  # five missed 60 s heartbeats: the box is gone even if its presence says online
DOWN_STATES = frozenset({"down", "disconnected", "offline", "error"})


@dataclass(frozen=True)
class DeviceHealth:
    state: str
    online: bool
    last_seen: datetime | None
    cameras: dict[str, str]

    def counts(self) -> Counter[str]:
        return Counter(self.cameras.values())


@dataclass
class Rollup:
    devices: Counter[str] = field(default_factory=Counter)
    cameras: Counter[str] = field(default_factory=Counter)
    blind_spots: list[tuple[str, str]] = field(default_factory=list)  # (device, camera) not up

    def add(self, device_id: str, health: DeviceHealth) -> None:
        self.devices[health.state] += 1
        for camera, state in health.cameras.items():
            self.cameras[state] += 1
            if state != "up":
                self.blind_spots.append((device_id, camera))


def open_conditions(session: Session, device_ids: Iterable[str] | None = None) -> dict[str, set[str]]:
    """Cameras with a camera-health condition still open (a start without its end and without a
    newer start of the same condition), by device."""
    row = CameraHealthEvent
    end, newer = aliased(CameraHealthEvent), aliased(CameraHealthEvent)
    ended = select(end.id).where(
        and_(end.phase == "end", end.device_id == row.device_id, end.camera_id == row.camera_id,
             end.condition == row.condition, end.since == row.since)
    ).exists()  # fmt: skip
    superseded = select(newer.id).where(
        and_(newer.phase == "start", newer.device_id == row.device_id, newer.camera_id == row.camera_id,
             newer.condition == row.condition, newer.since > row.since)
    ).exists()  # fmt: skip
    query = select(row.device_id, row.camera_id).where(row.phase == "start", ~ended, ~superseded).distinct()
    if device_ids is not None:
        query = query.where(row.device_id.in_(list(device_ids)))
    found: dict[str, set[str]] = {}
    for device_id, camera_id in session.execute(query):
        found.setdefault(device_id, set()).add(camera_id)
    return found


def _camera_state(report: dict[str, Any]) -> str:
    state = report.get("state")
    if isinstance(state, str) and state.lower() in DOWN_STATES:
        return "down"
    return "up" if report.get("connected", False) else "down"


def device_health(
    expected: list[str],
    heard: Device | None,
    degraded_cameras: set[str],
    *,
    now: datetime,
    stale_after_s: float = STALE_AFTER_S,
) -> DeviceHealth:
    if heard is None:
        return DeviceHealth("never_seen", False, None, dict.fromkeys(expected, "down"))
    online = heard.online and now - heard.last_seen <= timedelta(seconds=stale_after_s)
    reports = {str(c.get("camera_id")): c for c in (heard.last_health or {}).get("cameras", []) if isinstance(c, dict)}
    cameras: dict[str, str] = {}
    for camera in sorted(set(expected) | set(reports)):
        if not online or camera not in reports:
            cameras[camera] = "down"
        else:
            state = _camera_state(reports[camera])
            cameras[camera] = "degraded" if state == "up" and camera in degraded_cameras else state
    if not online:
        return DeviceHealth("offline", False, heard.last_seen, cameras)
    state = "ok" if all(s == "up" for s in cameras.values()) else "degraded"
    return DeviceHealth(state, online, heard.last_seen, cameras)


def health_of(
    session: Session, devices: list[RegisteredDevice], *, now: datetime | None = None
) -> dict[str, DeviceHealth]:
    """Health of these registered devices, in two queries whatever their number."""
    now = now or datetime.now(timezone.utc)
    ids = [d.device_id for d in devices]
    heard = {d.device_id: d for d in session.scalars(select(Device).where(Device.device_id.in_(ids)))} if ids else {}
    degraded = open_conditions(session, ids) if ids else {}
    return {
        d.device_id: device_health(list(d.cameras), heard.get(d.device_id), degraded.get(d.device_id, set()), now=now)
        for d in devices
    }


def rollup(session: Session, *, site_id: str | None = None, now: datetime | None = None) -> Rollup:
    """Roll-up of the active registered devices (of one site, or the whole fleet)."""
    now = now or datetime.now(timezone.utc)
    query = (
        select(RegisteredDevice.device_id, RegisteredDevice.cameras, Device)
        .outerjoin(Device, Device.device_id == RegisteredDevice.device_id)
        .where(RegisteredDevice.status == "active")
    )
    if site_id is not None:
        query = query.join(Pole, Pole.pole_id == RegisteredDevice.pole_id).where(Pole.site_id == site_id)
    degraded = open_conditions(session)
    result = Rollup()
    for device_id, cameras, heard in session.execute(query):
        result.add(device_id, device_health(list(cameras), heard, degraded.get(device_id, set()), now=now))
    result.blind_spots.sort()
    return result
