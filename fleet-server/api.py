"""REST API: devices, stored events, ingest counters, liveness.

Endpoints that touch the database are plain `def`s, which FastAPI runs in its worker threads, so a
query never blocks the event loop that carries the MQTT session and the live streams. Errors are
always JSON (`{"detail": "..."}`) and declared in the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from polewatch.protocol.topics import DEVICE_ID_PATTERN

from . import queries
from .auth import Requires
from .pagination import NO_NUL, IdCursor, Limit, int_cursor
from .roles import Permission
from .schemas import CameraHealthPage, DeviceOut, DevicePage, ErrorOut, EventPage, HealthzOut, IngestStatsOut
from .services import ServicesDep

# Declared once for every route, so the OpenAPI document names the one error shape clients get.
ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorOut, "description": "The body is not JSON."},
    422: {"model": ErrorOut, "description": "Invalid parameters or body: `detail` says which and why."},
}

DENIED: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorOut, "description": "Not signed in and no API token."},
    403: {"model": ErrorOut, "description": "Signed in, but this role may not do this."},
}


def rule(permission: Permission | None) -> list[Any]:
    """The one access rule of a route (see auth.py), as its `dependencies`."""
    return [Depends(Requires(permission))]


router = APIRouter(prefix="/api", responses={**ERRORS, **DENIED})
health_router = APIRouter()


@router.get(
    "/devices", tags=["devices"], summary="Every device heard from, by id, paginated",
    dependencies=rule(Permission.FLEET_READ),
)  # fmt: skip
def list_devices(
    svc: ServicesDep,
    limit: Limit = 50,
    cursor: Annotated[
        str | None, Query(pattern=DEVICE_ID_PATTERN, description="`next` of the previous page; none for the first.")
    ] = None,
    online: Annotated[bool | None, Query(description="Only devices online (true) or offline (false).")] = None,
) -> DevicePage:
    with svc.sessions() as session:
        return queries.list_devices(session, limit=limit, after=cursor, online=online)


@router.get(
    "/devices/{device_id}",
    tags=["devices"],
    summary="One device",
    dependencies=rule(Permission.FLEET_READ),
    responses={404: {"model": ErrorOut, "description": "No message from this device was ever stored."}},
)
def get_device(device_id: Annotated[str, Path(pattern=DEVICE_ID_PATTERN)], svc: ServicesDep) -> DeviceOut:
    with svc.sessions() as session:
        device = queries.get_device(session, device_id)
    if device is None:
        raise HTTPException(status_code=404, detail=f"unknown device {device_id!r}")
    return device


@router.get(
    "/events", tags=["events"], summary="Stored detections, newest first, paginated",
    dependencies=rule(Permission.FLEET_READ),
)  # fmt: skip
def list_events(
    svc: ServicesDep,
    device_id: Annotated[str | None, Query(pattern=DEVICE_ID_PATTERN, description="Only this device's events.")] = None,
    label: Annotated[
        str | None, Query(max_length=64, pattern=NO_NUL, description="Only this label, e.g. 'person'.")
    ] = None,
    limit: Limit = 50,
    cursor: IdCursor = None,
) -> EventPage:
    before = int_cursor(cursor)
    with svc.sessions() as session:
        return queries.list_events(session, device_id=device_id, label=label, limit=limit, before=before)


@router.get(
    "/camera-health",
    tags=["camera health"],
    summary="Camera-health starts and ends (covered, frozen, blurred, shifted, low_fps), newest first",
    dependencies=rule(Permission.FLEET_READ),
)
def list_camera_health(
    svc: ServicesDep,
    device_id: Annotated[
        str | None, Query(pattern=DEVICE_ID_PATTERN, description="Only this device's cameras.")
    ] = None,
    camera_id: Annotated[str | None, Query(max_length=64, pattern=NO_NUL, description="Only this camera id.")] = None,
    condition: Annotated[
        Literal["covered", "frozen", "blurred", "shifted", "low_fps"] | None, Query(description="Only this condition.")
    ] = None,
    open_only: Annotated[
        bool, Query(alias="open", description="Only conditions still open: starts without their end.")
    ] = False,
    limit: Limit = 50,
    cursor: IdCursor = None,
) -> CameraHealthPage:
    before = int_cursor(cursor)
    with svc.sessions() as session:
        return queries.list_camera_health(
            session, device_id=device_id, camera_id=camera_id, condition=condition, open_only=open_only, limit=limit,
            before=before,
        )


@router.get(
    "/ingest/stats", tags=["ingest"], summary="MQTT ingest counters since this process started",
    dependencies=rule(Permission.INGEST_READ),
)  # fmt: skip
async def ingest_stats(svc: ServicesDep) -> IngestStatsOut:
    return svc.ingest.stats.snapshot()


@health_router.get(
    "/healthz",
    response_model=HealthzOut,
    tags=["ops"],
    summary="Liveness: the process serves HTTP and the database answers",
    dependencies=rule(None),
    responses={503: {"model": HealthzOut, "description": "The database does not answer."}},
)
def healthz(svc: ServicesDep) -> HealthzOut | JSONResponse:
    connected = svc.ingest.stats.connected
    try:
        with svc.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        body = HealthzOut(status="error", database=f"error: {type(exc).__name__}", mqtt_connected=connected)
        return JSONResponse(status_code=503, content=body.model_dump())
    # MQTT is reported, not judged: a broker outage is the broker's alarm, and restarting this
    # server over it would only drop the live streams of every open console.
    return HealthzOut(status="ok", database="ok", mqtt_connected=connected)
