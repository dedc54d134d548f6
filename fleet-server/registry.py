"""The registry: sites, poles, the boxes on them, groups and tags, and the pole history.

Every change is one transaction with its audit entry (audit.record). A box hangs on at most one
pole, a pole carries at most one active box; a move, a removal, a replacement and a revocation
each leave a row in pole_history, which is never rewritten, so "which box was on pole 17 last
March" has an answer.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from . import audit
from .audit import Actor
from .models import DeviceGroup, DeviceGroupMember, DeviceTag, Pole, PoleHistoryEntry, RegisteredDevice, Site
from .pagination import split

PLACE_FIELDS = ("name", "address", "district", "kelurahan", "latitude", "longitude")
DEVICE_FIELDS = ("hardware", "agent_version", "model_version", "cameras")


class RegistryError(Exception):
    """A change the registry refuses; `status` is the HTTP status the API answers with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _now() -> datetime:
    return datetime.now(timezone.utc)


def snapshot(row: Site | Pole | RegisteredDevice, fields: tuple[str, ...]) -> dict[str, Any]:
    return {f: getattr(row, f) for f in fields}


# --- sites and poles ---------------------------------------------------------------------------------


def get_site(session: Session, site_id: str) -> Site:
    site = session.get(Site, site_id)
    if site is None:
        raise RegistryError(404, f"unknown site {site_id!r}")
    return site


def create_site(session: Session, actor: Actor, site_id: str, fields: dict[str, Any]) -> Site:
    if session.get(Site, site_id) is not None:
        raise RegistryError(409, f"site {site_id!r} exists already: change it with PATCH")
    site = Site(site_id=site_id, created_at=_now(), **fields)
    session.add(site)
    session.flush()
    audit.record(session, actor, "site.create", "site", site_id, after=snapshot(site, PLACE_FIELDS))
    return site


def update_site(session: Session, actor: Actor, site_id: str, changes: dict[str, Any]) -> Site:
    site = get_site(session, site_id)
    before = snapshot(site, PLACE_FIELDS)
    for name, value in changes.items():
        setattr(site, name, value)
    audit.record(session, actor, "site.update", "site", site_id, before=before, after=snapshot(site, PLACE_FIELDS))
    return site


def list_sites(
    session: Session, *, limit: int, after: str | None, sites: list[str] | None = None
) -> tuple[list[Site], bool]:
    query = select(Site).order_by(Site.site_id).limit(limit + 1)
    if sites is not None:
        query = query.where(Site.site_id.in_(sites))
    if after is not None:
        query = query.where(Site.site_id > after)
    return split(list(session.scalars(query)), limit)


def get_pole(session: Session, pole_id: str) -> Pole:
    pole = session.get(Pole, pole_id)
    if pole is None:
        raise RegistryError(404, f"unknown pole {pole_id!r}")
    return pole


def create_pole(session: Session, actor: Actor, pole_id: str, site_id: str, fields: dict[str, Any]) -> Pole:
    get_site(session, site_id)
    if session.get(Pole, pole_id) is not None:
        raise RegistryError(409, f"pole {pole_id!r} exists already: change it with PATCH")
    pole = Pole(pole_id=pole_id, site_id=site_id, created_at=_now(), **fields)
    session.add(pole)
    session.flush()
    audit.record(
        session, actor, "pole.create", "pole", pole_id, after={"site_id": site_id, **snapshot(pole, PLACE_FIELDS)}
    )
    return pole


def update_pole(session: Session, actor: Actor, pole_id: str, changes: dict[str, Any]) -> Pole:
    pole = get_pole(session, pole_id)
    if "site_id" in changes:
        get_site(session, changes["site_id"])
    fields = ("site_id", *PLACE_FIELDS)
    before = snapshot(pole, fields)
    for name, value in changes.items():
        setattr(pole, name, value)
    audit.record(session, actor, "pole.update", "pole", pole_id, before=before, after=snapshot(pole, fields))
    return pole


def list_poles(
    session: Session, *, site_id: str | None, limit: int, after: str | None, sites: list[str] | None = None
) -> tuple[list[Pole], bool]:
    query = select(Pole).order_by(Pole.pole_id).limit(limit + 1)
    if sites is not None:
        query = query.where(Pole.site_id.in_(sites))
    if site_id is not None:
        query = query.where(Pole.site_id == site_id)
    if after is not None:
        query = query.where(Pole.pole_id > after)
    return split(list(session.scalars(query)), limit)


# --- devices -----------------------------------------------------------------------------------------


