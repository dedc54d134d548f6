"""The ingest's write path: messages in, rows out, idempotent by message id.

MQTT QoS 1 is at-least-once: a message can arrive twice (a redelivery after a reconnect, a retained
presence replayed on every subscribe, an agent resending after a lost PUBACK). Every message table
has a UNIQUE message_id and rows are inserted with `INSERT ... ON CONFLICT DO NOTHING RETURNING id`,
so the second copy inserts nothing and is reported as a duplicate — on SQLite and PostgreSQL alike,
and safe with several replicas writing at once. Side effects on `devices` happen only when the
insert did happen.

Runs in one worker thread (see ingest.py): SQLite has one writer anyway, and serialising writes
here keeps the event loop free and the row ids in commit order, which the live stream relies on.

Delivery accounting rides along in the same transaction: each new message's sequence number is
merged into the device's received runs (in any order of arrival), `given_up` reports add the
ranges the device will never send, and a live online presence measures the device's clock skew.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Table, delete, insert, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from polewatch.protocol import (
    CameraHealthMessage,
    CommandAckMessage,
    ConfigReportMessage,
    DetectionMessage,
    GivenUpMessage,
    HealthMessage,
    PresenceMessage,
    RuleEventMessage,
    SnapshotMessage,
    V1Message,
)

from . import alerts, config_store
from .models import (
    Alert,
    AlertSnapshot,
    CameraHealthEvent,
    Device,
    DeviceClock,
    Event,
    GivenUpRange,
    GivenUpReport,
    HealthSample,
    PresenceChange,
    ReceivedSeqRange,
)
from .schemas import DeviceOut, EventOut

log = logging.getLogger(__name__)


class TransientStoreError(Exception):
    """The database is unreachable or locked: retry later, do not drop the message."""


@dataclass(frozen=True)
class Received:
    """A decoded message and the server time it arrived.

    `seq_only`: a kind this server does not store (rule_event, for now): only its sequence number is
    noted as received, so it does not show as a gap.
    """

    message: V1Message
    received_at: datetime
    seq_only: bool = False


@dataclass(frozen=True)
class Outcome:
    """What storing one message did, for counters and the live stream."""

    duplicate: bool = False
    error: str | None = None
    event_row: int | None = None  # a detection's new row in `events`: see `event_out`
    device: DeviceOut | None = None
    raised_alert: bool = False  # for the alert stream


def _clip(value: str | None, length: int) -> str | None:
    return value[:length] if value is not None else None


class Store:
    """Applies decoded messages to the database."""

    def __init__(self, sessions: sessionmaker[Session], alert_timezone: str = "Asia/Makassar") -> None:
        self._sessions = sessions
        self._tz = ZoneInfo(alert_timezone)

    def apply_batch(self, batch: Sequence[Received]) -> list[Outcome]:
        """Store a batch in one transaction; if that fails, fall back to one transaction per
        message so that one bad message cannot take its neighbours down with it.

        Raises TransientStoreError when the database itself is unavailable, so the caller keeps
        the messages unacknowledged and retries.
        """
        try:
            with self._sessions.begin() as session:
                return self._apply_all(session, batch)
        except OperationalError as exc:
            raise TransientStoreError(str(exc.orig) if exc.orig else str(exc)) from exc
        except SQLAlchemyError:
            pass  # a problem with one of the messages: find it by storing them one by one
        return [self._apply_alone(item) for item in batch]

    def _apply_alone(self, item: Received) -> Outcome:
        try:
            with self._sessions.begin() as session:
                return self._apply_all(session, [item])[0]
        except OperationalError as exc:
            raise TransientStoreError(str(exc.orig) if exc.orig else str(exc)) from exc
        except SQLAlchemyError as exc:
            log.error(
                "could not store message",
                extra={"message_id": item.message.id, "device_id": item.message.device_id, "error": str(exc)},
            )
            return Outcome(error=type(exc).__name__)

    # --- one batch, in one transaction ---------------------------------------------------------

    def _apply_all(self, session: Session, batch: Sequence[Received]) -> list[Outcome]:
        """The batch with a constant number of statements for the common kinds: the devices upserted
        and locked at once, each table's rows inserted with one INSERT ... ON CONFLICT DO NOTHING,
        the alerts and their steps flushed together, the sequence numbers merged per device.
        Per message, each of those was a statement (ten or so per detection), and at ~0.3 ms of
        SQLAlchemy per statement that was the ingest's ceiling."""
        devices = _devices(session, batch)
        created = {device_id for device_id, (_, new) in devices.items() if new}
        rows = _insert_rows(session, batch)
        outcomes: list[Outcome] = []
        raising: list[int] = []  # indexes of the stored messages that may raise an alert
        for index, item in enumerate(batch):
            device = devices[item.message.device_id][0]
            outcome = self._apply_one(session, item, device, rows.get(index, _NO_ROW))
            if not outcome.duplicate and outcome.device is None and item.message.device_id in created:
                outcome = replace(outcome, device=DeviceOut.of(device))  # first contact: announce it
            if not outcome.duplicate:
                created.discard(item.message.device_id)
                if not item.seq_only and isinstance(item.message, ALERTING):
                    raising.append(index)
            outcomes.append(outcome)
        if raising:
            changes = alerts.raise_many(session, [(batch[i].message, batch[i].received_at) for i in raising], self._tz)
            for index, raised in zip(raising, changes, strict=True):
                if raised:
                    outcomes[index] = replace(outcomes[index], raised_alert=True)
        note_received_many(
            session,
            [
                (item.message.device_id, item.message.seq)
                for item, o in zip(batch, outcomes, strict=True)
                if not o.duplicate
            ],
        )
        return outcomes

    def _apply_one(self, session: Session, item: Received, device: Device, row_id: int | None) -> Outcome:
        """One message's own effects, its row (if its kind has one) being inserted already:
        `row_id` is None when the insert found the message stored before (a duplicate)."""
        message = item.message
        if item.seq_only:
            return Outcome()
        if row_id is None:
            return Outcome(duplicate=True)
        if isinstance(message, DetectionMessage):
            return Outcome(event_row=row_id)
        if isinstance(message, HealthMessage):
            # An outbox draining after an outage delivers old health late: keep the newest by the
            # device's own clock as "last health", and store every sample for history.
            if device.last_health_at is None or message.sent_at >= device.last_health_at:
                device.last_health = message.body.model_dump(mode="json")
                device.last_health_at = message.sent_at
                device.agent_version = _clip(message.body.agent_version, 64)
            return Outcome(device=DeviceOut.of(device))
        if isinstance(message, PresenceMessage):
            self._presence(session, message, item.received_at, device)
            return Outcome(device=DeviceOut.of(device))
        if isinstance(message, GivenUpMessage):
            for r in message.body.ranges:
                # The same range may come again in a later report (its first report's ack was lost).
                _insert_ignore(
                    session,
                    GivenUpRange.__table__,  # type: ignore[arg-type]
                    {"device_id": message.device_id, "first": r.first, "last": r.last, "priority": r.priority,
                     "reason": r.reason},
                    conflict_columns=("device_id", "first", "last", "reason"),
                )  # fmt: skip
            return Outcome()
        if isinstance(message, RuleEventMessage):
            # Rule events are kept as alerts only (the starts); the others just count as received.
            if session.scalar(select(Alert.id).where(Alert.message_id == message.id)) is not None:
                return Outcome(duplicate=True)
            return Outcome()
        if isinstance(message, ConfigReportMessage | CommandAckMessage):
            keep = config_store.config_report if isinstance(message, ConfigReportMessage) else config_store.command_ack
            if not keep(session, message, item.received_at, _insert_ignore):  # type: ignore[arg-type]
                return Outcome(duplicate=True)
            return Outcome()
        if isinstance(message, CameraHealthMessage | SnapshotMessage):
            return Outcome()
        raise TypeError(f"no store for {message.kind} messages")  # the ingest marks those seq_only

    @staticmethod
    def _presence(session: Session, msg: PresenceMessage, received_at: datetime, device: Device) -> None:
        # Applied in arrival order, not by seq or sent_at: an agent builds its last-will (offline)
        # before it connects and publishes online, so the will carries the older seq yet is the
        # newer fact when the broker fires it. The broker delivers one client's topic in order.
        body = msg.body
        if body.state == "online" and body.reason == "connected":
            # Made the moment it is published, never replayed from the outbox: receive time minus
            # sent_at is the device's clock error (plus one hop of latency, milliseconds).
            _record_skew(session, msg, received_at)
        device.online = body.state == "online"
        device.presence_reason = _clip(body.reason, 200)
        device.last_presence_at = msg.sent_at
        if body.agent_version:
            device.agent_version = _clip(body.agent_version, 64)


