"""Health history downsampling: raw samples for a recent window, then 5-minute, then hourly buckets.

A hundred poles reporting every 10 s make 26 million health rows a month; kept raw, that is most of
the database. Compaction folds samples older than `raw_hours` into 5-minute buckets and 5-minute
buckets older than `five_minute_days` into hourly ones, deleting what it folded, in the same
transaction, so a sample is counted in exactly one place at every moment.

Safe with several replicas: every pass starts by updating its `maintenance_leases` row, which
holds any other replica's pass (the row lock on PostgreSQL, the write lock on SQLite) until this
one commits; the other then reads what is left, which is nothing it could count twice. Buckets are
merged (counts and sums add, see health_rollup.py), so a sample that arrives late for a bucket
already written is added to it rather than replacing it. Passes are bounded (`CHUNK` rows), so a
first run over months of raw samples never holds a lock or a transaction for long.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from . import health_rollup
from .health_rollup import FIVE_MINUTES, ONE_HOUR, Policy
from .models import HealthRollup, HealthSample, MaintenanceLease

log = logging.getLogger(__name__)

JOB = "health-compaction"
CHUNK = 20_000  # rows folded per transaction
DELETE_BATCH = 500  # ids per DELETE ... IN (...): well under every engine's parameter limit


@dataclass
class Report:
    """What one compaction did."""

    raw_folded: int = 0
    five_minute_folded: int = 0
    five_minute_written: int = 0
    hourly_written: int = 0
    passes: int = 0

    def add(self, other: Report) -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)


def _take_lease(session: Session, holder: str, now: datetime) -> None:
    """The cross-replica guard: the first statement of every pass writes the job's lease row."""
    values = {"job": JOB, "holder": holder[:120], "last_run_at": now}
    dialect = session.get_bind().dialect.name
    table = MaintenanceLease.__table__
    assert isinstance(table, Table)
    if dialect == "postgresql":
        session.execute(postgresql.insert(table).values(values).on_conflict_do_nothing(index_elements=["job"]))
    else:
        session.execute(sqlite.insert(table).values(values).on_conflict_do_nothing(index_elements=["job"]))
    session.execute(
        update(MaintenanceLease).where(MaintenanceLease.job == JOB).values(holder=holder[:120], last_run_at=now)
    )


def _fold(session: Session, bucket_s: int, parts: dict[tuple[str, datetime], tuple[int, health_rollup.Stats]]) -> int:
    """Merge partial buckets into `health_rollups` (the upsert by device and bucket); returns how many."""
    if not parts:
        return 0
    devices = sorted({device for device, _ in parts})
    starts = [start for _, start in parts]
    existing = {
        (device, start): (row_id, samples, stats)
        for row_id, device, start, samples, stats in session.execute(
            select(HealthRollup.id, HealthRollup.device_id, HealthRollup.bucket_start, HealthRollup.samples,
                   HealthRollup.stats).where(
                HealthRollup.bucket_s == bucket_s,
                HealthRollup.device_id.in_(devices),
                HealthRollup.bucket_start >= min(starts),
                HealthRollup.bucket_start <= max(starts),
            )
        )
    }  # fmt: skip
    new: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    for (device, start), (samples, stats) in sorted(parts.items()):
        have = existing.get((device, start))
        if have is None:
            new.append({"device_id": device, "bucket_s": bucket_s, "bucket_start": start, "samples": samples,
                        "stats": stats})  # fmt: skip
        else:
            row_id, had_samples, had_stats = have
            changed.append({"id": row_id, "samples": had_samples + samples,
                            "stats": health_rollup.merge(had_stats, stats)})  # fmt: skip
    if new:
        session.execute(insert(HealthRollup), new)
    if changed:
        session.execute(update(HealthRollup), changed)  # bulk UPDATE by primary key
    return len(parts)


