"""Rotating a box's broker credential without ever locking it out (docs/broker-access.md, Rotation).

`start` makes the new credential and sends it to the box as a `rotate_credentials` command; the old
one keeps working. A password box gets a second broker login bound to the same client id and role,
its password sealed to the box's own key (protocol/sealing.py); a certificate box gets a certificate
signed for the public key the server recorded at enrolment (nothing secret travels). The box switches,
and acks over the new connection; `settle` (run every few seconds by the app) then retires the old
credential: the old login is deleted, or the old certificate's serial goes on the broker's CRL. A box
that refuses (the ack says why) or never answers before the command expires keeps its old credential,
and the new one is withdrawn. Each step is a row in `credential_rotations` and an audit entry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import shlex
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select, update
from starlette.concurrency import run_in_threadpool

from polewatch.protocol import Command, build, encode, new_message_id, topics
from polewatch.protocol.commands import RotateCredentialsArgs
from polewatch.protocol.sealing import seal

from . import audit, registry
from . import configuration_service as svc_config
from .audit import Actor
from .broker_access import pki, policy
from .broker_access.dynsec import DynsecAdmin, DynsecError
from .downlink import Outgoing, PublishError, publish
from .models import CredentialRotation, DeviceCommand
from .services import Services
from .settings import Settings

log = logging.getLogger(__name__)
COMMAND = "rotate_credentials"


class RotationError(Exception):
    """A rotation that cannot start: `status` is the HTTP status, `detail` says what to do."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def _now() -> datetime:
    return datetime.now(timezone.utc)


def admin(settings: Settings) -> DynsecAdmin:
    if settings.dynsec_password is None:
        raise RotationError(409, "the broker's admin account is not configured (POLEWATCH_DYNSEC_PASSWORD): "
                                 "the server cannot make or delete broker logins")  # fmt: skip
    return DynsecAdmin(
        settings.dynsec_host or settings.mqtt_host, settings.dynsec_port or settings.mqtt_port,
        username=settings.dynsec_username, password=settings.dynsec_password.get_secret_value(),
    )  # fmt: skip


def _ca(settings: Settings) -> pki.CertificateAuthority:
    if not (settings.enrolment_ca_file and settings.enrolment_ca_key_file):
        raise RotationError(409, "this server holds no CA key (POLEWATCH_ENROLMENT_CA_FILE and _CA_KEY_FILE): "
                                 "it cannot sign a new certificate")  # fmt: skip
    return pki.CertificateAuthority.load(Path(settings.enrolment_ca_file), Path(settings.enrolment_ca_key_file))


@dataclass(frozen=True)
class _Target:
    device_id: str
    kind: str
    public_key: ec.EllipticCurvePublicKey
    login: str
    serial: str | None


def _target(svc: Services, device_id: str) -> _Target:
    with svc.sessions() as session:
        try:
            device = registry.get_device(session, device_id)
        except registry.RegistryError as exc:
            raise RotationError(exc.status, exc.detail) from None
        if device.status != "active":
            raise RotationError(409, f"device {device_id!r} is {device.status}: there is nothing to rotate")
        if device.box_public_key is None:
            raise RotationError(
                409, f"device {device_id!r} enrolled before the server kept boxes' public keys, so it cannot seal "
                "a password to it nor sign a certificate for it: enrol the box again (polewatch provision enrol, "
                "same key, same device id), then rotate",
            )  # fmt: skip
        pending = session.scalars(
            select(CredentialRotation).where(CredentialRotation.device_id == device_id,
                                             CredentialRotation.state == "pending")
        ).first()  # fmt: skip
        if pending is not None:
            raise RotationError(
                409, f"a rotation of device {device_id!r} is pending since {pending.requested_at:%Y-%m-%d %H:%M} UTC "
                f"(command {pending.command_id}); it completes when the box acks and expires at "
                f"{pending.expires_at:%Y-%m-%d %H:%M} UTC",
            )  # fmt: skip
        key = serialization.load_pem_public_key(device.box_public_key.encode())
        assert isinstance(key, ec.EllipticCurvePublicKey)  # enrolment accepts EC keys only
        return _Target(device_id, device.credential_kind or "password", key, device.broker_login or device_id,
                       device.certificate_serial)  # fmt: skip