# Kinds that may raise an alert (alerts.raise_many decides which messages actually do).
ALERTING = (DetectionMessage, RuleEventMessage, CameraHealthMessage)
# Kinds whose messages are rows of their own table, inserted in bulk, deduplicated by message id.
_ROW_TABLES: dict[type[V1Message], Table] = {
    DetectionMessage: Event.__table__,  # type: ignore[dict-item]
    HealthMessage: HealthSample.__table__,  # type: ignore[dict-item]
    CameraHealthMessage: CameraHealthEvent.__table__,  # type: ignore[dict-item]
    PresenceMessage: PresenceChange.__table__,  # type: ignore[dict-item]
    GivenUpMessage: GivenUpReport.__table__,  # type: ignore[dict-item]
    SnapshotMessage: AlertSnapshot.__table__,  # type: ignore[dict-item]
}
_NO_ROW = -1  # a kind without a table of its own: nothing was inserted, nothing found stored


def _row_values(msg: V1Message, received_at: datetime) -> dict[str, Any]:
    """The row a message of a `_ROW_TABLES` kind is stored as."""
    common = {"message_id": msg.id, "device_id": msg.device_id, "seq": msg.seq, "sent_at": msg.sent_at,
              "received_at": received_at}  # fmt: skip
    if isinstance(msg, DetectionMessage):
        b = msg.body
        return {**common, "camera_id": b.camera_id, "event_id": b.event_id, "phase": b.phase, "label": b.label,
                "score": b.score, "x1": b.box.x1, "y1": b.box.y1, "x2": b.box.x2, "y2": b.box.y2,
                "frame_width": b.frame_width, "frame_height": b.frame_height, "frame_time": b.frame_time}  # fmt: skip
    if isinstance(msg, HealthMessage):
        return {**common, "body": msg.body.model_dump(mode="json")}
    if isinstance(msg, CameraHealthMessage):
        c = msg.body
        return {**common, "camera_id": c.camera_id, "condition": c.condition, "phase": c.phase, "since": c.since,
                "until": c.until, "variant": c.variant, "value": c.value, "threshold": c.threshold,
                "detail": _clip(c.detail, 300)}  # fmt: skip
    if isinstance(msg, PresenceMessage):
        p = msg.body
        return {**common, "state": p.state, "reason": _clip(p.reason, 200),
                "agent_version": _clip(p.agent_version, 64)}  # fmt: skip
    if isinstance(msg, GivenUpMessage):
        return {**common, "ranges": len(msg.body.ranges)}
    if isinstance(msg, SnapshotMessage):
        # Kept as alert evidence: the JPEG as sent (already redacted at the edge) and its SHA-256.
        s = msg.body
        jpeg = s.jpeg_bytes()
        return {**common, "camera_id": s.camera_id, "event_id": s.event_id, "phase": s.phase, "label": s.label,
                "score": s.score, "box": s.box.model_dump(mode="json"), "width": s.width, "height": s.height,
                "redactions": list(s.redactions), "jpeg": jpeg, "sha256": hashlib.sha256(jpeg).hexdigest(),
                "frame_time": s.frame_time}  # fmt: skip
    raise TypeError(f"{msg.kind} messages have no table of their own")