def get_device(session: Session, device_id: str) -> RegisteredDevice:
    device = session.get(RegisteredDevice, device_id)
    if device is None:
        raise RegistryError(404, f"device {device_id!r} is not in the registry")
    return device


def device_on(session: Session, pole_id: str) -> RegisteredDevice | None:
    """The active box on a pole now, if any."""
    query = select(RegisteredDevice).where(RegisteredDevice.pole_id == pole_id, RegisteredDevice.status == "active")
    return session.scalars(query).first()


def _history(session: Session, actor: Actor, device_id: str, pole_id: str | None, action: str, **more: Any) -> None:
    session.add(
        PoleHistoryEntry(at=_now(), device_id=device_id, pole_id=pole_id, action=action, actor=actor.name, **more)
    )


def _check_free(session: Session, pole_id: str, device_id: str) -> None:
    get_pole(session, pole_id)
    current = device_on(session, pole_id)
    if current is not None and current.device_id != device_id:
        raise RegistryError(
            409, f"pole {pole_id!r} carries device {current.device_id!r}: move or replace that one first"
        )


def last_removed_from(session: Session, pole_id: str) -> str | None:
    """The box that left this pole last (replaced, removed, revoked), for the next box's history."""
    query = (
        select(PoleHistoryEntry.device_id)
        .where(PoleHistoryEntry.pole_id == pole_id, PoleHistoryEntry.action.in_(("replaced", "removed", "revoked")))
        .order_by(PoleHistoryEntry.id.desc())
        .limit(1)
    )
    return session.scalars(query).first()


def register_device(
    session: Session, actor: Actor, device_id: str, pole_id: str | None, fields: dict[str, Any],
    *, box_fingerprint: str | None = None,
) -> RegisteredDevice:  # fmt: skip
    if session.get(RegisteredDevice, device_id) is not None:
        raise RegistryError(409, f"device {device_id!r} is registered already")
    if pole_id is not None:
        _check_free(session, pole_id, device_id)
    device = RegisteredDevice(
        device_id=device_id, pole_id=pole_id, status="active", registered_at=_now(), box_fingerprint=box_fingerprint,
        **{"cameras": [], **fields},
    )  # fmt: skip
    session.add(device)
    session.flush()
    if pole_id is not None:
        _history(session, actor, device_id, pole_id, "installed", other_device_id=last_removed_from(session, pole_id))
    audit.record(
        session, actor, "device.register", "device", device_id,
        after={"pole_id": pole_id, **snapshot(device, DEVICE_FIELDS)},
    )  # fmt: skip
    return device


def update_device(session: Session, actor: Actor, device_id: str, changes: dict[str, Any]) -> RegisteredDevice:
    device = get_device(session, device_id)
    before = snapshot(device, DEVICE_FIELDS)
    for name, value in changes.items():
        setattr(device, name, value)
    after = snapshot(device, DEVICE_FIELDS)
    audit.record(session, actor, "device.update", "device", device_id, before=before, after=after)
    return device


def move_device(session: Session, actor: Actor, device_id: str, pole_id: str | None) -> RegisteredDevice:
    """To another pole, or off any pole (None: taken down, kept in the store room)."""
    device = get_device(session, device_id)
    if device.status != "active":
        raise RegistryError(409, f"device {device_id!r} is revoked: it cannot be put on a pole")
    if pole_id == device.pole_id:
        return device
    if pole_id is not None:
        _check_free(session, pole_id, device_id)
    old = device.pole_id
    device.pole_id = pole_id
    if pole_id is None:
        _history(session, actor, device_id, old, "removed")
    else:
        _history(session, actor, device_id, pole_id, "moved", from_pole_id=old)
    audit.record(
        session, actor, "device.move", "device", device_id, before={"pole_id": old}, after={"pole_id": pole_id}
    )
    return device


def revoke_device(session: Session, actor: Actor, device_id: str, *, action: str = "revoked") -> RegisteredDevice:
    """The box's identity ends: off its pole, never enrolled again under this id (the broker side is
    the caller's, see enrolment.py)."""
    device = get_device(session, device_id)
    if device.status == "revoked":
        raise RegistryError(409, f"device {device_id!r} is revoked already")
    old = device.pole_id
    device.status, device.revoked_at, device.pole_id = "revoked", _now(), None
    _history(session, actor, device_id, old, action)
    audit.record(
        session, actor, f"device.{'replace' if action == 'replaced' else 'revoke'}", "device", device_id,
        before={"status": "active", "pole_id": old}, after={"status": "revoked", "pole_id": None},
    )  # fmt: skip
    return device


