"""GET /api/devices/{id}/health/history: a device's health over time, from whichever tier holds it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field

from polewatch.protocol.topics import DEVICE_ID_PATTERN

from . import health_history, scope
from .api import DENIED, ERRORS, rule
from .health_rollup import Stat
from .models import Device
from .pagination import Limit
from .roles import Permission
from .schemas import ErrorOut
from .services import ServicesDep

router = APIRouter(prefix="/api", responses={**ERRORS, **DENIED})
DEFAULT_SPAN = timedelta(hours=24)


class StatOut(BaseModel):
    min: float
    max: float
    avg: float

    @classmethod
    def of(cls, stat: Stat | None) -> StatOut | None:
        if stat is None or stat["n"] <= 0:
            return None
        return cls(min=stat["min"], max=stat["max"], avg=stat["sum"] / stat["n"])


class HealthPointOut(BaseModel):
    """One raw sample (min = max = avg) or one bucket of samples; null: no sample carried it."""

    at: datetime = Field(description="The sample's sent_at, or the bucket's start (UTC).")
    resolution: Literal["raw", "5m", "1h"]
    samples: int = Field(description="Health messages summarised here.")
    cpu_percent: StatOut | None
    memory_percent: StatOut | None
    disk_percent: StatOut | None
    temperature_c: StatOut | None
    detect_fps: StatOut | None
    inference_ms: StatOut | None
    camera_fps: StatOut | None = Field(description="Mean frame rate of the cameras delivering frames.")
    cameras_up: StatOut | None
    cameras_down: StatOut | None

    @classmethod
    def of(cls, point: health_history.Point) -> HealthPointOut:
        s = point.stats
        return cls(
            at=point.at, resolution=point.resolution, samples=point.samples,
            cpu_percent=StatOut.of(s.get("cpu_percent")), memory_percent=StatOut.of(s.get("memory_percent")),
            disk_percent=StatOut.of(s.get("disk_percent")), temperature_c=StatOut.of(s.get("temperature_c")),
            detect_fps=StatOut.of(s.get("detect_fps")), inference_ms=StatOut.of(s.get("inference_ms")),
            camera_fps=StatOut.of(s.get("camera_fps")), cameras_up=StatOut.of(s.get("cameras_up")),
            cameras_down=StatOut.of(s.get("cameras_down")),
        )  # fmt: skip


class HealthHistoryPage(BaseModel):
    resolution: Literal["raw", "5m", "1h"] = Field(description="What `auto` chose, or what was asked.")
    items: list[HealthPointOut]
    next: str | None = Field(description="Pass as `cursor` for the next page; null when this is the last page.")


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise HTTPException(status_code=422, detail=f"{name} needs a time zone, e.g. 2026-11-30T08:00:00Z")
    return value


@router.get(
    "/devices/{device_id}/health/history",
    tags=["devices"],
    summary="A device's health over time: raw samples, or 5-minute / hourly min, max and average",
    dependencies=rule(Permission.FLEET_READ),
    responses={404: {"model": ErrorOut, "description": "No message from this device was ever stored."}},
)
def health_history_route(
    device_id: Annotated[str, Path(pattern=DEVICE_ID_PATTERN)],
    request: Request,
    svc: ServicesDep,
    since: Annotated[
        datetime | None, Query(description="From (inclusive, with a time zone); default: until - 24 h.")
    ] = None,
    until: Annotated[datetime | None, Query(description="To (exclusive, with a time zone); default: now.")] = None,
    resolution: Annotated[
        Literal["auto", "raw", "5m", "1h"],
        Query(
            description="auto: by the span asked for and the tiers that still hold it; raw exists for the "
            "recent window only."
        ),
    ] = "auto",
    limit: Limit = 50,
    cursor: Annotated[
        str | None, Query(max_length=60, pattern=r"^(raw|5m|1h):[0-9.]+$", description="`next` of the previous page.")
    ] = None,
) -> HealthHistoryPage:
    now = datetime.now(timezone.utc)
    end = _aware(until, "until") or now
    start = _aware(since, "since") or end - DEFAULT_SPAN
    sites = scope.sites_of(request)
    with svc.sessions() as session:
        if session.get(Device, device_id) is None:
            raise HTTPException(status_code=404, detail=f"unknown device {device_id!r}")
        scope.check_device(session, sites, device_id)
        try:
            chosen, points, next_cursor = health_history.history(
                session, device_id, since=start, until=end, resolution=resolution,
                policy=svc.settings.health_policy(), limit=limit, cursor=cursor, now=now,
            )  # fmt: skip
        except health_history.HistoryError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
    return HealthHistoryPage(resolution=chosen, items=[HealthPointOut.of(p) for p in points], next=next_cursor)