def event_out(row_id: int, msg: DetectionMessage, received_at: datetime) -> EventOut:
    """The stored event for the live stream, from the message: no second SELECT, no ORM object, and
    no second validation (every field comes from a message the wire contract validated).

    Made by the ingest only when a live stream has subscribers, not by the store for every event:
    even model_construct was a fifth of the store's time per detection (bench/ingest.py)."""
    b = msg.body
    return EventOut.model_construct(
        id=row_id, message_id=msg.id, device_id=msg.device_id, seq=msg.seq, camera_id=b.camera_id,
        event_id=b.event_id, phase=b.phase, label=b.label, score=b.score, box=b.box, frame_width=b.frame_width,
        frame_height=b.frame_height, frame_time=b.frame_time, sent_at=msg.sent_at, received_at=received_at,
    )  # fmt: skip


def _insert_rows(session: Session, batch: Sequence[Received]) -> dict[int, int | None]:
    """Insert the batch's message rows, one statement per table; by batch index, the new row's id,
    or None when the message was stored before (by an earlier batch, another replica, or earlier in
    this batch: the second copy of a message id is a duplicate however close behind it came)."""
    found: dict[int, int | None] = {}
    by_table: dict[Table, list[tuple[int, dict[str, Any]]]] = {}
    first_index: dict[str, int] = {}
    for index, item in enumerate(batch):
        if item.seq_only:
            continue
        msg = item.message
        if msg.id in first_index:
            found[index] = None
            continue
        first_index[msg.id] = index
        table = _ROW_TABLES.get(type(msg))
        if table is not None:
            by_table.setdefault(table, []).append((index, _row_values(msg, item.received_at)))
    for table, rows in by_table.items():
        inserted = _insert_ignore_many(session, table, [values for _, values in rows])
        for index, values in rows:
            found[index] = inserted.get(values["message_id"])
    return found