async def start(svc: Services, device_id: str, actor: Actor) -> CredentialRotation:
    """Make the new credential, record the rotation and send the command; the old credential stays."""
    settings = svc.settings
    target = await run_in_threadpool(_target, svc, device_id)
    new_login: str | None = None
    new_serial: str | None = None
    if target.kind == "certificate":
        certificate = pki.client_certificate(_ca(settings), target.public_key, device_id)
        new_serial = format(certificate.serial_number, "x")
        pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
        args = RotateCredentialsArgs(kind="certificate", certificate_pem=pem)
    else:
        new_login = policy.rotated_login(device_id, secrets.token_hex(4))
        password = secrets.token_urlsafe(24)
        try:
            async with admin(settings) as broker:
                await broker.add_login(device_id, new_login, password)
        except (DynsecError, OSError, TimeoutError) as exc:
            raise RotationError(503, f"the broker did not make the new login: {exc}; try again") from None
        secret = json.dumps({"username": new_login, "password": password}).encode()
        args = RotateCredentialsArgs(kind="password", sealed_login=seal(target.public_key, secret, device_id))
    now = _now()
    expires = now + timedelta(hours=settings.rotation_lifetime_hours)
    command_id = new_message_id()
    payload = args.model_dump(mode="json", exclude_none=True)

    def record() -> int:
        with svc.sessions.begin() as session:
            session.add(DeviceCommand(command_id=command_id, device_id=device_id, name=COMMAND, args=payload,
                                      expires_at=expires, created_by=actor.name[:120], created_at=now,
                                      status="unsent"))  # fmt: skip
            session.add(CredentialRotation(
                device_id=device_id, kind=target.kind, state="pending", command_id=command_id,
                requested_by=actor.name[:120], requested_at=now, expires_at=expires, old_login=target.login,
                new_login=new_login, old_serial=target.serial, new_serial=new_serial,
            ))  # fmt: skip
            audit.record(session, actor, "device.credentials_rotate", "device", device_id,
                         after={"kind": target.kind, "command_id": command_id, "new_login": new_login,
                                "new_certificate_serial": new_serial, "expires_at": expires.isoformat()})  # fmt: skip
            return svc_config.down_seq(session, device_id)

    seq = await run_in_threadpool(record)
    message = build(Command(command_id=command_id, name=COMMAND, args=payload, expires_at=expires),
                    device_id=device_id, seq=seq)  # fmt: skip
    try:
        await publish(settings, [Outgoing(topics.down(device_id, "command"), encode(message), retain=False)])
        error = None
    except PublishError as exc:
        error = str(exc)[:300]
    if error is not None:
        await _withdraw(settings, new_login)
    return await run_in_threadpool(_sent, svc, command_id, error)


def _sent(svc: Services, command_id: str, error: str | None) -> CredentialRotation:
    with svc.sessions.begin() as session:
        command = session.scalars(select(DeviceCommand).where(DeviceCommand.command_id == command_id)).one()
        rotation = session.scalars(select(CredentialRotation).where(CredentialRotation.command_id == command_id)).one()
        if error is None:
            command.published_at = _now()
            if command.status == "unsent":
                command.status = "sent"
        else:
            command.publish_error = error
            rotation.state, rotation.finished_at = "failed", _now()
            rotation.reason = f"the command could not be published ({error}); the box keeps its credential"
        session.expunge(rotation)
        return rotation


async def _withdraw(settings: Settings, new_login: str | None) -> None:
    """The new login is no longer wanted (refused, expired, never sent): delete it at the broker."""
    if new_login is None:
        return
    async with admin(settings) as broker:
        await broker.delete_login(new_login)


