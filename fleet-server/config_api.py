"""Configuration and commands over HTTP: layers, preview, apply, rollback, groups, per-device state.

Handlers are plain `def`s (worker threads): the database work and the audit entry commit in one
transaction, then the new documents are published to the broker from the same thread through the
event loop (`anyio.from_thread`). A broker that cannot be reached leaves the change stored and the
devices marked unpublished (`POST /api/config/publish` sends them again); nothing is lost.
"""

from __future__ import annotations

import logging
import re
import threading
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal

import anyio.from_thread
from fastapi import APIRouter, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from polewatch.protocol import COMMAND_ARGS, Command, build, encode, new_message_id, topics
from polewatch.protocol.settings import CAMERA_ID_PATTERN
from polewatch.protocol.topics import DEVICE_ID_PATTERN

from . import audit
from . import configuration_service as svc_config
from .api import DENIED, ERRORS, rule
from .auth import client_address, principal
from .configuration import ConfigInvalid, Scope
from .configuration_service import Proposal
from .downlink import Outgoing, PublishError, publish
from .models import ConfigGroupMember, ConfigLayer, DeviceCommand, DeviceConfig
from .pagination import IdCursor, Limit, Page, int_cursor, split
from .roles import Permission
from .schemas import ErrorOut
from .services import Services, ServicesDep

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api", responses={**ERRORS, **DENIED})
GROUP_PATTERN = CAMERA_ID_PATTERN
REFUSED: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorOut, "description": "Another change to the same layer was made at the same time."},
    422: {"model": ErrorOut, "description": "The document (or a device's merged result) is invalid: `detail` "
          "names the device and the field."}
}  # fmt: skip


# --- schemas -------------------------------------------------------------------------------------


class ChangeIn(BaseModel):
    scope: Scope
    target: str | None = Field(
        default=None, max_length=64, description="The group or device id; leave out for the fleet."
    )
    document: dict[str, Any] = Field(description="An AgentSettings document (protocol/settings.py).")
    comment: str | None = Field(default=None, max_length=500)


class RollbackIn(BaseModel):
    scope: Scope
    target: str | None = Field(default=None, max_length=64)
    version: int = Field(ge=1, le=2**31 - 1, description="The earlier version whose document becomes current.")
    comment: str | None = Field(default=None, max_length=500)


class MemberIn(BaseModel):
    group: str | None = Field(pattern=GROUP_PATTERN, description="The group; null takes the device out of its group.")


class ChangeOut(BaseModel):
    path: str
    before: Any
    after: Any


class DevicePreviewOut(BaseModel):
    device_id: str
    desired_version: int = Field(description="Now; the change makes it one higher.")
    changes: list[ChangeOut]


class PreviewOut(BaseModel):
    devices: list[DevicePreviewOut] = Field(description="Devices whose effective document would change.")
    unchanged: int = Field(description="Devices the change touches without changing their document.")


class LayerOut(BaseModel):
    id: int
    scope: str
    target: str | None
    version: int
    document: dict[str, Any]
    comment: str | None
    rolled_back_from: int | None
    created_by: str
    created_at: datetime

    @classmethod
    def of(cls, row: ConfigLayer) -> LayerOut:
        return cls(id=row.id, scope=row.scope, target=row.target or None, version=row.version, document=row.document,
                   comment=row.comment, rolled_back_from=row.rolled_back_from, created_by=row.created_by,
                   created_at=row.created_at)  # fmt: skip


class DeviceConfigOut(BaseModel):
    device_id: str
    group: str | None
    desired_version: int = Field(description="0: no document for this device (it runs its file).")
    published_at: datetime | None
    publish_error: str | None
    applied_version: int | None = Field(description="Per the newest config report or health report.")
    drift: Literal["in_sync", "pending", "refused", "unpublished", "none"] = Field(
        description="in_sync: applied == desired; pending: published, not applied yet; refused: the box refused "
        "the desired version; unpublished: not on the broker yet; none: nothing desired."
    )
    report_status: str | None
    refusal_version: int | None
    refusal_reason: str | None
    refusal_field: str | None
    refusal_at: datetime | None
    document: dict[str, Any] | None = Field(default=None, description="The effective document (one device only).")


class ApplyOut(BaseModel):
    layer: LayerOut | None
    devices: list[DeviceConfigOut] = Field(description="Devices given a new desired version, after publishing.")


