"""Configuration in the database: layer versions, group membership, each device's effective document.

A change (a layer's new document, a rollback, a device moved between groups) is planned first:
every device it touches gets its effective document computed before and after, and each "after"
is validated with the agent's own model. `preview` stops there; `apply` refuses the whole change if
any device's result is invalid (so no box is ever sent a document it would refuse), otherwise it
stores the layer version, bumps the desired version of exactly the devices whose document changed,
and writes the audit entry, all in one transaction. Publishing to the broker happens after the
commit (config_api.py): a broker outage leaves the devices marked unpublished, never loses a change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from polewatch.protocol import DesiredConfig, build, encode, topics

from . import audit
from .configuration import Change, ConfigInvalid, Document, Scope, canonical, diff, effective, validate
from .downlink import Outgoing
from .models import ConfigGroupMember, ConfigLayer, Device, DeviceConfig


class ConfigError(Exception):
    """A change that cannot be made; `status` is its HTTP status."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Proposal:
    """What a change would make of the layers and the membership (None: as stored)."""

    scope: Scope | None = None
    target: str = ""
    document: Document | None = None
    member: tuple[str, str | None] | None = None  # (device_id, new group or None)


@dataclass(frozen=True)
class DevicePlan:
    device_id: str
    version: int  # the desired version now (0: none yet)
    before: Document
    after: Document
    changes: list[Change]
    error: ConfigInvalid | None = None

    @property
    def changed(self) -> bool:
        return bool(self.changes)


@dataclass
class Applied:
    layer: ConfigLayer | None
    devices: list[DeviceConfig] = field(default_factory=list)


def latest_layer(session: Session, scope: Scope, target: str) -> ConfigLayer | None:
    return session.scalars(
        select(ConfigLayer)
        .where(ConfigLayer.scope == scope, ConfigLayer.target == target)
        .order_by(ConfigLayer.version.desc())
        .limit(1)
    ).first()


def _layer_doc(session: Session, scope: Scope, target: str, proposal: Proposal) -> Document | None:
    if proposal.scope == scope and proposal.target == target:
        return proposal.document
    layer = latest_layer(session, scope, target)
    return layer.document if layer is not None else None


def group_of(session: Session, device_id: str, proposal: Proposal | None = None) -> str | None:
    if proposal is not None and proposal.member is not None and proposal.member[0] == device_id:
        return proposal.member[1]
    row = session.get(ConfigGroupMember, device_id)
    return row.group_name if row is not None else None


def effective_for(session: Session, device_id: str, proposal: Proposal | None = None) -> Document:
    p = proposal or Proposal()
    group = group_of(session, device_id, p)
    return effective(
        [
            _layer_doc(session, "fleet", "", p),
            _layer_doc(session, "group", group, p) if group is not None else None,
            _layer_doc(session, "device", device_id, p),
        ]
    )


def known_devices(session: Session) -> set[str]:
    """Every device the configuration may concern: heard from, configured, grouped or given a layer."""
    ids: set[str] = set(session.scalars(select(Device.device_id)))
    ids |= set(session.scalars(select(DeviceConfig.device_id)))
    ids |= set(session.scalars(select(ConfigGroupMember.device_id)))
    ids |= set(session.scalars(select(ConfigLayer.target).where(ConfigLayer.scope == "device").distinct()))
    return ids


def _affected(session: Session, proposal: Proposal) -> list[str]:
    if proposal.member is not None:
        return [proposal.member[0]]
    if proposal.scope == "fleet":
        return sorted(known_devices(session))
    if proposal.scope == "group":
        members = session.scalars(
            select(ConfigGroupMember.device_id).where(ConfigGroupMember.group_name == proposal.target)
        )
        return sorted(members)
    return [proposal.target]


def plan(session: Session, proposal: Proposal) -> list[DevicePlan]:
    """Before and after for every device the proposal touches, each "after" validated."""
    if proposal.document is not None:
        validate(proposal.document)  # the layer on its own: refused with its own field first
    out = []
    for device_id in _affected(session, proposal):
        row = session.get(DeviceConfig, device_id)
        before = row.document if row is not None else {}
        after = effective_for(session, device_id, proposal)
        error = None
        try:
            validate(after, device_id=device_id)
        except ConfigInvalid as exc:
            error = exc
        version = row.desired_version if row is not None else 0
        out.append(DevicePlan(device_id, version, before, after, diff(before, after), error))
    return out


