"""Credential rotation over HTTP: start one for a box (ops), and see where each box's stands."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from . import credential_rotation, registry, scope
from .api import DENIED, ERRORS, rule
from .models import CredentialRotation
from .registry_api import CONFLICT, NOT_FOUND, SlugPath, actor_of
from .roles import Permission
from .schemas import ErrorOut
from .services import ServicesDep

router = APIRouter(prefix="/api", responses={**ERRORS, **DENIED})


class RotationOut(BaseModel):
    id: int
    device_id: str
    kind: str = Field(description="password | certificate")
    state: str = Field(description="pending | completed | failed | expired")
    command_id: str
    requested_by: str
    requested_at: datetime
    expires_at: datetime
    finished_at: datetime | None
    reason: str | None = Field(description="Why it failed or expired; for a completed one, what is left to do.")
    new_login: str | None
    old_serial: str | None
    new_serial: str | None

    @classmethod
    def of(cls, row: CredentialRotation) -> RotationOut:
        return cls(
            id=row.id, device_id=row.device_id, kind=row.kind, state=row.state, command_id=row.command_id,
            requested_by=row.requested_by, requested_at=row.requested_at, expires_at=row.expires_at,
            finished_at=row.finished_at, reason=row.reason, new_login=row.new_login, old_serial=row.old_serial,
            new_serial=row.new_serial,
        )  # fmt: skip


class CredentialsOut(BaseModel):
    device_id: str
    kind: str | None = Field(description="password | certificate; null: enrolled before keys were kept.")
    broker_login: str | None
    certificate_serial: str | None
    rotatable: bool
    rotations: list[RotationOut] = Field(description="Newest first, at most 20.")


@router.post(
    "/devices/{device_id}/credentials/rotate", tags=["registry"], status_code=202,
    summary="Rotate a box's broker credential: the new one is sent to the box, the old one is retired once the "
    "box acks from the new one",
    dependencies=rule(Permission.REGISTRY_MANAGE),
    responses={**CONFLICT, 503: {"model": ErrorOut, "description": "The broker did not answer: try again."}},
)  # fmt: skip
async def rotate(device_id: SlugPath, request: Request, svc: ServicesDep) -> RotationOut:
    try:
        row = await credential_rotation.start(svc, device_id, actor_of(request))
    except credential_rotation.RotationError as exc:
        raise HTTPException(status_code=exc.status, detail=exc.detail) from None
    if row.state == "failed":
        raise HTTPException(status_code=503, detail=row.reason or "the command could not be sent")
    return RotationOut.of(row)


@router.get(
    "/devices/{device_id}/credentials", tags=["registry"], dependencies=rule(Permission.FLEET_READ),
    summary="A box's broker credential and its rotations (pending, completed, failed, expired; when)",
    responses=NOT_FOUND,
)  # fmt: skip
async def credentials(device_id: SlugPath, request: Request, svc: ServicesDep) -> CredentialsOut:
    sites = scope.sites_of(request)

    def read() -> CredentialsOut:
        with svc.sessions() as session:
            scope.check_device(session, sites, device_id)
            try:
                device = registry.get_device(session, device_id)
            except registry.RegistryError as exc:
                raise HTTPException(status_code=exc.status, detail=exc.detail) from None
            out = CredentialsOut(
                device_id=device_id, kind=device.credential_kind, broker_login=device.broker_login,
                certificate_serial=device.certificate_serial,
                rotatable=device.status == "active" and device.box_public_key is not None, rotations=[],
            )  # fmt: skip
        out.rotations = [RotationOut.of(r) for r in credential_rotation.history(svc, device_id)]
        return out

    return await run_in_threadpool(read)