class CommandIn(BaseModel):
    name: str = Field(description="restart_camera, snapshot or set_log_level (protocol/commands.py).")
    args: dict[str, Any] = Field(default_factory=dict)
    expires_in_s: float | None = Field(default=None, gt=0, le=7 * 24 * 3600, description="Refused by the box after.")


class CommandOut(BaseModel):
    command_id: str
    device_id: str
    name: str
    args: dict[str, Any]
    status: str = Field(description="unsent (broker unreachable), sent, done, refused or failed.")
    reason: str | None
    result: dict[str, Any] | None
    created_by: str
    created_at: datetime
    published_at: datetime | None
    publish_error: str | None
    acked_at: datetime | None

    @classmethod
    def of(cls, row: DeviceCommand) -> CommandOut:
        return cls(command_id=row.command_id, device_id=row.device_id, name=row.name, args=row.args,
                   status=row.status, reason=row.reason, result=row.result, created_by=row.created_by,
                   created_at=row.created_at, published_at=row.published_at, publish_error=row.publish_error,
                   acked_at=row.acked_at)  # fmt: skip


class MemberOut(BaseModel):
    device_id: str
    group: str


# --- helpers -------------------------------------------------------------------------------------


def _target(scope: Scope, target: str | None) -> str:
    if scope == "fleet":
        if target:
            raise HTTPException(status_code=422, detail="target: the fleet layer has no target; leave it out")
        return ""
    pattern = DEVICE_ID_PATTERN if scope == "device" else GROUP_PATTERN
    if not target or not re.fullmatch(pattern, target):
        raise HTTPException(status_code=422, detail=f"target: a {scope} layer needs a {scope} id matching {pattern}")
    return target


def _refused(exc: ConfigInvalid) -> HTTPException:
    return HTTPException(status_code=422, detail=f"refused, nothing changed: {exc}")


def _statuses(svc: Services, rows: list[DeviceConfig], *, with_document: bool = False) -> list[DeviceConfigOut]:
    with svc.sessions() as session:
        return [_status(session, row, with_document=with_document) for row in rows]


def _status(session: Session, row: DeviceConfig, *, with_document: bool = False) -> DeviceConfigOut:
    group = svc_config.group_of(session, row.device_id)
    health_version, health_at = svc_config.health_config_version(session, row.device_id)
    applied = row.applied_version
    if health_at is not None and (row.report_sent_at is None or health_at > row.report_sent_at):
        applied = health_version
    if row.desired_version == 0:
        drift: Literal["in_sync", "pending", "refused", "unpublished", "none"] = "none"
    elif applied == row.desired_version:
        drift = "in_sync"
    elif row.published_at is None:
        drift = "unpublished"
    elif row.refusal_version == row.desired_version:
        drift = "refused"
    else:
        drift = "pending"
    return DeviceConfigOut(
        device_id=row.device_id, group=group, desired_version=row.desired_version, published_at=row.published_at,
        publish_error=row.publish_error, applied_version=applied, drift=drift, report_status=row.report_status,
        refusal_version=row.refusal_version, refusal_reason=row.refusal_reason, refusal_field=row.refusal_field,
        refusal_at=row.refusal_at, document=row.document if with_document else None,
    )  # fmt: skip


# One publisher at a time in this process: two changes published at once could otherwise leave the
# older document retained on the broker after the newer one (each reads, then publishes).
_PUBLISHING = threading.Lock()


def _publish_configs(svc: Services, device_ids: list[str] | None) -> list[DeviceConfig]:
    """Publish the desired documents not yet on the broker; returns the rows as they end up."""
    with _PUBLISHING:
        return _publish_configs_now(svc, device_ids)


def _publish_configs_now(svc: Services, device_ids: list[str] | None) -> list[DeviceConfig]:
    with svc.sessions.begin() as session:
        rows = svc_config.unpublished(session, device_ids)
        outgoing = [svc_config.config_message(session, row) for row in rows]
    error: str | None = None
    try:
        anyio.from_thread.run(publish, svc.settings, outgoing)
    except PublishError as exc:
        error = str(exc)[:300]
        log.warning("config documents not published", extra={"devices": [r.device_id for r in rows], "error": error})
    now = datetime.now(timezone.utc)
    with svc.sessions.begin() as session:
        out = []
        for sent in rows:
            row = session.get(DeviceConfig, sent.device_id)
            # Only the version that was sent: a newer change made meanwhile stays unpublished.
            if row is not None and row.desired_version == sent.desired_version:
                row.published_at, row.publish_error = (None, error) if error else (now, None)
            if row is not None:
                out.append(row)
    return out