def apply(session: Session, actor: audit.Actor, proposal: Proposal, *, comment: str | None = None,
          rolled_back_from: int | None = None) -> Applied:  # fmt: skip
    """Store the change and the new desired documents; ConfigInvalid if any device would refuse it."""
    plans = plan(session, proposal)
    for p in plans:
        if p.error is not None:
            raise p.error
    now = datetime.now(timezone.utc)
    result = Applied(layer=None)
    if proposal.member is not None:
        device_id, group = proposal.member
        member = session.get(ConfigGroupMember, device_id)
        before = {"group": member.group_name if member else None}
        if group is None and member is not None:
            session.delete(member)
        elif group is not None and member is None:
            session.add(ConfigGroupMember(device_id=device_id, group_name=group))
        elif member is not None and group is not None:
            member.group_name = group
        audit.record(session, actor, "config.member", "device", device_id, before=before, after={"group": group})
    elif proposal.scope is not None and proposal.document is not None:
        current = latest_layer(session, proposal.scope, proposal.target)
        layer = ConfigLayer(
            scope=proposal.scope,
            target=proposal.target,
            version=(current.version if current else 0) + 1,
            document=proposal.document,
            comment=comment,
            rolled_back_from=rolled_back_from,
            created_by=actor.name[:120],
            created_at=now,
        )
        session.add(layer)
        session.flush()
        result.layer = layer
        audit.record(
            session, actor, "config.rollback" if rolled_back_from else "config.change", f"config.{proposal.scope}",
            proposal.target or "fleet",
            before={"version": current.version, "document": current.document} if current else None,
            after={"version": layer.version, "document": layer.document, "comment": comment},
        )  # fmt: skip
    for p in plans:
        row = session.get(DeviceConfig, p.device_id)
        if row is not None and canonical(row.document) == canonical(p.after):
            continue
        if row is None:
            if not p.after:
                continue  # never configured and still nothing to say: the box runs its file
            row = DeviceConfig(device_id=p.device_id, desired_version=0, document={}, computed_at=now, down_seq=0)
            session.add(row)
        row.desired_version += 1
        row.document = p.after
        row.computed_at = now
        row.published_at = None
        row.publish_error = None
        result.devices.append(row)
    session.flush()
    return result


def down_seq(session: Session, device_id: str) -> int:
    """The next number of the server's own counter of down messages to this box."""
    row = session.get(DeviceConfig, device_id, with_for_update=True)
    if row is None:
        row = DeviceConfig(
            device_id=device_id, desired_version=0, document={}, computed_at=datetime.now(timezone.utc), down_seq=0
        )
        session.add(row)
    row.down_seq += 1
    session.flush()
    return row.down_seq


def config_message(session: Session, row: DeviceConfig) -> Outgoing:
    """The retained `config` message of a device's desired document (takes a down seq)."""
    body = DesiredConfig(version=row.desired_version, config=validate(row.document, device_id=row.device_id))
    message = build(body, device_id=row.device_id, seq=down_seq(session, row.device_id))
    return Outgoing(topics.down(row.device_id, "config"), encode(message), retain=True)


def unpublished(session: Session, device_ids: list[str] | None = None) -> list[DeviceConfig]:
    q = select(DeviceConfig).where(DeviceConfig.published_at.is_(None), DeviceConfig.desired_version > 0)
    if device_ids is not None:
        q = q.where(DeviceConfig.device_id.in_(device_ids))
    return list(session.scalars(q.order_by(DeviceConfig.device_id)))


def health_config_version(session: Session, device_id: str) -> tuple[int | None, datetime | None]:
    """The applied version the box's newest health report carries, and when it was made."""
    device = session.get(Device, device_id)
    if device is None or not device.last_health:
        return None, None
    version: Any = device.last_health.get("config_version")
    return (int(version) if isinstance(version, int) else None), device.last_health_at

