"""Alerts: events from the edge become alerts, and operators move them through their lifecycle.

    new -> acknowledged -> assigned (to an agency) -> resolved | false_alarm

Which edge events are alerts: the start of a detection (a new tracked object), the start of a rule
event (zone entered, loitering began, line crossed, object left behind), and the start of a
camera-health condition. Ends and updates belong to an alert already raised, so they raise none.

Every change is an `AlertStep` row (who, when, the status after it). The steps' ids are the live
stream's cursor, so a step must never commit after a step with a higher id: on PostgreSQL each
writer takes one transaction-scoped advisory lock before adding a step, which serialises step
writers until their commit (SQLite has one writer at a time anyway), and NOTIFYs the step id so the
live streams of every replica wake up at once (alert_wakeups.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Table, Text, bindparam, cast, insert, literal, literal_column, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from polewatch.protocol import CameraHealthMessage, DetectionMessage, RuleEventMessage, V1Message

from . import audit, routing
from .models import Agency, Alert, AlertStep, Delivery, UtcDateTime

STEP_LOCK = 0x504F4C45  # "POLE": the advisory lock that keeps step ids in commit order (PostgreSQL)
STEP_CHANNEL = "polewatch_alert_steps"  # NOTIFY'd with each step id; delivered at commit (alert_wakeups.py)
OPEN = ("new", "acknowledged", "assigned")
RULE_STARTS = ("enter", "loiter_start", "cross", "left_behind_start")

# step -> (statuses it may follow, status after it)
TRANSITIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "acknowledge": (("new",), "acknowledged"),
    "assign": (OPEN, "assigned"),
    "resolve": (("acknowledged", "assigned"), "resolved"),
    "false_alarm": (OPEN, "false_alarm"),
}


class AlertError(Exception):
    """A lifecycle request that cannot be done; `status` is its HTTP status."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Change:
    """One step just written, for the live stream: the step and the alert as it now is."""

    alert: Alert
    step: AlertStep


