"""Enrolment codes and the database side of enrolling a box (the HTTP and broker side: enrolment_api.py).

A code is made for one pole, is single use and expires (3 days by default); only its SHA-256 is
stored, so the code itself exists only on the work order. Enrolling is two steps around the broker:
`plan` decides, without writing, which device the box becomes (the same one again for a box whose
key fingerprint the registry knows; a new id otherwise) or why it is refused; after the broker
account exists, `claim` marks the code used with a conditional UPDATE, so of two boxes racing with
one code exactly one wins, and registers the device on the pole (pole history) in the same
transaction as the audit entry.
"""

from __future__ import annotations

import hashlib
import io
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import segno
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from polewatch.protocol.enrolment import BoxFacts, new_enrolment_code

from . import audit, registry
from .audit import Actor
from .models import CredentialRotation, EnrolmentCode, HealthSample, RegisteredDevice
from .pagination import split
from .registry import RegistryError

DEFAULT_LIFETIME = timedelta(days=3)


def code_hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def qr_png(code: str) -> bytes:
    """The code as a QR PNG for the work order (the technician's tool reads it or it is typed)."""
    out = io.BytesIO()
    segno.make(code, error="m").save(out, kind="png", scale=8, border=4)
    return out.getvalue()


class Refused(Exception):
    """An enrolment the server refuses: `reason` is EnrolmentRefused's stable word."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


def _now() -> datetime:
    return datetime.now(timezone.utc)


def create_code(
    session: Session, actor: Actor, pole_id: str, *, lifetime: timedelta = DEFAULT_LIFETIME,
    preset: dict[str, Any] | None = None, allowed_sites: list[str] | None = None,
) -> tuple[EnrolmentCode, str]:  # fmt: skip
    """A new code for a pole; returns the row and the code (shown once). `allowed_sites`: a
    technician's sites (None: any site)."""
    pole = registry.get_pole(session, pole_id)
    if allowed_sites is not None and pole.site_id not in allowed_sites:
        raise RegistryError(403, f"pole {pole_id!r} is on site {pole.site_id!r}, which is not one of your sites")
    current = registry.device_on(session, pole_id)
    if current is not None:
        raise RegistryError(
            409, f"pole {pole_id!r} carries device {current.device_id!r}: replace it instead "
            f"(POST /api/registry/devices/{current.device_id}/replace), which also makes the code",
        )  # fmt: skip
    if preset is None:  # a replacement inherits the pole's preset
        preset = session.scalars(
            select(EnrolmentCode.preset).where(EnrolmentCode.pole_id == pole_id, EnrolmentCode.preset.is_not(None))
            .order_by(EnrolmentCode.id.desc()).limit(1)
        ).first()  # fmt: skip
    code = new_enrolment_code()
    now = _now()
    row = EnrolmentCode(
        code_hash=code_hash(code), pole_id=pole_id, site_id=pole.site_id, preset=preset, created_by=actor.name,
        created_at=now, expires_at=now + lifetime,
    )  # fmt: skip
    session.add(row)
    session.flush()
    audit.record(
        session, actor, "enrolment_code.create", "enrolment_code", row.id,
        after={"pole_id": pole_id, "expires_at": row.expires_at.isoformat(), "preset": preset is not None},
    )  # fmt: skip
    return row, code


def revoke_code(
    session: Session, actor: Actor, code_id: int, *, allowed_sites: list[str] | None = None
) -> EnrolmentCode:
    row = session.get(EnrolmentCode, code_id)
    if row is None or (allowed_sites is not None and row.site_id not in allowed_sites):
        raise RegistryError(404, f"unknown enrolment code id {code_id}")
    if row.used_at is not None or row.revoked_at is not None:
        raise RegistryError(409, "this code is used or withdrawn already")
    row.revoked_at = _now()
    audit.record(session, actor, "enrolment_code.revoke", "enrolment_code", code_id, after={"pole_id": row.pole_id})
    return row


def list_codes(
    session: Session, *, pole_id: str | None, limit: int, before: int | None, allowed_sites: list[str] | None = None
) -> tuple[list[EnrolmentCode], bool]:
    query = select(EnrolmentCode).order_by(EnrolmentCode.id.desc()).limit(limit + 1)
    if allowed_sites is not None:
        query = query.where(EnrolmentCode.site_id.in_(allowed_sites))
    if pole_id is not None:
        query = query.where(EnrolmentCode.pole_id == pole_id)
    if before is not None:
        query = query.where(EnrolmentCode.id < before)
    return split(list(session.scalars(query)), limit)


@dataclass(frozen=True)
class Plan:
    code_id: int
    pole_id: str
    site_id: str
    device_id: str
    new_device: bool  # False: this box enrolled before (same key), same device again
    preset: dict[str, Any] | None


