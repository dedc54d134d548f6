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

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import String, and_, cast, select
from sqlalchemy.orm import Session, aliased

from . import camera_signature
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
        self.add_many([device_id], health)

    def add_many(self, device_ids: list[str], health: DeviceHealth) -> None:
        """Devices that share one judgement."""
        self.devices[health.state] += len(device_ids)
        for camera, state in health.cameras.items():
            self.cameras[state] += len(device_ids)
            if state != "up":
                self.blind_spots.extend((device_id, camera) for device_id in device_ids)


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


def judge(
    expected: list[str], heard: bool, online: bool, last_seen: datetime | None, reports: Any, degraded: set[str]
) -> DeviceHealth:
    """The health of one device from what was heard: `reports` is the newest health's camera list."""
    if not heard:
        return DeviceHealth("never_seen", False, None, dict.fromkeys(expected, "down"))
    by_id = {str(c.get("camera_id")): c for c in reports or () if isinstance(c, dict)}
    cameras: dict[str, str] = {}
    for camera in sorted(set(expected) | set(by_id)):
        if not online or camera not in by_id:
            cameras[camera] = "down"
        else:
            state = _camera_state(by_id[camera])
            cameras[camera] = "degraded" if state == "up" and camera in degraded else state
    if not online:
        return DeviceHealth("offline", False, last_seen, cameras)
    state = "ok" if all(s == "up" for s in cameras.values()) else "degraded"
    return DeviceHealth(state, True, last_seen, cameras)


def health_of(
    session: Session, devices: list[RegisteredDevice], *, now: datetime | None = None,
    stale_after_s: float = STALE_AFTER_S,
) -> dict[str, DeviceHealth]:  # fmt: skip
    """Health of these registered devices, in two queries whatever their number."""
    now = now or datetime.now(timezone.utc)
    ids = [d.device_id for d in devices]
    heard = {d.device_id: d for d in session.scalars(select(Device).where(Device.device_id.in_(ids)))} if ids else {}
    degraded = open_conditions(session, ids) if ids else {}
    out = {}
    for d in devices:
        h = heard.get(d.device_id)
        online = h is not None and h.online and now - h.last_seen <= timedelta(seconds=stale_after_s)
        reports = (h.last_health or {}).get("cameras") if h is not None else None
        out[d.device_id] = judge(
            list(d.cameras), h is not None, online, h.last_seen if h else None, reports,
            degraded.get(d.device_id, set()),
        )  # fmt: skip
    return out


def rollup(
    session: Session, *, site_id: str | None = None, now: datetime | None = None, stale_after_s: float = STALE_AFTER_S
) -> Rollup:
    """Roll-up of the active registered devices (of one site, or the whole fleet).

    Reads columns, not ORM objects, reads each report's cameras from the signature kept beside it
    (camera_signature.py), and judges freshness in SQL: at 10,000 devices, building objects, then parsing
    whole reports, then extracting the cameras in SQL were most of the time (bench/registry.py)."""
    now = now or datetime.now(timezone.utc)
    cutoff = now - timedelta(seconds=stale_after_s)
    query = (
        select(
            RegisteredDevice.device_id,
            cast(RegisteredDevice.cameras, String()).label("expected"),
            Device.device_id.is_not(None).label("heard"),
            and_(Device.online, Device.last_seen >= cutoff).label("online"),
            Device.camera_signature,
        )
        .outerjoin(Device, Device.device_id == RegisteredDevice.device_id)
        .where(RegisteredDevice.status == "active")
    )
    if site_id is not None:
        query = query.join(Pole, Pole.pole_id == RegisteredDevice.pole_id).where(Pole.site_id == site_id)
    degraded = {device: frozenset(cameras) for device, cameras in open_conditions(session).items()}
    # Devices in the same condition (same expected cameras, same report signature, same open
    # conditions) share one judgement; only the blind spots need each device's id.
    groups: dict[tuple[Any, ...], list[str]] = {}
    for device_id, expected, heard, online, cameras in session.execute(query):
        key = (expected, bool(heard), bool(online), cameras, degraded.get(device_id))
        members = groups.get(key)
        if members is None:
            groups[key] = [device_id]
        else:
            members.append(device_id)
    result = Rollup()
    for (expected, heard, online, cameras, open_here), members in groups.items():
        health = judge(json.loads(expected), heard, online, None, camera_signature.parse(cameras), set(open_here or ()))
        result.add_many(members, health)
    result.blind_spots.sort()
    return result