def _lock_steps(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": STEP_LOCK})


def _step(session: Session, alert: Alert, step: str, actor: str, *, agency_id: int | None = None,
          note: str | None = None) -> AlertStep:  # fmt: skip
    _lock_steps(session)
    row = AlertStep(
        alert_id=alert.id, step=step, status=alert.status, actor=actor[:120], agency_id=agency_id,
        note=note[:500] if note else None, at=datetime.now(timezone.utc),
    )  # fmt: skip
    session.add(row)
    session.flush()
    if session.get_bind().dialect.name == "postgresql":  # other replicas' streams wake at our commit
        session.execute(text("SELECT pg_notify(:channel, :id)"), {"channel": STEP_CHANNEL, "id": str(row.id)})
    return row


def _fields(message: V1Message) -> dict[str, object] | None:
    """The alert's columns for an edge message, or None when the message raises no alert."""
    if isinstance(message, DetectionMessage):
        b = message.body
        if b.phase != "start":
            return None
        return {"source": "detection", "event_type": f"detection:{b.label}", "camera_id": b.camera_id,
                "event_id": b.event_id, "rule_id": None, "label": b.label, "occurred_at": b.frame_time}  # fmt: skip
    if isinstance(message, RuleEventMessage):
        r = message.body
        if r.event not in RULE_STARTS:
            return None
        return {"source": "rule_event", "event_type": f"{r.rule_type}:{r.event}", "camera_id": r.camera_id,
                "event_id": r.event_id, "rule_id": r.rule_id, "label": r.label,
                "occurred_at": r.frame_time}  # fmt: skip
    if isinstance(message, CameraHealthMessage):
        c = message.body
        if c.phase != "start":
            return None
        return {"source": "camera_health", "event_type": f"camera:{c.condition}", "camera_id": c.camera_id,
                "event_id": None, "rule_id": None, "label": None, "occurred_at": c.since}  # fmt: skip
    return None


def _json_text(session: Session, name: str) -> ColumnElement[Any]:
    """A bound parameter `name` for a JSON column that takes text already serialised."""
    param = bindparam(name, type_=Text())
    return cast(param, JSONB) if session.get_bind().dialect.name == "postgresql" else param


@dataclass(frozen=True)
class _Candidate:
    """What routing looks at, before the alert has a row."""

    event_type: str
    rule_id: str | None
    device_id: str
    occurred_at: datetime


def raise_many(
    session: Session, messages: Sequence[tuple[V1Message, datetime]], tz: ZoneInfo
) -> list[bool]:
    """The alerts a batch of edge messages raise, routed, each with its `created` step; returns, in
    order, whether each message raised one (the alert stream then reads them from the database,
    alerts_stream.py).

    Called by the store in the transaction that stored the messages, after their dedup, so a
    redelivered message raises nothing twice (and the alert's UNIQUE message_id says so too).
    The routing rules are read once for the batch; the alerts go in with one executemany and their
    steps with one INSERT ... SELECT (Core, not ORM objects: on SQLite the ORM inserts row by row
    to keep RETURNING in order, and per alert that was most of the ingest's time).
    """
    now = datetime.now(timezone.utc)
    rows: list[dict[str, Any] | None] = []
    for message, received_at in messages:
        fields = _fields(message)
        rows.append(
            None
            if fields is None
            else {
                "message_id": message.id, "device_id": message.device_id, "received_at": received_at,
                "detail_json": message.body.model_dump_json(), "status": "new", "updated_at": received_at,
                "agency_id": None, **fields,
            }
        )  # fmt: skip
    raised = [row for row in rows if row is not None]
    if not raised:
        return [False] * len(rows)
    rules = routing.load(session)
    for new in raised:
        candidate = _Candidate(new["event_type"], new["rule_id"], new["device_id"], new["occurred_at"])
        new["routed_agency_id"] = routing.choose_from(rules, candidate, tz)
    alert_table: Table = Alert.__table__  # type: ignore[assignment]
    step_table: Table = AlertStep.__table__  # type: ignore[assignment]
    # No RETURNING: one executemany. The body goes in as the JSON pydantic writes, not as a dict
    # for the JSON type to serialise again (that was a tenth of the store's time per detection).
    session.execute(insert(alert_table).values(detail=_json_text(session, "detail_json")), raised)
    _lock_steps(session)
    # Each new alert's `created` step, made from its row by the database: no ids travel back to
    # Python and no step row is bound value by value. In alert id order, so step ids follow alert ids.
    a = alert_table.c
    session.execute(
        insert(step_table).from_select(
            ["alert_id", "step", "status", "actor", "agency_id", "at"],
            select(a.id, literal_column("'created'"), a.status, literal_column("'edge:'") + a.device_id,
                   a.routed_agency_id, literal(now, UtcDateTime()))
            .where(a.message_id.in_([row["message_id"] for row in raised]))
            .order_by(a.id),
        )
    )  # fmt: skip
    if session.get_bind().dialect.name == "postgresql":
        # Other replicas' alert streams wake at our commit (alert_wakeups.py), as for any step (`_step`):
        # one NOTIFY for the batch, with its newest step id (ours: the step lock is held).
        session.execute(
            text("SELECT pg_notify(:channel, (SELECT max(id) FROM alert_steps)::text)"), {"channel": STEP_CHANNEL}
        )
    return [made is not None for made in rows]


def advance(
    session: Session, alert_id: int, step: str, actor: audit.Actor, *, agency_id: int | None = None,
    note: str | None = None, webhook_backoff_s: float = 0.0,
) -> Change:  # fmt: skip
    """Apply one lifecycle step, with its audit entry; assigning queues the delivery to the agency."""
    _lock_steps(session)  # before reading: two operators on one alert are served one after the other
    alert = session.get(Alert, alert_id, with_for_update=True)
    if alert is None:
        raise AlertError(404, f"no alert {alert_id}")
    allowed, after = TRANSITIONS[step]
    if alert.status not in allowed:
        raise AlertError(
            409, f"alert {alert_id} is {alert.status}: {step.replace('_', ' ')} needs it to be {' or '.join(allowed)}"
        )
    before = {"status": alert.status, "agency_id": alert.agency_id}
    now = datetime.now(timezone.utc)
    if step == "assign":
        chosen = agency_id if agency_id is not None else alert.routed_agency_id
        if chosen is None:
            raise AlertError(422, f"alert {alert_id} matched no routing rule: name the agency (agency_id)")
        agency = session.get(Agency, chosen)
        if agency is None:
            raise AlertError(422, f"no agency {chosen}")
        alert.agency_id = agency.id
        if agency.webhook_url:
            session.add(Delivery(
                alert_id=alert.id, agency_id=agency.id, state="pending", attempts=0, next_attempt_at=now,
                created_at=now, updated_at=now,
            ))  # fmt: skip
    alert.status = after
    alert.updated_at = now
    row = _step(session, alert, step, actor.name, agency_id=alert.agency_id if step == "assign" else None, note=note)
    audit.record(session, actor, f"alert.{step}", "alert", alert.id, before=before,
                 after={"status": alert.status, "agency_id": alert.agency_id, "note": note})  # fmt: skip
    return Change(alert, row)


def steps_after(session: Session, cursor: int, limit: int) -> list[Change]:
    """Steps with an id above `cursor`, oldest first, each with its alert as it is now."""
    rows = session.execute(
        select(AlertStep, Alert).join(Alert, Alert.id == AlertStep.alert_id)
        .where(AlertStep.id > cursor).order_by(AlertStep.id).limit(limit)
    ).all()  # fmt: skip
    return [Change(alert, step) for step, alert in rows]


def latest_step_id(session: Session) -> int:
    return int(session.scalar(select(AlertStep.id).order_by(AlertStep.id.desc()).limit(1)) or 0)