def _list_on_crl(settings: Settings, serial: str) -> str | None:
    """Put the old certificate on the broker's CRL and have the broker re-read it; None, or what is left to do."""
    todo = f"list serial {serial} yourself: polewatch server revoke-certificate BROKER_DIR {serial}, then reload"
    if not settings.broker_crl_file:
        return f"no broker_crl_file on this server: {todo}"
    crl = Path(settings.broker_crl_file)
    ca = _ca(settings)
    pki.write_revocation_list(crl, ca, [*pki.revoked_serials(crl), int(serial, 16)])
    if settings.broker_reload_command:
        done = subprocess.run(shlex.split(settings.broker_reload_command), capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            failure = done.stderr.strip()[:200]
            return f"listed on {crl}, but '{settings.broker_reload_command}' failed ({failure}): reload the broker"
    return None


@dataclass(frozen=True)
class _Due:
    rotation_id: int
    device_id: str
    kind: str
    outcome: str  # completed | failed | expired
    reason: str | None
    old_login: str | None
    new_login: str | None
    old_serial: str | None
    new_serial: str | None


def _due(svc: Services) -> list[_Due]:
    now = _now()
    with svc.sessions() as session:
        rows = session.execute(
            select(CredentialRotation, DeviceCommand)
            .join(DeviceCommand, DeviceCommand.command_id == CredentialRotation.command_id)
            .where(CredentialRotation.state == "pending")
        ).all()  # fmt: skip
        due = []
        for rotation, command in rows:
            if command.status == "done":
                outcome, reason = "completed", None
            elif command.status in ("refused", "failed"):
                outcome, reason = "failed", f"the box {command.status} it: {command.reason}"
            elif rotation.expires_at <= now:
                outcome, reason = "expired", "the box did not take the new credential in time; it keeps the old one"
            else:
                continue
            due.append(_Due(rotation.id, rotation.device_id, rotation.kind, outcome, reason, rotation.old_login,
                            rotation.new_login, rotation.old_serial, rotation.new_serial))  # fmt: skip
        return due


async def settle(svc: Services) -> int:
    """Finish every rotation whose box answered or whose time ran out; returns how many."""
    settings = svc.settings
    finished = 0
    for due in await run_in_threadpool(_due, svc):
        note = due.reason
        if due.outcome == "completed":
            if due.kind == "password" and due.old_login and due.old_login != due.new_login:
                async with admin(settings) as broker:
                    await broker.delete_login(due.old_login)
            elif due.kind == "certificate" and due.old_serial:
                note = await asyncio.to_thread(_list_on_crl, settings, due.old_serial)
        else:
            await _withdraw(settings, due.new_login)
        await run_in_threadpool(_finish, svc, due, note)
        log.info("credential rotation finished", extra={"device_id": due.device_id, "outcome": due.outcome})
        finished += 1
    return finished


def _finish(svc: Services, due: _Due, note: str | None) -> None:
    with svc.sessions.begin() as session:
        changed = session.execute(
            update(CredentialRotation).where(CredentialRotation.id == due.rotation_id,
                                             CredentialRotation.state == "pending")
            .values(state=due.outcome, finished_at=_now(), reason=note)
        )  # fmt: skip
        if changed.rowcount != 1:  # type: ignore[attr-defined]  # another replica finished it
            return
        if due.outcome == "completed":
            device = registry.get_device(session, due.device_id)
            if due.new_login is not None:
                device.broker_login = due.new_login
            if due.new_serial is not None:
                device.certificate_serial = due.new_serial
        completed = due.outcome == "completed"
        retired = {
            "rotation_id": due.rotation_id, "kind": due.kind, "reason": note,
            "retired_login": due.old_login if completed else due.new_login,
            "retired_certificate_serial": due.old_serial if completed else None,
        }  # fmt: skip
        audit.record(session, Actor(f"device:{due.device_id}"), f"device.credentials_{due.outcome}", "device",
                     due.device_id, after=retired)  # fmt: skip


async def run(svc: Services) -> None:
    """Settle rotations every `rotation_check_s`, for as long as the server runs."""
    while True:
        try:
            await settle(svc)
        except Exception:  # a broker or database hiccup: the rotation stays pending, tried again next round
            log.exception("credential rotations could not be settled; retrying")
        await asyncio.sleep(svc.settings.rotation_check_s)


def history(svc: Services, device_id: str, limit: int = 20) -> list[CredentialRotation]:
    with svc.sessions() as session:
        rows = session.scalars(
            select(CredentialRotation).where(CredentialRotation.device_id == device_id)
            .order_by(CredentialRotation.id.desc()).limit(limit)
        ).all()  # fmt: skip
        for row in rows:
            session.expunge(row)
        return list(rows)
