"""Alerts over HTTP: lists, one alert with its steps, the lifecycle steps, agencies, routing rules.

Lifecycle routes are `async` only to publish the step on the live feed from the event loop (the
feed is loop-bound); the database work runs in a worker thread like every other route's.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from polewatch.protocol.topics import DEVICE_ID_PATTERN

from . import alerts, evidence
from .alert_schemas import (
    AgencyIn,
    AgencyOut,
    AgencyPage,
    AlertChangeOut,
    AlertDetailOut,
    AlertOut,
    AlertPage,
    AssignIn,
    DeliveryOut,
    DeliveryPage,
    RoutingRuleIn,
    RoutingRuleOut,
    RoutingRulePage,
    Status,
    StepIn,
    StepOut,
)
from .api import DENIED, ERRORS, rule
from .audit import Actor, record
from .auth import client_address, principal
from .feed import FeedItem
from .models import Agency, Alert, AlertStep, Delivery, RoutingRule
from .pagination import MAX_ROW_ID, IdCursor, Limit, int_cursor, split
from .roles import Permission
from .schemas import ErrorOut
from .services import Services, ServicesDep

router = APIRouter(prefix="/api", responses={**ERRORS, **DENIED})

AlertId = Annotated[int, Path(ge=1, le=MAX_ROW_ID, description="The alert's id.")]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "No such alert."}}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorOut, "description": "The alert's status does not allow this step."}
}


@router.get("/alerts", tags=["alerts"], summary="Alerts, newest first, paginated",
            dependencies=rule(Permission.ALERTS_READ))  # fmt: skip
def list_alerts(
    svc: ServicesDep,
    status: Annotated[Status | None, Query(description="Only alerts in this status.")] = None,
    device_id: Annotated[str | None, Query(pattern=DEVICE_ID_PATTERN, description="Only this device's.")] = None,
    limit: Limit = 50,
    cursor: IdCursor = None,
) -> AlertPage:
    before = int_cursor(cursor)
    q = select(Alert).order_by(Alert.id.desc()).limit(limit + 1)
    if status is not None:
        q = q.where(Alert.status == status)
    if device_id is not None:
        q = q.where(Alert.device_id == device_id)
    if before is not None:
        q = q.where(Alert.id < before)
    with svc.sessions() as session:
        rows, more = split(list(session.scalars(q)), limit)
        return AlertPage(items=[AlertOut.of(r) for r in rows], next=str(rows[-1].id) if more and rows else None)


@router.get("/alerts/{alert_id}", tags=["alerts"], summary="One alert with every step of its life",
            dependencies=rule(Permission.ALERTS_READ), responses=NOT_FOUND)  # fmt: skip
def get_alert(alert_id: AlertId, svc: ServicesDep) -> AlertDetailOut:
    with svc.sessions() as session:
        alert = session.get(Alert, alert_id)
        if alert is None:
            raise HTTPException(status_code=404, detail=f"no alert {alert_id}")
        steps = session.scalars(select(AlertStep).where(AlertStep.alert_id == alert_id).order_by(AlertStep.id))
        return AlertDetailOut(**AlertOut.of(alert).model_dump(), steps=[StepOut.of(s) for s in steps])


def _advance(svc: Services, alert_id: int, step: str, actor: Actor, body: StepIn) -> AlertChangeOut:
    agency_id = body.agency_id if isinstance(body, AssignIn) else None
    try:
        with svc.sessions.begin() as session:
            change = alerts.advance(session, alert_id, step, actor, agency_id=agency_id, note=body.note)
            out = AlertChangeOut(step=StepOut.of(change.step), alert=AlertOut.of(change.alert))
    except alerts.AlertError as exc:
        raise HTTPException(status_code=exc.status, detail=exc.detail) from None
    return out


async def _step(request: Request, svc: Services, alert_id: int, step: str, body: StepIn) -> AlertChangeOut:
    actor = principal(request).actor(client_address(request))
    out = await run_in_threadpool(_advance, svc, alert_id, step, actor, body)
    svc.feed.publish(FeedItem("alert", out.model_dump(mode="json"), out.step.id))
    if step == "assign":
        request.app.state.dispatcher.wake()
    return out


_STEP: dict[str, Any] = {
    "tags": ["alerts"], "dependencies": rule(Permission.ALERTS_HANDLE), "responses": {**NOT_FOUND, **CONFLICT},
}  # fmt: skip


@router.post("/alerts/{alert_id}/acknowledge", summary="Acknowledge a new alert (an operator is on it)", **_STEP)
async def acknowledge(
    alert_id: AlertId, request: Request, svc: ServicesDep, body: StepIn | None = None
) -> AlertChangeOut:
    return await _step(request, svc, alert_id, "acknowledge", body or StepIn())


@router.post("/alerts/{alert_id}/assign", summary="Assign to an agency (the routed one by default) and deliver",
             **_STEP)  # fmt: skip
async def assign(alert_id: AlertId, request: Request, svc: ServicesDep, body: AssignIn | None = None) -> AlertChangeOut:
    return await _step(request, svc, alert_id, "assign", body or AssignIn())


@router.post("/alerts/{alert_id}/resolve", summary="Close an acknowledged or assigned alert as dealt with", **_STEP)
async def resolve(alert_id: AlertId, request: Request, svc: ServicesDep, body: StepIn | None = None) -> AlertChangeOut:
    return await _step(request, svc, alert_id, "resolve", body or StepIn())


@router.post("/alerts/{alert_id}/false-alarm", summary="Close an open alert as a false alarm", **_STEP)
async def false_alarm(
    alert_id: AlertId, request: Request, svc: ServicesDep, body: StepIn | None = None
) -> AlertChangeOut:
    return await _step(request, svc, alert_id, "false_alarm", body or StepIn())


# --- agencies and routing rules ---------------------------------------------------------------------


@router.get("/agencies", tags=["routing"], summary="Agencies alerts go to, by id, paginated",
            dependencies=rule(Permission.ALERTS_READ))  # fmt: skip
def list_agencies(svc: ServicesDep, limit: Limit = 50, cursor: IdCursor = None) -> AgencyPage:
    after = int_cursor(cursor)
    q = select(Agency).order_by(Agency.id).limit(limit + 1)
    if after is not None:
        q = q.where(Agency.id > after)
    with svc.sessions() as session:
        rows, more = split(list(session.scalars(q)), limit)
        return AgencyPage(items=[AgencyOut.of(r) for r in rows], next=str(rows[-1].id) if more and rows else None)


@router.post("/agencies", tags=["routing"], summary="Add an agency", status_code=201,
             dependencies=rule(Permission.ROUTING_MANAGE),
             responses={409: {"model": ErrorOut, "description": "An agency of that name exists."}})  # fmt: skip
def add_agency(body: AgencyIn, request: Request, svc: ServicesDep) -> AgencyOut:
    actor = principal(request).actor(client_address(request))
    try:
        with svc.sessions.begin() as session:
            row = Agency(name=body.name, webhook_url=str(body.webhook_url) if body.webhook_url else None,
                         format=body.format, secret=body.secret, created_at=datetime.now(timezone.utc))  # fmt: skip
            session.add(row)
            session.flush()
            out = AgencyOut.of(row)
            record(session, actor, "agency.create", "agency", row.id, after=out.model_dump(mode="json"))
    except IntegrityError:
        raise HTTPException(status_code=409, detail=f"an agency named {body.name!r} exists already") from None
    return out


@router.get("/routing-rules", tags=["routing"], summary="Routing rules, in the order they are tried",
            dependencies=rule(Permission.ALERTS_READ))  # fmt: skip
def list_routing_rules(svc: ServicesDep, limit: Limit = 50, cursor: IdCursor = None) -> RoutingRulePage:
    after = int_cursor(cursor)
    q = select(RoutingRule).order_by(RoutingRule.id).limit(limit + 1)
    if after is not None:
        q = q.where(RoutingRule.id > after)
    with svc.sessions() as session:
        rows, more = split(list(session.scalars(q)), limit)
        items = sorted((RoutingRuleOut.of(r) for r in rows), key=lambda r: (r.position, r.id))
        return RoutingRulePage(items=items, next=str(rows[-1].id) if more and rows else None)


@router.post("/routing-rules", tags=["routing"], summary="Add a routing rule", status_code=201,
             dependencies=rule(Permission.ROUTING_MANAGE))  # fmt: skip
def add_routing_rule(body: RoutingRuleIn, request: Request, svc: ServicesDep) -> RoutingRuleOut:
    actor = principal(request).actor(client_address(request))
    with svc.sessions.begin() as session:
        if session.get(Agency, body.agency_id) is None:
            raise HTTPException(status_code=422, detail=f"no agency {body.agency_id}")
        row = RoutingRule(**body.model_dump(), created_at=datetime.now(timezone.utc))
        session.add(row)
        session.flush()
        out = RoutingRuleOut.of(row)
        record(session, actor, "routing_rule.create", "routing_rule", row.id, after=out.model_dump(mode="json"))
    return out


# --- deliveries and the dead-letter list -------------------------------------------------------------


@router.get("/alert-deliveries", tags=["routing"], summary="Webhook deliveries, newest first; state=dead: dead letters",
            dependencies=rule(Permission.ALERTS_READ))  # fmt: skip
def list_deliveries(
    svc: ServicesDep,
    state: Annotated[Literal["pending", "delivered", "dead"] | None, Query(description="Only this state.")] = None,
    limit: Limit = 50,
    cursor: IdCursor = None,
) -> DeliveryPage:
    before = int_cursor(cursor)
    q = select(Delivery).order_by(Delivery.id.desc()).limit(limit + 1)
    if state is not None:
        q = q.where(Delivery.state == state)
    if before is not None:
        q = q.where(Delivery.id < before)
    with svc.sessions() as session:
        rows, more = split(list(session.scalars(q)), limit)
        return DeliveryPage(items=[DeliveryOut.of(r) for r in rows], next=str(rows[-1].id) if more and rows else None)


def _retry(svc: Services, delivery_id: int, actor: Actor) -> DeliveryOut:
    now = datetime.now(timezone.utc)
    with svc.sessions.begin() as session:
        row = session.get(Delivery, delivery_id, with_for_update=True)
        if row is None:
            raise HTTPException(status_code=404, detail=f"no delivery {delivery_id}")
        if row.state != "dead":
            detail = f"delivery {delivery_id} is {row.state}: only dead ones are retried"
            raise HTTPException(status_code=409, detail=detail)
        before = {"state": row.state, "attempts": row.attempts, "last_error": row.last_error}
        row.state, row.attempts, row.next_attempt_at, row.updated_at = "pending", 0, now, now
        record(session, actor, "delivery.retry", "delivery", row.id, before=before, after={"state": "pending"})
        return DeliveryOut.of(row)


@router.post("/alert-deliveries/{delivery_id}/retry", tags=["routing"], summary="Send a dead delivery again",
             dependencies=rule(Permission.ALERTS_HANDLE),
             responses={404: {"model": ErrorOut, "description": "No such delivery."},
                        409: {"model": ErrorOut, "description": "The delivery is not dead."}})  # fmt: skip
async def retry_delivery(
    delivery_id: Annotated[int, Path(ge=1, le=MAX_ROW_ID)], request: Request, svc: ServicesDep
) -> DeliveryOut:
    actor = principal(request).actor(client_address(request))
    out = await run_in_threadpool(_retry, svc, delivery_id, actor)
    request.app.state.dispatcher.wake()
    return out


# --- evidence --------------------------------------------------------------------------------------------


@router.get("/alerts/{alert_id}/snapshots", tags=["alerts"], summary="The pictures of an alert's event",
            dependencies=rule(Permission.ALERTS_READ), responses=NOT_FOUND)  # fmt: skip
def list_snapshots(alert_id: AlertId, svc: ServicesDep) -> list[dict[str, Any]]:
    with svc.sessions() as session:
        alert = session.get(Alert, alert_id)
        if alert is None:
            raise HTTPException(status_code=404, detail=f"no alert {alert_id}")
        return [evidence.snapshot_meta(s) for s in evidence.snapshots_of(session, alert)]


@router.get(
    "/alerts/{alert_id}/evidence",
    tags=["alerts"],
    summary="Evidence package: a zip of alert.json, the images and a SHA256SUMS manifest",
    dependencies=rule(Permission.ALERTS_HANDLE),
    response_class=Response,
    responses={**NOT_FOUND, 200: {"content": {"application/zip": {}}, "description": "The package."}},
)
def export_evidence(alert_id: AlertId, request: Request, svc: ServicesDep) -> Response:
    actor = principal(request).actor(client_address(request))
    with svc.sessions.begin() as session:
        alert = session.get(Alert, alert_id)
        if alert is None:
            raise HTTPException(status_code=404, detail=f"no alert {alert_id}")
        data, digest = evidence.package(session, alert, actor.name)
        # Exporting evidence is itself on the record: who took which package (by its hash), when.
        record(session, actor, "alert.evidence_export", "alert", alert.id, after={"sha256": digest, "bytes": len(data)})
    name = f"alert-{alert_id}-evidence.zip"
    headers = {"Content-Disposition": f'attachment; filename="{name}"', "X-Content-SHA256": digest}
    return Response(data, media_type="application/zip", headers=headers)