def _apply(svc: Services, request: Request, proposal: Proposal, **kw: Any) -> ApplyOut:
    actor = principal(request).actor(client_address(request))
    try:
        with svc.sessions.begin() as session:
            applied = svc_config.apply(session, actor, proposal, **kw)
            layer = LayerOut.of(applied.layer) if applied.layer is not None else None
            ids = [row.device_id for row in applied.devices]
    except ConfigInvalid as exc:
        raise _refused(exc) from None
    except IntegrityError:
        # Two changes to one layer at once (two operators, two replicas): the second's version
        # number is taken. Nothing of it was stored; it must be previewed again over the first.
        raise HTTPException(
            status_code=409, detail="another change to this layer was made at the same time: preview again and retry"
        ) from None
    rows = _publish_configs(svc, ids) if ids else []
    return ApplyOut(layer=layer, devices=_statuses(svc, rows))


# --- configuration routes ------------------------------------------------------------------------


def _preview(svc: Services, proposal: Proposal) -> PreviewOut:
    with svc.sessions() as session:
        try:
            plans = svc_config.plan(session, proposal)
        except ConfigInvalid as exc:
            raise _refused(exc) from None
    for p in plans:
        if p.error is not None:
            raise _refused(p.error)
    changed = [
        DevicePreviewOut(device_id=p.device_id, desired_version=p.version,
                         changes=[ChangeOut(path=c.path, before=c.before, after=c.after) for c in p.changes])
        for p in plans if p.changed
    ]  # fmt: skip
    return PreviewOut(devices=changed, unchanged=len(plans) - len(changed))


@router.post(
    "/config/preview", tags=["configuration"], dependencies=rule(Permission.CONFIG_WRITE), responses=REFUSED,
    summary="What a change of a layer would do: which devices change, and the diff of each",
)  # fmt: skip
def preview(body: ChangeIn, svc: ServicesDep) -> PreviewOut:
    return _preview(svc, Proposal(body.scope, _target(body.scope, body.target), body.document))


@router.post(
    "/config/members/{device_id}/preview", tags=["configuration"], dependencies=rule(Permission.CONFIG_WRITE),
    responses=REFUSED, summary="What moving a device to a group (or out of one) would change in its document",
)  # fmt: skip
def preview_member(
    device_id: Annotated[str, Path(pattern=DEVICE_ID_PATTERN)], body: MemberIn, svc: ServicesDep
) -> PreviewOut:
    return _preview(svc, Proposal(member=(device_id, body.group)))


@router.post(
    "/config/layers", tags=["configuration"], dependencies=rule(Permission.CONFIG_WRITE), responses=REFUSED,
    summary="Set a layer's document (a new version) and publish every device's new effective document",
)  # fmt: skip
def change_layer(body: ChangeIn, request: Request, svc: ServicesDep) -> ApplyOut:
    target = _target(body.scope, body.target)
    return _apply(svc, request, Proposal(body.scope, target, body.document), comment=body.comment)


@router.post(
    "/config/rollback", tags=["configuration"], dependencies=rule(Permission.CONFIG_WRITE),
    responses={**REFUSED, 404: {"model": ErrorOut, "description": "No such version of this layer."}},
    summary="Make an earlier version's document current again (as a new version)",
)  # fmt: skip
def rollback(body: RollbackIn, request: Request, svc: ServicesDep) -> ApplyOut:
    target = _target(body.scope, body.target)
    with svc.sessions() as session:
        old = session.scalars(
            select(ConfigLayer).where(
                ConfigLayer.scope == body.scope, ConfigLayer.target == target, ConfigLayer.version == body.version
            )
        ).first()
    if old is None:
        raise HTTPException(status_code=404, detail=f"the {body.scope} layer {target!r} has no version {body.version}")
    return _apply(
        svc, request, Proposal(body.scope, target, old.document), comment=body.comment, rolled_back_from=old.version
    )


