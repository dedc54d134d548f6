"""Enrolment over HTTP: codes for poles (ops, technicians on their sites), the public enrolment
endpoint a box calls with a code, its status poll, and revoking or replacing a box.

The broker side goes through the dynamic-security plugin (broker_access/dynsec.py): enrolment makes
or refreshes the box's account, revocation disables it, which disconnects a connected box at once.
The broker is asked first and the database second: a refused broker leaves the code unused, and an
account made for a box that then loses a race for its code is deleted again.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import secrets
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from polewatch.protocol.enrolment import BrokerGrant, EnrolmentGrant, EnrolmentRefused, EnrolmentRequest, normalise_code

from . import enrolment, registry, scope
from .api import DENIED, ERRORS, rule
from .auth import PUBLIC, client_address
from .broker_access import pki
from .broker_access.dynsec import DynsecAdmin, DynsecError
from .models import EnrolmentCode
from .pagination import IdCursor, Limit, RowIdPath, int_cursor
from .registry_api import CONFLICT, SlugFilter, SlugPath, actor_of, change, device_out
from .registry_schemas import RegisteredDeviceOut, Slug
from .roles import Permission
from .schemas import ErrorOut
from .services import Services, ServicesDep
from .signing_key import public_key_pem

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api", responses={**ERRORS, **DENIED})
REFUSED: dict[int | str, dict[str, object]] = {
    code: {"model": EnrolmentRefused, "description": what}
    for code, what in (
        (404, "Unknown code."), (409, "The code enrolled another box, or the box was revoked."),
        (410, "The code expired or was withdrawn."), (429, "Too many attempts from this address."),
    )
}  # fmt: skip
UNAVAILABLE: dict[int | str, dict[str, object]] = {
    409: {"model": ErrorOut, "description": "The broker's admin account is not configured on this server."},
    503: {"model": ErrorOut, "description": "The broker's admin does not answer: try again."},
}


class CodeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pole_id: Slug
    expires_in_hours: float = Field(default=72, gt=0, le=24 * 30, strict=True)
    preset: dict[str, Any] | None = Field(default=None, description="Remote config document the box starts with.")


class CodeOut(BaseModel):
    id: int
    pole_id: str
    site_id: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    state: str = Field(description="open | used | expired | revoked")
    device_id: str | None
    preset: bool

    @classmethod
    def of(cls, row: EnrolmentCode, now: datetime) -> CodeOut:
        state = (
            "revoked" if row.revoked_at else "used" if row.used_at else "expired" if row.expires_at <= now else "open"
        )
        return cls(
            id=row.id, pole_id=row.pole_id, site_id=row.site_id, created_by=row.created_by, created_at=row.created_at,
            expires_at=row.expires_at, state=state, device_id=row.device_id, preset=row.preset is not None,
        )  # fmt: skip


class NewCodeOut(CodeOut):
    code: str = Field(description="Shown once: the server keeps only its hash.")
    qr_png_base64: str = Field(description="The code as a QR PNG, for the work order.")


class CodePage(BaseModel):
    items: list[CodeOut]
    next: str | None


class StatusIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(max_length=40)
    box_fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")


class StatusOut(BaseModel):
    device_id: str
    pole_id: str
    enrolled_at: datetime
    first_heartbeat_at: datetime | None


class ReplaceOut(BaseModel):
    revoked: RegisteredDeviceOut
    code: NewCodeOut


# --- the broker ---------------------------------------------------------------------------------------------


def _admin(svc: Services) -> DynsecAdmin:
    s = svc.settings
    if s.dynsec_password is None:  # a setting, not an outage: 409, so no client retries it as if transient
        raise HTTPException(
            status_code=409,
            detail="the broker's admin account is not configured (POLEWATCH_DYNSEC_PASSWORD): the server cannot "
            "make, revoke or replace boxes' broker accounts",
        )
    # TLS when the admin goes to the ingest's listener; a --dynsec-port of its own is the broker's
    # plain loopback listener (broker-setup --local-port), where TLS would fail.
    same_listener = s.dynsec_port in (None, s.mqtt_port)
    return DynsecAdmin(
        s.dynsec_host or s.mqtt_host, s.dynsec_port or s.mqtt_port, username=s.dynsec_username,
        password=s.dynsec_password.get_secret_value(), tls_context=s.mqtt_tls_context() if same_listener else None,
    )  # fmt: skip


async def _broker(svc: Services, what: str, call: Any) -> None:
    try:
        async with _admin(svc) as admin:
            await call(admin)
    except HTTPException:
        raise
    except (DynsecError, OSError, Exception) as exc:  # aiomqtt.MqttError and the plugin's refusals
        log.error("broker admin failed", extra={"what": what, "error": str(exc)})
        raise HTTPException(status_code=503, detail=f"the broker did not {what}: {exc}; try again") from None


# --- codes --------------------------------------------------------------------------------------------------


def _sites_of(request: Request) -> list[str] | None:
    """Technicians work on their assigned sites only; other roles with the permission on all."""
    return scope.sites_of(request)


def _new_code_out(row: EnrolmentCode, code: str) -> NewCodeOut:
    base = CodeOut.of(row, row.created_at)
    png = base64.b64encode(enrolment.qr_png(code)).decode()
    return NewCodeOut(**base.model_dump(), code=code, qr_png_base64=png)


@router.post(
    "/enrolment/codes", tags=["enrolment"], summary="A one-time enrolment code for a pole (shown once, with its QR)",
    status_code=201, dependencies=rule(Permission.ENROLMENT_MANAGE), responses=CONFLICT,
)  # fmt: skip
def create_code(body: CodeIn, request: Request, svc: ServicesDep) -> NewCodeOut:
    with change(svc) as session:
        row, code = enrolment.create_code(
            session, actor_of(request), body.pole_id, lifetime=timedelta(hours=body.expires_in_hours),
            preset=body.preset, allowed_sites=_sites_of(request),
        )  # fmt: skip
        return _new_code_out(row, code)


@router.get(
    "/enrolment/codes", tags=["enrolment"], summary="Enrolment codes (never the codes themselves), newest first",
    dependencies=rule(Permission.ENROLMENT_MANAGE),
)  # fmt: skip
def list_codes(
    request: Request, svc: ServicesDep, pole_id: SlugFilter = None, limit: Limit = 50, cursor: IdCursor = None
) -> CodePage:
    now = enrolment._now()
    with svc.sessions() as session:
        rows, more = enrolment.list_codes(
            session, pole_id=pole_id, limit=limit, before=int_cursor(cursor), allowed_sites=_sites_of(request)
        )
        return CodePage(items=[CodeOut.of(r, now) for r in rows], next=str(rows[-1].id) if more and rows else None)


@router.post(
    "/enrolment/codes/{code_id}/revoke", tags=["enrolment"], summary="Withdraw an unused code",
    dependencies=rule(Permission.ENROLMENT_MANAGE), responses=CONFLICT,
)  # fmt: skip
def revoke_code(code_id: RowIdPath, request: Request, svc: ServicesDep) -> CodeOut:
    with change(svc) as session:
        row = enrolment.revoke_code(session, actor_of(request), code_id, allowed_sites=_sites_of(request))
        return CodeOut.of(row, enrolment._now())


# --- the box's side -----------------------------------------------------------------------------------------


class _Limits:
    def __init__(self, per_minute: int) -> None:
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self.item = RateLimitItemPerMinute(per_minute)

    def wait(self, client: str) -> float | None:
        if self.limiter.hit(self.item, "enrol", client):
            return None
        reset_at = self.limiter.get_window_stats(self.item, "enrol", client).reset_time
        return max(1.0, math.ceil(reset_at - time.time()))


def _limits(request: Request, svc: Services) -> _Limits:
    limits: _Limits | None = getattr(request.app.state, "enrolment_limits", None)
    if limits is None:
        limits = _Limits(svc.settings.enrolment_per_minute_per_client)
        request.app.state.enrolment_limits = limits
    return limits


def _refused(status: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        status_code=status, content=EnrolmentRefused(reason=reason, detail=detail).model_dump(), headers=headers
    )


def _fingerprint(csr: x509.CertificateSigningRequest) -> str:
    der = csr.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _public_key_pem(csr: x509.CertificateSigningRequest) -> str:
    """Kept for rotation: a new password is sealed to it, a new certificate signed for it."""
    pem = csr.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem.decode()


def _read_text(path: str | None) -> str | None:
    return Path(path).read_text() if path else None


def _client_certificate(svc: Services, csr: x509.CertificateSigningRequest, device_id: str) -> str | None:
    s = svc.settings
    if not (s.enrolment_ca_file and s.enrolment_ca_key_file):
        return None
    ca = pki.CertificateAuthority.load(Path(s.enrolment_ca_file), Path(s.enrolment_ca_key_file))
    return pki.sign_csr_as(ca, csr, device_id).public_bytes(serialization.Encoding.PEM).decode()


def _serial_of(certificate_pem: str | None) -> str | None:
    if certificate_pem is None:
        return None
    return format(x509.load_pem_x509_certificate(certificate_pem.encode()).serial_number, "x")


@router.post(
    "/enrolment", tags=["enrolment"], summary="A box enrols with a one-time code (public: the code is the credential)",
    dependencies=rule(PUBLIC), response_model=EnrolmentGrant,
    responses={**REFUSED, 503: {"model": ErrorOut, "description": "Enrolment is not set up, or the broker is down."}},
)  # fmt: skip
async def enrol(body: EnrolmentRequest, request: Request, svc: ServicesDep) -> EnrolmentGrant | JSONResponse:
    client = client_address(request) or "unknown"
    wait = _limits(request, svc).wait(client)
    if wait is not None:
        return _refused(429, "rate_limited", f"too many enrolment attempts: try again in {wait:.0f} s",
                        {"Retry-After": str(int(wait))})  # fmt: skip
    try:
        csr = x509.load_pem_x509_csr(body.csr_pem.encode())
        if not csr.is_signature_valid:
            raise ValueError("its signature is not valid")
    except ValueError as exc:
        return _refused(422, "invalid", f"the certificate signing request cannot be used: {exc}")
    settings = svc.settings
    if settings.enrolment_broker_host is None or settings.dynsec_password is None:
        # 503, not 4xx: the box keeps its request and retries, and enrols once ops set the server up.
        raise HTTPException(
            status_code=503,
            detail="enrolment is not set up on this server (the broker's public host and admin account): ask ops",
        )
    fingerprint = _fingerprint(csr)
    try:
        with svc.sessions() as session:
            plan = await run_in_threadpool(enrolment.plan, session, body.code, fingerprint)
    except enrolment.Refused as exc:
        return _refused(exc.status, exc.reason, exc.detail)
    try:
        certificate = _client_certificate(svc, csr, plan.device_id)
    except ValueError as exc:
        return _refused(422, "invalid", f"the certificate signing request cannot be used: {exc}")
    password = secrets.token_urlsafe(24)
    await _broker(svc, "create the box's account", lambda admin: admin.ensure_device(plan.device_id, password))

    def save() -> datetime:
        with svc.sessions.begin() as session:
            return enrolment.claim(
                session, plan, fingerprint, body.box, [c.camera_id for c in body.cameras], client,
                certificate_serial=_serial_of(certificate), public_key_pem=_public_key_pem(csr),
                credential_kind="certificate" if certificate and settings.enrolment_broker_cert_port else "password",
            )  # fmt: skip

    try:
        enrolled_at = await run_in_threadpool(save)
    except enrolment.Refused as exc:
        if plan.new_device:  # lost the race for the code: the account made for it must not stay
            await _broker(svc, "remove an unused account", lambda admin: admin.remove(plan.device_id))
        return _refused(exc.status, exc.reason, exc.detail)
    broker = BrokerGrant(
        host=settings.enrolment_broker_host, port=settings.enrolment_broker_port, tls=settings.enrolment_broker_tls,
        ca_pem=_read_text(settings.enrolment_ca_file), username=plan.device_id, password=password,
        client_certificate_pem=certificate,
        certificate_port=settings.enrolment_broker_cert_port if certificate is not None else None,
    )  # fmt: skip
    command_key, _ = await run_in_threadpool(public_key_pem, settings)
    log.info("box enrolled", extra={"device_id": plan.device_id, "pole_id": plan.pole_id, "new": plan.new_device})
    return EnrolmentGrant(
        device_id=plan.device_id, pole_id=plan.pole_id, site=plan.site_id, box_fingerprint=fingerprint, broker=broker,
        server_url=settings.enrolment_public_url or str(request.base_url).rstrip("/"), config=plan.preset,
        reissued=not plan.new_device, enrolled_at=enrolled_at, command_key_pem=command_key,
    )  # fmt: skip


@router.post(
    "/enrolment/status", tags=["enrolment"], summary="For the box that used a code: its device and first heartbeat",
    dependencies=rule(PUBLIC),
    responses={
        404: {"model": ErrorOut, "description": "No box enrolled with this."},
        429: {"model": ErrorOut, "description": "Too many requests from this address."},
    },
)  # fmt: skip
def enrolment_status(body: StatusIn, request: Request, svc: ServicesDep) -> StatusOut:
    wait = _limits(request, svc).wait(client_address(request) or "unknown")
    if wait is not None:
        raise HTTPException(status_code=429, detail=f"too many requests: try again in {wait:.0f} s")
    try:
        code = normalise_code(body.code)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    with svc.sessions() as session:
        found = enrolment.status(session, code, body.box_fingerprint)
    if found is None:
        raise HTTPException(status_code=404, detail="no box with this key enrolled with this code")
    return StatusOut(**found.__dict__)


# --- revoke and replace -------------------------------------------------------------------------------------


@router.post(
    "/registry/devices/{device_id}/revoke", tags=["registry"],
    summary="Revoke a box: its broker account is disabled (a connected box is cut off) and it leaves its pole",
    dependencies=rule(Permission.REGISTRY_MANAGE), responses={**CONFLICT, **UNAVAILABLE},
)  # fmt: skip
async def revoke_device(device_id: SlugPath, request: Request, svc: ServicesDep) -> RegisteredDeviceOut:
    return await _retire(device_id, request, svc, "revoked")


async def _retire(device_id: str, request: Request, svc: Services, action: str) -> RegisteredDeviceOut:
    def check() -> None:
        with change(svc) as session:
            if registry.get_device(session, device_id).status != "active":
                raise HTTPException(status_code=409, detail=f"device {device_id!r} is revoked already")

    await run_in_threadpool(check)
    await _broker(svc, "disable the box's account", lambda admin: admin.revoke(device_id))

    def save() -> RegisteredDeviceOut:
        with change(svc) as session:
            device = registry.revoke_device(session, actor_of(request), device_id, action=action)
            return device_out(session, [device])[0]

    return await run_in_threadpool(save)


@router.post(
    "/registry/devices/{device_id}/replace", tags=["registry"],
    summary="Replace a box: revoke it and make a code for a new box on the same pole (which inherits the pole's "
    "preset and history, not this box's identity)",
    status_code=201, dependencies=rule(Permission.REGISTRY_MANAGE), responses={**CONFLICT, **UNAVAILABLE},
)  # fmt: skip
async def replace_device(
    device_id: SlugPath, request: Request, svc: ServicesDep,
    expires_in_hours: Annotated[float, Query(gt=0, le=24 * 30)] = 72,
) -> ReplaceOut:  # fmt: skip
    def pole() -> str:
        with change(svc) as session:
            pole_id = registry.get_device(session, device_id).pole_id
            if pole_id is None:
                raise HTTPException(status_code=409, detail=f"device {device_id!r} is on no pole: revoke it instead")
            return pole_id

    pole_id = await run_in_threadpool(pole)
    revoked = await _retire(device_id, request, svc, "replaced")

    def new_code() -> NewCodeOut:
        with change(svc) as session:
            row, code = enrolment.create_code(
                session, actor_of(request), pole_id, lifetime=timedelta(hours=expires_in_hours)
            )
            return _new_code_out(row, code)

    return ReplaceOut(revoked=revoked, code=await run_in_threadpool(new_code))
