"""Reading a device's health history across the tiers compaction leaves (health_compaction.py).

Raw samples exist for the recent window only, 5-minute buckets for the next weeks, hourly buckets
beyond. A request at a bucketed resolution is answered from every tier at or below it: a 5-minute
chart of the last three days reads the 5-minute buckets for the part already compacted and folds
the raw samples of the last two days into 5-minute buckets on the fly, so the chart has no hole
where the tiers meet. `auto` picks the resolution from the span asked for (a few hundred points a
chart can draw) and from the age of its start (never a tier that no longer holds it).

Pages are keyset positions: a raw page's cursor is the last sample's (sent_at, id), a bucketed
page's the start of the next bucket; the resolution travels in the cursor, so the pages of one
walk never change resolution while time moves on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from . import health_rollup
from .health_rollup import FIVE_MINUTES, ONE_HOUR, Policy
from .models import HealthRollup, HealthSample

Resolution = Literal["raw", "5m", "1h"]
BUCKET_S: dict[str, int] = {"5m": FIVE_MINUTES, "1h": ONE_HOUR}
# auto: the finest resolution that keeps a page-walk of the span to a chart's worth of points
RAW_SPAN = timedelta(hours=12)
FIVE_MINUTE_SPAN = timedelta(days=7)


class HistoryError(ValueError):
    """A request the history cannot answer as asked; the message says what to send instead."""


@dataclass(frozen=True)
class Point:
    at: datetime
    resolution: Resolution
    samples: int
    stats: health_rollup.Stats


def choose(since: datetime, until: datetime, now: datetime, policy: Policy) -> Resolution:
    """`auto`: by the span, then coarser if the finer tier no longer holds `since`."""
    span = until - since
    wanted: Resolution = "raw" if span <= RAW_SPAN else "5m" if span <= FIVE_MINUTE_SPAN else "1h"
    held: Resolution = (
        "raw" if since >= policy.raw_cutoff(now) else "5m" if since >= policy.five_minute_cutoff(now) else "1h"
    )
    order: tuple[Resolution, ...] = ("raw", "5m", "1h")
    return order[max(order.index(wanted), order.index(held))]


def parse_cursor(cursor: str) -> tuple[Resolution, datetime, int]:
    """`raw:<epoch µs>.<id>` or `5m|1h:<epoch s>`, as handed out in `next`."""
    kind, _, position = cursor.partition(":")
    try:
        if kind == "raw":
            micros, _, row_id = position.partition(".")
            at = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=int(micros))
            return "raw", at, int(row_id)
        if kind in BUCKET_S:
            return kind, datetime.fromtimestamp(int(position), timezone.utc), 0  # type: ignore[return-value]
    except (ValueError, OverflowError):
        pass
    raise HistoryError(f"cursor {cursor[:40]!r} is not one this list handed out")


def _raw_cursor(at: datetime, row_id: int) -> str:
    delta = at - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return f"raw:{(delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds}.{row_id}"


def _raw_page(
    session: Session, device_id: str, since: datetime, until: datetime, after: tuple[datetime, int] | None, limit: int
) -> tuple[list[Point], str | None]:
    query = select(HealthSample.id, HealthSample.sent_at, HealthSample.body).where(
        HealthSample.device_id == device_id, HealthSample.sent_at >= since, HealthSample.sent_at < until
    )
    if after is not None:
        at, row_id = after
        query = query.where(or_(HealthSample.sent_at > at, (HealthSample.sent_at == at) & (HealthSample.id > row_id)))
    rows = session.execute(query.order_by(HealthSample.sent_at, HealthSample.id).limit(limit + 1)).all()
    points = []
    for _id, sent_at, body in rows[:limit]:
        samples, stats = health_rollup.stats_of([health_rollup.metrics_of(body)])
        points.append(Point(sent_at, "raw", samples, stats))
    more = len(rows) > limit
    return points, _raw_cursor(rows[limit - 1][1], rows[limit - 1][0]) if more else None


def _first_at(session: Session, device_id: str, bucket_s: int, start: datetime, until: datetime) -> datetime | None:
    """The earliest data at or after `start` in any tier at or below `bucket_s` (a bucket counts
    from its start, so one that began before `start` but ends after it is found too)."""
    firsts = [
        session.scalar(
            select(func.min(HealthSample.sent_at)).where(
                HealthSample.device_id == device_id, HealthSample.sent_at >= start, HealthSample.sent_at < until
            )
        )
    ]
    for tier in (FIVE_MINUTES, ONE_HOUR):
        if tier <= bucket_s:
            firsts.append(
                session.scalar(
                    select(func.min(HealthRollup.bucket_start)).where(
                        HealthRollup.device_id == device_id,
                        HealthRollup.bucket_s == tier,
                        HealthRollup.bucket_start >= health_rollup.bucket_start(start, tier),
                        HealthRollup.bucket_start < until,
                    )
                )
            )
    found = [f if f.tzinfo else f.replace(tzinfo=timezone.utc) for f in firsts if f is not None]
    return max(start, min(found)) if found else None


def _bucket_page(
    session: Session, device_id: str, resolution: Resolution, since: datetime, until: datetime,
    start: datetime | None, limit: int,
) -> tuple[list[Point], str | None]:  # fmt: skip
    bucket_s = BUCKET_S[resolution]
    begin = start or health_rollup.bucket_start(since, bucket_s)
    first = _first_at(session, device_id, bucket_s, max(begin, since), until)
    if first is None:
        return [], None
    window_start = health_rollup.bucket_start(first, bucket_s)
    window_end = min(until, window_start + timedelta(seconds=bucket_s * limit))
    low = max(since, window_start)
    buckets: dict[datetime, tuple[int, health_rollup.Stats]] = {}

    def add(at: datetime, samples: int, stats: Mapping[str, Mapping[str, float]]) -> None:
        key = health_rollup.bucket_start(at, bucket_s)
        have_samples, have_stats = buckets.get(key, (0, {}))
        buckets[key] = (have_samples + samples, health_rollup.merge(have_stats, stats))

    for sent_at, body in session.execute(
        select(HealthSample.sent_at, HealthSample.body).where(
            HealthSample.device_id == device_id, HealthSample.sent_at >= low, HealthSample.sent_at < window_end
        )
    ):
        add(sent_at, *health_rollup.stats_of([health_rollup.metrics_of(body)]))
    for row in session.scalars(
        select(HealthRollup).where(
            HealthRollup.device_id == device_id,
            HealthRollup.bucket_s <= bucket_s,
            HealthRollup.bucket_start >= health_rollup.bucket_start(low, bucket_s),
            HealthRollup.bucket_start < window_end,
        )
    ):
        if row.bucket_start + timedelta(seconds=row.bucket_s) <= low:
            continue  # an hourly bucket that ended before the window
        add(row.bucket_start, row.samples, row.stats)
    points = [Point(at, resolution, samples, stats) for at, (samples, stats) in sorted(buckets.items())]
    more = window_end < until and _first_at(session, device_id, bucket_s, window_end, until) is not None
    return points, f"{resolution}:{int(window_end.timestamp())}" if more else None


def history(
    session: Session,
    device_id: str,
    *,
    since: datetime,
    until: datetime,
    resolution: Resolution | Literal["auto"],
    policy: Policy,
    limit: int,
    cursor: str | None = None,
    now: datetime | None = None,
) -> tuple[Resolution, list[Point], str | None]:
    """One page of a device's health in [since, until), oldest first, and the resolution served."""
    if until <= since:
        raise HistoryError("until must be after since")
    position: tuple[Resolution, datetime, int] | None = parse_cursor(cursor) if cursor else None
    if position is not None:
        if resolution not in ("auto", position[0]):
            raise HistoryError(
                f"this cursor belongs to a {position[0]} walk: ask with resolution={position[0]} or auto"
            )
        chosen: Resolution = position[0]
    else:
        chosen = resolution if resolution != "auto" else choose(since, until, now or datetime.now(timezone.utc), policy)
    if chosen == "raw":
        after = (position[1], position[2]) if position else None
        points, next_cursor = _raw_page(session, device_id, since, until, after, limit)
    else:
        points, next_cursor = _bucket_page(
            session, device_id, chosen, since, until, position[1] if position else None, limit
        )
    return chosen, points, next_cursor
