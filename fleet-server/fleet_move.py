"""Moving the fleet to another command centre: sign one `move_server` directive, publish it retained
to every box's own down branch, and follow each box's answer.

Per box, not one fleet topic: a box may read only its own branch (broker_access/policy.py), and a
retained message there is what a box that is off today reads when it comes back. Each box's copy is a
`DeviceCommand` row (name `move_server`, id `move-<serial>-<device>`), so its `command_ack` lands on
it like any command's; the unique command id also stops two moves racing to the same serial.

Used by the API (POST /api/fleet/move) and the CLI (`polewatch server move-fleet`).
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from polewatch.protocol import MoveServer, build, encode, topics
from polewatch.protocol.move import FLEET, MoveDirective, MoveEndpoint, sign_directive
from polewatch.protocol.topics import DEVICE_ID_PATTERN

from . import audit
from . import configuration_service as svc_config
from .downlink import Outgoing
from .models import Device, DeviceCommand, RegisteredDevice
from .settings import Settings
from .signing_key import key_path, load_or_create

NAME = "move_server"
DEFAULT_VALID_S = 30 * 24 * 3600


class MoveIn(BaseModel):
    mqtt_host: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9_.:\[\]-]+$",
                           description="The new broker as boxes reach it (its TLS name).")  # fmt: skip
    mqtt_port: int = Field(default=8883, ge=1, le=65535)
    tls: bool = Field(default=True, description="false: plain MQTT (a private network only).")
    ca_pem: str | None = Field(default=None, max_length=20000,
                               description="The CA of the new broker; null: boxes keep the CA they trust.")  # fmt: skip
    server_url: str | None = Field(default=None, max_length=2048, description="The new server's HTTP URL.")
    devices: list[str] | None = Field(
        default=None, max_length=10000,
        description="Only these boxes (each gets a directive signed for it); null: the whole fleet ('*').",
    )
    valid_for_s: int = Field(default=DEFAULT_VALID_S, ge=60, le=365 * 24 * 3600,
                             description="A box that reads it later than this refuses it as expired.")  # fmt: skip


class DeviceMoveOut(BaseModel):
    device_id: str
    command_id: str
    status: str = Field(description="unsent (broker unreachable), sent, done (acked on the old broker), "
                        "refused (with the reason) or failed (the box fell back).")  # fmt: skip
    reason: str | None
    published_at: datetime | None
    publish_error: str | None
    acked_at: datetime | None

    @classmethod
    def of(cls, row: DeviceCommand) -> DeviceMoveOut:
        return cls(device_id=row.device_id, command_id=row.command_id, status=row.status, reason=row.reason,
                   published_at=row.published_at, publish_error=row.publish_error, acked_at=row.acked_at)


class MoveOut(BaseModel):
    serial: int
    mqtt: str
    target: str
    key_id: str
    expires_at: datetime | None
    devices: list[DeviceMoveOut]


class MoveError(Exception):
    """A move that cannot be issued as asked; `status` is the HTTP status for the API."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _moves(session: Session) -> list[DeviceCommand]:
    return list(session.scalars(select(DeviceCommand).where(DeviceCommand.name == NAME)))


def next_serial(session: Session) -> int:
    return 1 + max((int(row.args.get("serial", 0)) for row in _moves(session)), default=0)


def fleet_devices(session: Session) -> list[str]:
    """Every box the server knows (registered or heard from), revoked ones left out."""
    revoked = set(session.scalars(select(RegisteredDevice.device_id).where(RegisteredDevice.status == "revoked")))
    known = set(session.scalars(select(RegisteredDevice.device_id))) | set(session.scalars(select(Device.device_id)))
    return sorted(known - revoked)


def prepare(session: Session, settings: Settings, actor: audit.Actor, body: MoveIn) -> tuple[int, list[Outgoing]]:
    """Sign and record the move (one transaction with its audit entry); returns the serial and what to publish."""
    if body.devices is not None:
        bad = [d for d in body.devices if not re.match(DEVICE_ID_PATTERN, d)]
        if bad:
            raise MoveError(422, f"devices: {bad[0][:64]!r} is not a device id")
        devices = sorted(set(body.devices))
    else:
        devices = fleet_devices(session)
    if not devices:
        raise MoveError(409, "no devices to move: the registry is empty and no box has been heard from")
    if body.tls is False and body.ca_pem:
        raise MoveError(422, "ca_pem: a CA is given but tls is false; drop one of them")
    key = load_or_create(key_path(settings))
    serial = next_serial(session)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    expires = now + timedelta(seconds=body.valid_for_s)
    endpoint = MoveEndpoint(host=body.mqtt_host, port=body.mqtt_port, tls=body.tls, ca_pem=body.ca_pem)
    signed: dict[str, tuple[dict[str, Any], str, str]] = {}
    if body.devices is None:
        fleet = sign_directive(MoveDirective(serial=serial, target=FLEET, mqtt=endpoint, server_url=body.server_url,
                                             issued_at=now, not_before=now, expires_at=expires), key)  # fmt: skip
        signed = dict.fromkeys(devices, fleet)
    else:
        for device in devices:
            signed[device] = sign_directive(MoveDirective(
                serial=serial, target=device, mqtt=endpoint, server_url=body.server_url, issued_at=now,
                not_before=now, expires_at=expires), key)  # fmt: skip
    args = {
        "serial": serial, "mqtt_host": body.mqtt_host, "mqtt_port": body.mqtt_port, "tls": body.tls,
        "ca_sha256": hashlib.sha256(body.ca_pem.encode()).hexdigest() if body.ca_pem else None,
        "server_url": body.server_url, "target": FLEET if body.devices is None else "device",
        "key_id": next(iter(signed.values()))[2],
    }  # fmt: skip
    outgoing = []
    for device, (document, signature, kid) in signed.items():
        command_id = f"move-{serial}-{device}"
        session.add(DeviceCommand(command_id=command_id, device_id=device, name=NAME, args=args, expires_at=expires,
                                  created_by=actor.name[:120], created_at=now, status="unsent"))  # fmt: skip
        message = build(MoveServer(command_id=command_id, directive=document, signature=signature, key_id=kid),
                        device_id=device, seq=svc_config.down_seq(session, device))  # fmt: skip
        outgoing.append(Outgoing(topics.down(device, "move_server"), encode(message), retain=True))
    audit.record(session, actor, "fleet.move", "fleet", serial, after={**args, "devices": devices})
    session.flush()
    return serial, outgoing


def mark_published(session: Session, serial: int, error: str | None) -> None:
    for row in _rows(session, serial):
        if error:
            row.publish_error = error[:300]
        else:
            row.published_at = datetime.now(timezone.utc)
            row.publish_error = None
            if row.status == "unsent":  # an ack may already be in
                row.status = "sent"


def _rows(session: Session, serial: int) -> list[DeviceCommand]:
    rows = [r for r in _moves(session) if int(r.args.get("serial", 0)) == serial]
    return sorted(rows, key=lambda r: r.device_id)


def status(session: Session, serial: int) -> MoveOut | None:
    rows = _rows(session, serial)
    if not rows:
        return None
    args = rows[0].args
    return MoveOut(serial=serial, mqtt=f"{args['mqtt_host']}:{args['mqtt_port']}", target=str(args["target"]),
                   key_id=str(args["key_id"]), expires_at=rows[0].expires_at,
                   devices=[DeviceMoveOut.of(r) for r in rows])  # fmt: skip