def _devices(session: Session, batch: Sequence[Received]) -> dict[str, tuple[Device, bool]]:
    """Each device of the batch, created on first contact (race-free across replicas), locked, its
    last_seen moved on; True beside a device this batch created.

    Created and locked in one order (by id): replicas on PostgreSQL write the same devices at once,
    and taking the row locks in message order would let two batches lock pole-a/pole-b in opposite
    orders and deadlock (which would still only cost a retry: it is an OperationalError, so the
    batch is held and stored again). SQLite has one writer at a time and ignores FOR UPDATE.
    """
    last: dict[str, datetime] = {}
    for item in batch:
        device_id = item.message.device_id
        last[device_id] = max(item.received_at, last.get(device_id, item.received_at))
    ids = sorted(last)
    new = _insert_ignore_many(
        session,
        Device.__table__,  # type: ignore[arg-type]
        [{"device_id": d, "first_seen": last[d], "last_seen": last[d], "online": False} for d in ids],
        conflict_columns=("device_id",),
        key="device_id",
        returning="device_id",
    )
    rows = session.scalars(select(Device).where(Device.device_id.in_(ids)).order_by(Device.device_id).with_for_update())
    out: dict[str, tuple[Device, bool]] = {}
    for device in rows:
        device_id = device.device_id
        if last[device_id] > device.last_seen:
            device.last_seen = last[device_id]
        created = device_id in new
        if created and device.last_presence_at is None:
            # Heard from before any presence (e.g. its retained online is still on its way): it is
            # evidently talking to the broker, so show it online until presence says otherwise.
            device.online = True
        out[device_id] = (device, created)
    return out


def note_received_many(session: Session, received: Iterable[tuple[str, int]]) -> None:
    """Merge (device, seq) pairs into each device's runs of received sequence numbers, whatever the
    arrival order.

    A batch's numbers are first cut into runs (a burst from one device is usually a single run),
    and each run touches at most the stored runs it overlaps or extends: one SELECT, and a DELETE
    and an INSERT when it adds anything. Runs with the devices' rows locked (`_devices`), so
    replicas do not interleave their merges on PostgreSQL.
    """
    by_device: dict[str, set[int]] = {}
    for device_id, seq in received:
        by_device.setdefault(device_id, set()).add(seq)
    for device_id in sorted(by_device):
        for first, last in _runs(sorted(by_device[device_id])):
            _merge_run(session, device_id, first, last)


