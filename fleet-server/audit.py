"""The audit log: every change made by a person, a token or the command line, appended in the same
transaction as the change itself (so there is never a change without its entry, nor an entry for a
change that rolled back). Rows are only ever inserted; the database refuses UPDATE and DELETE."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import AuditEntry
from .pagination import DEFAULT_LIMIT, split


@dataclass(frozen=True)
class Actor:
    """Who made a change, as the log names them: user:<name>, token:<name> or cli:<os user>."""

    name: str
    role: str | None = None
    client: str | None = None


def record(
    session: Session,
    actor: Actor,
    action: str,
    target_type: str,
    target_id: str | int | None,
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> AuditEntry:
    entry = AuditEntry(
        at=datetime.now(timezone.utc),
        actor=actor.name[:120],
        actor_role=actor.role,
        action=action,
        target_type=target_type,
        target_id=None if target_id is None else str(target_id)[:120],
        before=before,
        after=after,
        client=actor.client[:64] if actor.client else None,
    )
    session.add(entry)
    session.flush()
    return entry


def query(
    session: Session,
    *,
    actor: str | None = None,
    action: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = DEFAULT_LIMIT,
    before: int | None = None,
) -> tuple[list[AuditEntry], bool]:
    """Newest first, keyset-paginated by id; returns the rows and whether there are more."""
    q = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit + 1)
    if actor is not None:
        q = q.where(AuditEntry.actor == actor)
    if action is not None:
        q = q.where(AuditEntry.action == action)
    if target_type is not None:
        q = q.where(AuditEntry.target_type == target_type)
    if target_id is not None:
        q = q.where(AuditEntry.target_id == target_id)
    if since is not None:
        q = q.where(AuditEntry.at >= since)
    if until is not None:
        q = q.where(AuditEntry.at < until)
    if before is not None:
        q = q.where(AuditEntry.id < before)
    return split(list(session.scalars(q)), limit)