@router.get(
    "/config/layers", tags=["configuration"], dependencies=rule(Permission.FLEET_READ),
    summary="Layer versions (the history), newest first, paginated",
)  # fmt: skip
def list_layers(
    svc: ServicesDep,
    scope: Annotated[Scope | None, Query(description="Only this scope.")] = None,
    target: Annotated[
        str | None, Query(max_length=64, pattern=DEVICE_ID_PATTERN, description="Only this group or device.")
    ] = None,
    limit: Limit = 50,
    cursor: IdCursor = None,
) -> Page[LayerOut]:
    before = int_cursor(cursor)
    q = select(ConfigLayer).order_by(ConfigLayer.id.desc()).limit(limit + 1)
    if scope is not None:
        q = q.where(ConfigLayer.scope == scope)
    if target is not None:
        q = q.where(ConfigLayer.target == target)
    if before is not None:
        q = q.where(ConfigLayer.id < before)
    with svc.sessions() as session:
        rows, more = split(list(session.scalars(q)), limit)
    return Page[LayerOut](items=[LayerOut.of(r) for r in rows], next=str(rows[-1].id) if more else None)


@router.put(
    "/config/members/{device_id}", tags=["configuration"], dependencies=rule(Permission.CONFIG_WRITE),
    responses=REFUSED, summary="Put a device in a configuration group (or take it out) and publish its new document",
)  # fmt: skip
def set_member(
    device_id: Annotated[str, Path(pattern=DEVICE_ID_PATTERN)], body: MemberIn, request: Request, svc: ServicesDep
) -> ApplyOut:
    return _apply(svc, request, Proposal(member=(device_id, body.group)))


@router.get(
    "/config/members", tags=["configuration"], dependencies=rule(Permission.FLEET_READ),
    summary="Devices in configuration groups, by device id, paginated",
)  # fmt: skip
def list_members(
    svc: ServicesDep,
    group: Annotated[str | None, Query(pattern=GROUP_PATTERN, description="Only this group.")] = None,
    limit: Limit = 50,
    cursor: Annotated[str | None, Query(pattern=DEVICE_ID_PATTERN, description="`next` of the previous page.")] = None,
) -> Page[MemberOut]:
    q = select(ConfigGroupMember).order_by(ConfigGroupMember.device_id).limit(limit + 1)
    if group is not None:
        q = q.where(ConfigGroupMember.group_name == group)
    if cursor is not None:
        q = q.where(ConfigGroupMember.device_id > cursor)
    with svc.sessions() as session:
        rows, more = split(list(session.scalars(q)), limit)
    items = [MemberOut(device_id=r.device_id, group=r.group_name) for r in rows]
    return Page[MemberOut](items=items, next=rows[-1].device_id if more else None)


@router.get(
    "/config/devices", tags=["configuration"], dependencies=rule(Permission.FLEET_READ),
    summary="Per device: desired and applied version, drift, last refusal; by device id, paginated",
)  # fmt: skip
def list_device_configs(
    svc: ServicesDep,
    limit: Limit = 50,
    cursor: Annotated[str | None, Query(pattern=DEVICE_ID_PATTERN, description="`next` of the previous page.")] = None,
) -> Page[DeviceConfigOut]:
    q = select(DeviceConfig).order_by(DeviceConfig.device_id).limit(limit + 1)
    if cursor is not None:
        q = q.where(DeviceConfig.device_id > cursor)
    with svc.sessions() as session:
        rows, more = split(list(session.scalars(q)), limit)
    return Page[DeviceConfigOut](items=_statuses(svc, rows), next=rows[-1].device_id if more else None)


@router.get(
    "/config/devices/{device_id}", tags=["configuration"], dependencies=rule(Permission.FLEET_READ),
    responses={404: {"model": ErrorOut, "description": "No configuration for this device."}},
    summary="One device's configuration state and effective document",
)  # fmt: skip
def get_device_config(device_id: Annotated[str, Path(pattern=DEVICE_ID_PATTERN)], svc: ServicesDep) -> DeviceConfigOut:
    with svc.sessions() as session:
        row = session.get(DeviceConfig, device_id)
    if row is None:
        raise HTTPException(status_code=404, detail=f"no configuration for device {device_id!r}")
    return _statuses(svc, [row], with_document=True)[0]


@router.post(
    "/config/publish", tags=["configuration"], dependencies=rule(Permission.CONFIG_WRITE),
    summary="Publish again every desired document not on the broker yet (after a broker outage)",
)  # fmt: skip
def publish_pending(svc: ServicesDep) -> list[DeviceConfigOut]:
    return _statuses(svc, _publish_configs(svc, None))


