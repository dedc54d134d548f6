"""Delivery accounting per device: what arrived, what the device gave up, what is still on its way.

Every message carries a per-device sequence number that is never reused. The ingest merges the
numbers it receives into runs (`received_seq_ranges`); the device reports, in `given_up` messages,
the numbers it will never send and why (`given_up_ranges`). A number in neither is still in flight:
waiting in the device's outbox or in the broker. So the server can say "pole 12 gave up 340
telemetry messages during a 3-day outage, no alerts" and tell that apart from "pole 12 has 40
messages still to send", without trusting any counter the device adds up itself.

Accounting starts at the lowest number the server has heard of (a received one or a given-up one),
so a device that ran before this database existed does not show its whole past as missing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from polewatch.protocol import OutboxStatus
from polewatch.protocol.topics import DEVICE_ID_PATTERN

from .api import DENIED, ERRORS, rule
from .models import Device, DeviceClock, GivenUpRange, GivenUpReport, ReceivedSeqRange
from .roles import Permission
from .schemas import ErrorOut
from .services import ServicesDep

# A device whose clock is further off than this (either way) gets its timestamps flagged. The
# measurement includes one broker hop, milliseconds on a working link; NTP keeps a box well inside.
CLOCK_FLAG_S = 5.0

router = APIRouter(prefix="/api", responses={**ERRORS, **DENIED})


class GapOut(BaseModel):
    first: int
    last: int
    status: Literal["in_flight", "given_up"] = Field(
        description="in_flight: not received and not given up, so still in the device's outbox or the broker."
    )
    priority: str | None = Field(default=None, description="given_up: the outbox class, when the device knew it.")
    reason: str | None = Field(
        default=None, description="given_up: evicted, expired, dropped, not_queued or outbox_replaced."
    )


class ClockOut(BaseModel):
    skew_s: float = Field(description="Server receive time minus the device's sent_at; positive: device behind.")
    measured_at: datetime
    flagged: bool = Field(description=f"|skew_s| above {CLOCK_FLAG_S} s: the device's timestamps are off.")


class DeliveryOut(BaseModel):
    device_id: str
    first_seq: int | None = Field(description="Where the accounting starts: the lowest number heard of.")
    highest_seq: int | None = Field(description="The highest number received or given up.")
    received: int = Field(description="Distinct sequence numbers received.")
    in_flight: int = Field(description="Numbers below highest_seq neither received nor given up.")
    given_up: int = Field(description="Numbers the device gave up and the server never received.")
    given_up_by_class: dict[str, dict[str, int]] = Field(
        description="given_up split by outbox class ('unknown' when not known) and reason."
    )
    gaps: list[GapOut] = Field(description="Missing runs, oldest first, up to `limit`.")
    gaps_truncated: bool
    reports: int = Field(description="given_up reports received from the device.")
    outbox: OutboxStatus | None = Field(description="The outbox part of the device's newest health report.")
    outbox_at: datetime | None = Field(description="sent_at of that health report.")
    clock: ClockOut | None = Field(description="The last clock skew measured on a live online presence.")


Run = tuple[int, int]
Given = tuple[int, int, str | None, str]


def missing_runs(received: list[Run], start: int, end: int) -> list[Run]:
    """The runs of start..end (inclusive) not covered by `received` (sorted, not overlapping)."""
    out: list[Run] = []
    at = start
    for first, last in received:
        if last < at:
            continue
        if first > end:
            break
        if first > at:
            out.append((at, first - 1))
        at = max(at, last + 1)
    if at <= end:
        out.append((at, end))
    return out


def split_gaps(missing: list[Run], given: list[Given]) -> list[GapOut]:
    """Each missing run cut into parts the device gave up (first report wins where ranges overlap)
    and parts still in flight."""
    ordered = sorted(given, key=lambda g: (g[0], g[1]))
    out: list[GapOut] = []
    i = 0
    for first, last in missing:
        at = first
        while i < len(ordered) and ordered[i][1] < at:
            i += 1
        j = i
        while at <= last:
            while j < len(ordered) and ordered[j][1] < at:
                j += 1
            if j >= len(ordered) or ordered[j][0] > last:
                out.append(GapOut(first=at, last=last, status="in_flight"))
                break
            g_first, g_last, priority, reason = ordered[j]
            if g_first > at:
                out.append(GapOut(first=at, last=g_first - 1, status="in_flight"))
                at = g_first
            stop = min(g_last, last)
            out.append(GapOut(first=at, last=stop, status="given_up", priority=priority, reason=reason))
            at = stop + 1
    return out


def delivery(session: Session, device_id: str, *, limit: int = 100) -> DeliveryOut | None:
    device = session.get(Device, device_id)
    if device is None:
        return None
    received: list[Run] = [
        (int(f), int(la))
        for f, la in session.execute(
            select(ReceivedSeqRange.first, ReceivedSeqRange.last)
            .where(ReceivedSeqRange.device_id == device_id)
            .order_by(ReceivedSeqRange.first)
        )
    ]
    given: list[Given] = [
        (int(f), int(la), p, r)
        for f, la, p, r in session.execute(
            select(GivenUpRange.first, GivenUpRange.last, GivenUpRange.priority, GivenUpRange.reason).where(
                GivenUpRange.device_id == device_id
            )
        )
    ]
    lows = [r[0] for r in received[:1]] + [g[0] for g in given]
    highs = [r[1] for r in received[-1:]] + [g[1] for g in given]
    start = min(lows) if lows else None
    end = max(highs) if highs else None
    gaps = [] if start is None or end is None else split_gaps(missing_runs(received, start, end), given)
    by_class: dict[str, dict[str, int]] = {}
    in_flight = given_up = 0
    for gap in gaps:
        size = gap.last - gap.first + 1
        if gap.status == "in_flight":
            in_flight += size
            continue
        given_up += size
        per_reason = by_class.setdefault(gap.priority or "unknown", {})
        per_reason[gap.reason or "unknown"] = per_reason.get(gap.reason or "unknown", 0) + size
    report_count = int(
        session.scalar(select(func.count()).select_from(GivenUpReport).where(GivenUpReport.device_id == device_id))
        or 0
    )
    outbox = None
    if device.last_health is not None and device.last_health.get("outbox") is not None:
        try:
            outbox = OutboxStatus.model_validate(device.last_health["outbox"])
        except ValidationError:
            outbox = None
    clock_row = session.get(DeviceClock, device_id)
    clock = None
    if clock_row is not None:
        clock = ClockOut(
            skew_s=round(clock_row.skew_s, 3),
            measured_at=clock_row.measured_at,
            flagged=abs(clock_row.skew_s) > CLOCK_FLAG_S,
        )
    return DeliveryOut(
        device_id=device_id,
        first_seq=start,
        highest_seq=end,
        received=sum(last - first + 1 for first, last in received),
        in_flight=in_flight,
        given_up=given_up,
        given_up_by_class=by_class,
        gaps=gaps[:limit],
        gaps_truncated=len(gaps) > limit,
        reports=report_count,
        outbox=outbox,
        outbox_at=device.last_health_at if outbox is not None else None,
        clock=clock,
    )


@router.get(
    "/devices/{device_id}/delivery",
    tags=["devices"],
    summary="Delivery accounting: sequence numbers received, given up by the device (why), still in flight",
    dependencies=rule(Permission.FLEET_READ),
    responses={404: {"model": ErrorOut, "description": "No message from this device was ever stored."}},
)
def get_delivery(
    device_id: Annotated[str, Path(pattern=DEVICE_ID_PATTERN)],
    svc: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=5000, description="Most gaps to list (the totals count all).")] = 100,
) -> DeliveryOut:
    with svc.sessions() as session:
        out = delivery(session, device_id, limit=limit)
    if out is None:
        raise HTTPException(status_code=404, detail=f"unknown device {device_id!r}")
    return out