def _runs(seqs: list[int]) -> list[tuple[int, int]]:
    """Sorted distinct numbers as runs of consecutive ones: [1, 2, 3, 7] -> [(1, 3), (7, 7)]."""
    out: list[tuple[int, int]] = []
    for seq in seqs:
        if out and seq == out[-1][1] + 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


def _merge_run(session: Session, device_id: str, first: int, last: int) -> None:
    near = session.execute(
        select(ReceivedSeqRange.first, ReceivedSeqRange.last).where(
            ReceivedSeqRange.device_id == device_id,
            ReceivedSeqRange.first <= last + 1,
            ReceivedSeqRange.last >= first - 1,
        )
    ).all()
    if any(f <= first and last <= la for f, la in near):
        return
    low = min([first, *(f for f, _ in near)])
    high = max([last, *(la for _, la in near)])
    if near:
        session.execute(
            delete(ReceivedSeqRange).where(
                ReceivedSeqRange.device_id == device_id,
                or_(*(ReceivedSeqRange.first == f for f, _ in near)),
            )
        )
    session.execute(insert(ReceivedSeqRange).values(device_id=device_id, first=low, last=high))


def _record_skew(session: Session, msg: PresenceMessage, received_at: datetime) -> None:
    skew = (received_at - msg.sent_at).total_seconds()
    clock = session.get(DeviceClock, msg.device_id)
    if clock is None:
        session.add(DeviceClock(device_id=msg.device_id, skew_s=skew, measured_at=received_at, message_id=msg.id))
    elif received_at >= clock.measured_at:
        clock.skew_s, clock.measured_at, clock.message_id = skew, received_at, msg.id


def _insert_ignore(
    session: Session,
    table: Table,
    values: dict[str, Any],
    *,
    conflict_column: str = "message_id",
    conflict_columns: tuple[str, ...] | None = None,
    returning: str = "id",
) -> Any:
    """INSERT ... ON CONFLICT (cols) DO NOTHING RETURNING col; None when the row already existed.

    The dialect's own insert construct is picked at run time: both SQLite (3.35+) and PostgreSQL
    support this statement, with the same meaning.
    """
    columns = list(conflict_columns or (conflict_column,))
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        pg = postgresql.insert(table).values(values).on_conflict_do_nothing(index_elements=columns)
        return session.execute(pg.returning(table.c[returning])).scalar_one_or_none()
    if dialect == "sqlite":
        lite = sqlite.insert(table).values(values).on_conflict_do_nothing(index_elements=columns)
        return session.execute(lite.returning(table.c[returning])).scalar_one_or_none()
    # Any other engine: look first. Not race-free across writers, but correct for one replica.
    exists = session.execute(select(table.c[columns[0]]).where(*(table.c[c] == values[c] for c in columns)))
    if exists.first() is not None:
        return None
    return session.execute(table.insert().values(values).returning(table.c[returning])).scalar_one()


def _insert_ignore_many(
    session: Session,
    table: Table,
    rows: list[dict[str, Any]],
    *,
    conflict_columns: tuple[str, ...] = ("message_id",),
    key: str = "message_id",
    returning: str = "id",
) -> dict[Any, Any]:
    """`_insert_ignore` for many rows in one statement: {row[key]: new row's `returning`} for the
    rows that were inserted; a row that already existed is simply not in the answer.

    One INSERT ... ON CONFLICT DO NOTHING RETURNING key, col with SQLAlchemy's "insertmanyvalues"
    (multi-row VALUES), so the answer is matched to the rows by `key`, not by position.
    """
    if not rows:
        return {}
    dialect = session.get_bind().dialect.name
    if dialect in ("postgresql", "sqlite"):
        make = postgresql.insert if dialect == "postgresql" else sqlite.insert
        statement = (
            make(table)
            .on_conflict_do_nothing(index_elements=list(conflict_columns))
            .returning(table.c[key], table.c[returning])
        )
        return {found: value for found, value in session.execute(statement, rows)}
    out = {}
    for values in rows:
        value = _insert_ignore(session, table, values, conflict_columns=conflict_columns, returning=returning)
        if value is not None:
            out[values[key]] = value
    return out