# --- commands ------------------------------------------------------------------------------------

# Commands that only make sense with the server's own bookkeeping around them: sent through this
# generic route they would give the box a credential the server never made (or never retires).
OWN_ROUTE = {
    "rotate_credentials": "POST /api/devices/{device_id}/credentials/rotate (the server makes the new credential, "
    "seals it to the box and retires the old one once the box acks)",
}


@router.post(
    "/devices/{device_id}/commands", tags=["commands"], dependencies=rule(Permission.COMMANDS_SEND),
    summary="Send a command (restart_camera, snapshot, set_log_level) with a server-chosen id",
)  # fmt: skip
def send_command(
    device_id: Annotated[str, Path(pattern=DEVICE_ID_PATTERN)], body: CommandIn, request: Request, svc: ServicesDep
) -> CommandOut:
    if body.name in OWN_ROUTE:
        raise HTTPException(status_code=422, detail=f"name: {body.name} is not sent through this route; use "
                            f"{OWN_ROUTE[body.name].format(device_id=device_id)}")  # fmt: skip
    model = COMMAND_ARGS.get(body.name)
    if model is None:
        raise HTTPException(status_code=422, detail=f"name: unknown command {body.name[:64]!r}; known: "
                            f"{', '.join(n for n in COMMAND_ARGS if n not in OWN_ROUTE)}")  # fmt: skip
    try:
        args = model.model_validate(body.args).model_dump(mode="json", exclude_unset=True)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(["args", *(str(p) for p in first["loc"])])
        raise HTTPException(status_code=422, detail=f"{where}: {first['msg']}") from None
    now = datetime.now(timezone.utc)
    expires = now + timedelta(seconds=body.expires_in_s) if body.expires_in_s else None
    actor = principal(request).actor(client_address(request))
    command_id = new_message_id()
    with svc.sessions.begin() as session:
        row = DeviceCommand(command_id=command_id, device_id=device_id, name=body.name, args=args, expires_at=expires,
                            created_by=actor.name[:120], created_at=now, status="unsent")  # fmt: skip
        session.add(row)
        seq = svc_config.down_seq(session, device_id)
        audit.record(session, actor, "command.send", "device", device_id,
                     after={"command_id": command_id, "name": body.name, "args": args})  # fmt: skip
    message = build(Command(command_id=command_id, name=body.name, args=args, expires_at=expires),
                    device_id=device_id, seq=seq)  # fmt: skip
    error = None
    try:
        outgoing = Outgoing(topics.down(device_id, "command"), encode(message), retain=False)
        anyio.from_thread.run(publish, svc.settings, [outgoing])
    except PublishError as exc:
        error = str(exc)[:300]
    this = DeviceCommand.command_id == command_id
    with svc.sessions.begin() as session:
        if error:
            session.execute(update(DeviceCommand).where(this).values(publish_error=error))
        else:
            session.execute(update(DeviceCommand).where(this).values(published_at=datetime.now(timezone.utc)))
            # An ack may already be in (a fast box). One conditional UPDATE, not read-then-write: the
            # ingest can commit the ack between a read and the write, and 'sent' would overwrite 'done'.
            session.execute(update(DeviceCommand).where(this, DeviceCommand.status == "unsent").values(status="sent"))
        stored = session.scalars(select(DeviceCommand).where(this)).one()
    return CommandOut.of(stored)


@router.get(
    "/devices/{device_id}/commands", tags=["commands"], dependencies=rule(Permission.FLEET_READ),
    summary="Commands sent to a device and their acks, newest first, paginated",
)  # fmt: skip
def list_commands(
    device_id: Annotated[str, Path(pattern=DEVICE_ID_PATTERN)], svc: ServicesDep, limit: Limit = 50,
    cursor: IdCursor = None,
) -> Page[CommandOut]:  # fmt: skip
    before = int_cursor(cursor)
    q = select(DeviceCommand).where(DeviceCommand.device_id == device_id).order_by(DeviceCommand.id.desc())
    if before is not None:
        q = q.where(DeviceCommand.id < before)
    with svc.sessions() as session:
        rows, more = split(list(session.scalars(q.limit(limit + 1))), limit)
    return Page[CommandOut](items=[CommandOut.of(r) for r in rows], next=str(rows[-1].id) if more else None)