def _delete_ids(session: Session, model: Any, ids: Sequence[int]) -> None:
    for i in range(0, len(ids), DELETE_BATCH):
        session.execute(delete(model).where(model.id.in_(ids[i : i + DELETE_BATCH])))


def _raw_pass(session: Session, cutoff: datetime, chunk: int) -> Report:
    rows = session.execute(
        select(HealthSample.id, HealthSample.device_id, HealthSample.sent_at, HealthSample.body)
        .where(HealthSample.sent_at < cutoff)
        .order_by(HealthSample.id)
        .limit(chunk)
    ).all()
    grouped: dict[tuple[str, datetime], list[dict[str, float]]] = defaultdict(list)
    for _id, device, sent_at, body in rows:
        grouped[(device, health_rollup.bucket_start(sent_at, FIVE_MINUTES))].append(health_rollup.metrics_of(body))
    parts = {key: health_rollup.stats_of(values) for key, values in grouped.items()}
    written = _fold(session, FIVE_MINUTES, parts)
    _delete_ids(session, HealthSample, [r[0] for r in rows])
    return Report(raw_folded=len(rows), five_minute_written=written, passes=1)


def _five_minute_pass(session: Session, cutoff: datetime, chunk: int) -> Report:
    rows = session.execute(
        select(HealthRollup.id, HealthRollup.device_id, HealthRollup.bucket_start, HealthRollup.samples,
               HealthRollup.stats)
        .where(HealthRollup.bucket_s == FIVE_MINUTES, HealthRollup.bucket_start < cutoff)
        .order_by(HealthRollup.id)
        .limit(chunk)
    ).all()  # fmt: skip
    parts: dict[tuple[str, datetime], tuple[int, health_rollup.Stats]] = {}
    for _id, device, start, samples, stats in rows:
        key = (device, health_rollup.bucket_start(start, ONE_HOUR))
        had_samples, had_stats = parts.get(key, (0, {}))
        parts[key] = (had_samples + samples, health_rollup.merge(had_stats, stats))
    ids = [row[0] for row in rows]
    written = _fold(session, ONE_HOUR, parts)
    _delete_ids(session, HealthRollup, ids)
    return Report(five_minute_folded=len(rows), hourly_written=written, passes=1)


def compact(
    sessions: sessionmaker[Session],
    policy: Policy,
    *,
    now: datetime | None = None,
    holder: str | None = None,
    chunk: int = CHUNK,
    progress: Callable[[Report], None] | None = None,
) -> Report:
    """Fold everything that has aged out of its tier; returns the totals. Idempotent: a second
    run right after finds nothing to fold and changes nothing."""
    now = now or datetime.now(timezone.utc)
    holder = holder or f"{socket.gethostname()}:{id(sessions):x}"
    total = Report()
    for step, cutoff in ((_raw_pass, policy.raw_cutoff(now)), (_five_minute_pass, policy.five_minute_cutoff(now))):
        while True:
            with sessions.begin() as session:
                _take_lease(session, holder, datetime.now(timezone.utc))
                done = step(session, cutoff, chunk)
            total.add(done)
            if progress is not None:
                progress(total)
            if done.raw_folded + done.five_minute_folded < chunk:
                break
    with sessions.begin() as session:
        _take_lease(session, holder, datetime.now(timezone.utc))
        session.execute(update(MaintenanceLease).where(MaintenanceLease.job == JOB).values(last_result=asdict(total)))
    log.info("health history compacted", extra=asdict(total))
    return total


class Compactor:
    """The server's periodic compaction (every `interval_s`), run in a worker thread."""

    def __init__(self, sessions: sessionmaker[Session], policy: Policy, interval_s: float, holder: str) -> None:
        self._sessions = sessions
        self._policy = policy
        self._interval_s = interval_s
        self._holder = holder

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(compact, self._sessions, self._policy, holder=self._holder)
            except Exception:  # a failed pass is retried on the next tick; the server keeps serving
                log.exception("health history compaction failed; retrying at the next interval")
            await asyncio.sleep(self._interval_s)