def list_devices(
    session: Session, *, site_id: str | None = None, pole_id: str | None = None, group_id: str | None = None,
    tag: str | None = None, status: str | None = None, limit: int, after: str | None, sites: list[str] | None = None,
) -> tuple[list[RegisteredDevice], bool]:  # fmt: skip
    query = select(RegisteredDevice).order_by(RegisteredDevice.device_id).limit(limit + 1)
    if sites is not None:
        on_sites = select(Pole.pole_id).where(Pole.site_id.in_(sites))
        query = query.where(RegisteredDevice.pole_id.in_(on_sites))
    if site_id is not None:
        query = query.join(Pole, Pole.pole_id == RegisteredDevice.pole_id).where(Pole.site_id == site_id)
    if pole_id is not None:
        query = query.where(RegisteredDevice.pole_id == pole_id)
    if group_id is not None:
        members = select(DeviceGroupMember.device_id).where(DeviceGroupMember.group_id == group_id)
        query = query.where(RegisteredDevice.device_id.in_(members))
    if tag is not None:
        tagged = select(DeviceTag.device_id).where(DeviceTag.tag == tag)
        query = query.where(RegisteredDevice.device_id.in_(tagged))
    if status is not None:
        query = query.where(RegisteredDevice.status == status)
    if after is not None:
        query = query.where(RegisteredDevice.device_id > after)
    return split(list(session.scalars(query)), limit)


def history(
    session: Session, *, pole_id: str | None = None, device_id: str | None = None, limit: int, before: int | None
) -> tuple[list[PoleHistoryEntry], bool]:
    query = select(PoleHistoryEntry).order_by(PoleHistoryEntry.id.desc()).limit(limit + 1)
    if pole_id is not None:
        query = query.where((PoleHistoryEntry.pole_id == pole_id) | (PoleHistoryEntry.from_pole_id == pole_id))
    if device_id is not None:
        query = query.where(PoleHistoryEntry.device_id == device_id)
    if before is not None:
        query = query.where(PoleHistoryEntry.id < before)
    return split(list(session.scalars(query)), limit)


# --- tags and groups ---------------------------------------------------------------------------------


def tags_of(session: Session, device_ids: list[str]) -> dict[str, list[str]]:
    tags: dict[str, list[str]] = {d: [] for d in device_ids}
    if device_ids:
        rows = session.execute(
            select(DeviceTag.device_id, DeviceTag.tag)
            .where(DeviceTag.device_id.in_(device_ids))
            .order_by(DeviceTag.tag)
        )
        for device_id, tag in rows:
            tags[device_id].append(tag)
    return tags


def set_tags(session: Session, actor: Actor, device_id: str, tags: list[str]) -> list[str]:
    get_device(session, device_id)
    before = tags_of(session, [device_id])[device_id]
    wanted = sorted(set(tags))
    session.execute(delete(DeviceTag).where(DeviceTag.device_id == device_id))
    session.add_all(DeviceTag(device_id=device_id, tag=t) for t in wanted)
    audit.record(session, actor, "device.tags", "device", device_id, before={"tags": before}, after={"tags": wanted})
    return wanted


def get_group(session: Session, group_id: str) -> DeviceGroup:
    group = session.get(DeviceGroup, group_id)
    if group is None:
        raise RegistryError(404, f"unknown group {group_id!r}")
    return group


def create_group(session: Session, actor: Actor, group_id: str, name: str, description: str | None) -> DeviceGroup:
    if session.get(DeviceGroup, group_id) is not None:
        raise RegistryError(409, f"group {group_id!r} exists already")
    group = DeviceGroup(group_id=group_id, name=name, description=description, created_at=_now())
    session.add(group)
    session.flush()
    audit.record(session, actor, "group.create", "group", group_id, after={"name": name, "description": description})
    return group


def list_groups(session: Session, *, limit: int, after: str | None) -> tuple[list[DeviceGroup], bool]:
    query = select(DeviceGroup).order_by(DeviceGroup.group_id).limit(limit + 1)
    if after is not None:
        query = query.where(DeviceGroup.group_id > after)
    return split(list(session.scalars(query)), limit)


def set_member(session: Session, actor: Actor, group_id: str, device_id: str, *, member: bool) -> bool:
    """Add or remove; returns whether anything changed (a repeat is a no-op, not an error)."""
    get_group(session, group_id)
    get_device(session, device_id)
    row = session.get(DeviceGroupMember, (group_id, device_id))
    if (row is not None) == member:
        return False
    if member:
        session.add(DeviceGroupMember(group_id=group_id, device_id=device_id))
    else:
        session.delete(row)
    audit.record(
        session, actor, "group.add" if member else "group.remove", "group", group_id, after={"device_id": device_id}
    )
    return True