def _usable(row: EnrolmentCode | None, fingerprint: str, now: datetime) -> EnrolmentCode:
    if row is None:
        raise Refused(404, "unknown", "no such enrolment code")
    if row.revoked_at is not None:
        raise Refused(410, "revoked", "this enrolment code was withdrawn")
    if row.used_at is not None and row.box_fingerprint != fingerprint:
        raise Refused(409, "used", "this enrolment code already enrolled another box")
    if row.used_at is None and row.expires_at <= now:
        raise Refused(410, "expired", f"this enrolment code expired at {row.expires_at:%Y-%m-%d %H:%M} UTC")
    return row


def plan(session: Session, code: str, fingerprint: str) -> Plan:
    """Who the box becomes, or why not (Refused); writes nothing."""
    row = _usable(session.scalars(select(EnrolmentCode).where(EnrolmentCode.code_hash == code_hash(code))).first(),
                  fingerprint, _now())  # fmt: skip
    known = session.scalars(select(RegisteredDevice).where(RegisteredDevice.box_fingerprint == fingerprint)).first()
    if known is not None:
        if known.status != "active":
            raise Refused(
                409, "revoked", f"this box was device {known.device_id}, which was revoked; delete the box's identity "
                "folder (identity/box.key in its state directory) to enrol it as a new box",
            )  # fmt: skip
        return Plan(row.id, row.pole_id, row.site_id, known.device_id, False, row.preset)
    current = registry.device_on(session, row.pole_id)
    if current is not None:
        raise Refused(409, "used", f"pole {row.pole_id} carries device {current.device_id} already")
    while True:
        device_id = f"box-{secrets.token_hex(4)}"
        if session.get(RegisteredDevice, device_id) is None:
            return Plan(row.id, row.pole_id, row.site_id, device_id, True, row.preset)


def claim(
    session: Session, plan: Plan, fingerprint: str, box: BoxFacts, cameras: list[str], client: str | None,
    certificate_serial: str | None = None, public_key_pem: str | None = None, credential_kind: str = "password",
) -> datetime:  # fmt: skip
    """Mark the code used by this box and register (or re-point) the device; returns enrolled_at."""
    now = _now()
    claimed = session.execute(
        update(EnrolmentCode)
        .where(EnrolmentCode.id == plan.code_id, EnrolmentCode.revoked_at.is_(None),
               or_(EnrolmentCode.used_at.is_(None), EnrolmentCode.box_fingerprint == fingerprint))
        .values(used_at=func.coalesce(EnrolmentCode.used_at, now), box_fingerprint=fingerprint,
                device_id=plan.device_id)
    )  # fmt: skip
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        raise Refused(409, "used", "this enrolment code already enrolled another box")
    actor = Actor(f"device:{plan.device_id}", None, client)
    hardware = " / ".join(p for p in (box.model, box.machine) if p)[:255]
    if plan.new_device:
        registry.register_device(
            session, actor, plan.device_id, plan.pole_id,
            {"hardware": hardware, "agent_version": box.agent_version, "cameras": cameras},
            box_fingerprint=fingerprint,
        )  # fmt: skip
    else:
        device = registry.get_device(session, plan.device_id)
        if device.pole_id != plan.pole_id:
            registry.move_device(session, actor, plan.device_id, plan.pole_id)
        registry.update_device(session, actor, plan.device_id, {"agent_version": box.agent_version})
    # What rotating this box's credential needs (credential_rotation.py); enrolling again starts afresh.
    device = registry.get_device(session, plan.device_id)
    device.box_public_key, device.credential_kind = public_key_pem, credential_kind
    device.broker_login, device.certificate_serial = plan.device_id, certificate_serial
    session.execute(
        update(CredentialRotation).where(CredentialRotation.device_id == plan.device_id,
                                         CredentialRotation.state == "pending")
        .values(state="expired", finished_at=now, reason="the box enrolled again, with a new credential")
    )  # fmt: skip
    audit.record(
        session, actor, "device.enrol", "device", plan.device_id,
        after={"pole_id": plan.pole_id, "code_id": plan.code_id, "reissued": not plan.new_device,
               # What `polewatch server revoke-certificate` puts on the broker's CRL for this box.
               "certificate_serial": certificate_serial},
    )  # fmt: skip
    return now


@dataclass(frozen=True)
class Status:
    device_id: str
    pole_id: str
    enrolled_at: datetime
    first_heartbeat_at: datetime | None


def status(session: Session, code: str, fingerprint: str) -> Status | None:
    """For the box that used this code: its device and when its first health report arrived."""
    row = session.scalars(select(EnrolmentCode).where(EnrolmentCode.code_hash == code_hash(code))).first()
    if row is None or row.used_at is None or row.box_fingerprint != fingerprint or row.device_id is None:
        return None
    first = session.scalar(select(func.min(HealthSample.received_at)).where(HealthSample.device_id == row.device_id))
    if first is not None and first.tzinfo is None:
        first = first.replace(tzinfo=timezone.utc)
    return Status(row.device_id, row.pole_id, row.used_at, first)
