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
from collections.abc import Sequence
from dataclasses import dataclass
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
from .alert_schemas import AlertChangeOut, AlertOut, StepOut
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
    event: EventOut | None = None
    device: DeviceOut | None = None
    alert: AlertChangeOut | None = None  # the alert this message raised, for the alert stream


def _clip(value: str | None, length: int) -> str | None:
    return value[:length] if value is not None else None


class Store:
    """Applies decoded messages to the database."""

    def __init__(self, sessions: sessionmaker[Session], alert_timezone: str = "Asia/Makassar") -> None:
        self._sessions = sessions
        self._tz = ZoneInfo(alert_timezone)

    def _alert(self, session: Session, message: V1Message, received_at: datetime) -> AlertChangeOut | None:
        change = alerts.raise_from(session, message, received_at, self._tz)
        if change is None:
            return None
        return AlertChangeOut(step=StepOut.of(change.step), alert=AlertOut.of(change.alert))

    def apply_batch(self, batch: Sequence[Received]) -> list[Outcome]:
        """Store a batch in one transaction; if that fails, fall back to one transaction per
        message so that one bad message cannot take its neighbours down with it.

        Raises TransientStoreError when the database itself is unavailable, so the caller keeps
        the messages unacknowledged and retries.
        """
        try:
            with self._sessions.begin() as session:
                _lock_devices(session, {item.message.device_id for item in batch})
                return [self._apply(session, item) for item in batch]
        except OperationalError as exc:
            raise TransientStoreError(str(exc.orig) if exc.orig else str(exc)) from exc
        except SQLAlchemyError:
            pass  # a problem with one of the messages: find it by storing them one by one
        return [self._apply_alone(item) for item in batch]

    def _apply_alone(self, item: Received) -> Outcome:
        try:
            with self._sessions.begin() as session:
                return self._apply(session, item)
        except OperationalError as exc:
            raise TransientStoreError(str(exc.orig) if exc.orig else str(exc)) from exc
        except SQLAlchemyError as exc:
            log.error(
                "could not store message",
                extra={"message_id": item.message.id, "device_id": item.message.device_id, "error": str(exc)},
            )
            return Outcome(error=type(exc).__name__)

    # --- one message -------------------------------------------------------------------------

    def _apply(self, session: Session, item: Received) -> Outcome:
        outcome = self._apply_kind(session, item)
        if not outcome.duplicate and outcome.error is None:
            note_received(session, item.message.device_id, item.message.seq)
        return outcome

    def _apply_kind(self, session: Session, item: Received) -> Outcome:
        message = item.message
        if item.seq_only:
            self._device(session, message.device_id, item.received_at)
            return Outcome()
        if isinstance(message, DetectionMessage):
            return self._detection(session, message, item.received_at)
        if isinstance(message, HealthMessage):
            return self._health(session, message, item.received_at)
        if isinstance(message, CameraHealthMessage):
            return self._camera_health(session, message, item.received_at)
        if isinstance(message, GivenUpMessage):
            return self._given_up(session, message, item.received_at)
        if isinstance(message, RuleEventMessage):
            return self._rule_event(session, message, item.received_at)
        if isinstance(message, SnapshotMessage):
            return self._snapshot(session, message, item.received_at)
        if isinstance(message, PresenceMessage):
            return self._presence(session, message, item.received_at)
        if isinstance(message, ConfigReportMessage | CommandAckMessage):
            device, created = self._device(session, message.device_id, item.received_at)
            keep = config_store.config_report if isinstance(message, ConfigReportMessage) else config_store.command_ack
            if not keep(session, message, item.received_at, _insert_ignore):  # type: ignore[arg-type]
                return Outcome(duplicate=True)
            return Outcome(device=DeviceOut.of(device) if created else None)
        raise TypeError(f"no store for {message.kind} messages")  # the ingest marks those seq_only

    def _given_up(self, session: Session, msg: GivenUpMessage, received_at: datetime) -> Outcome:
        device, created = self._device(session, msg.device_id, received_at)
        row_id = _insert_ignore(
            session,
            GivenUpReport.__table__,  # type: ignore[arg-type]
            {
                "message_id": msg.id,
                "device_id": msg.device_id,
                "seq": msg.seq,
                "ranges": len(msg.body.ranges),
                "sent_at": msg.sent_at,
                "received_at": received_at,
            },
        )
        if row_id is None:
            return Outcome(duplicate=True)
        for r in msg.body.ranges:
            # The same range may come again in a later report (its first report's ack was lost).
            _insert_ignore(
                session,
                GivenUpRange.__table__,  # type: ignore[arg-type]
                {"device_id": msg.device_id, "first": r.first, "last": r.last, "priority": r.priority,
                 "reason": r.reason},
                conflict_columns=("device_id", "first", "last", "reason"),
            )
        return Outcome(device=DeviceOut.of(device) if created else None)

    def _device(self, session: Session, device_id: str, received_at: datetime) -> tuple[Device, bool]:
        """The device row, created on first contact (race-free across replicas)."""
        created = _insert_ignore(
            session,
            Device.__table__,  # type: ignore[arg-type]
            {"device_id": device_id, "first_seen": received_at, "last_seen": received_at, "online": False},
            conflict_column="device_id",
            returning="device_id",
        )
        device = session.get(Device, device_id, with_for_update=True)
        assert device is not None
        if received_at > device.last_seen:
            device.last_seen = received_at
        if created is not None and device.last_presence_at is None:
            # Heard from before any presence (e.g. its retained online is still on its way): it is
            # evidently talking to the broker, so show it online until presence says otherwise.
            device.online = True
        return device, created is not None

    def _detection(self, session: Session, msg: DetectionMessage, received_at: datetime) -> Outcome:
        device, created = self._device(session, msg.device_id, received_at)
        body = msg.body
        values: dict[str, Any] = {
            "message_id": msg.id,
            "device_id": msg.device_id,
            "seq": msg.seq,
            "camera_id": body.camera_id,
            "event_id": body.event_id,
            "phase": body.phase,
            "label": body.label,
            "score": body.score,
            "x1": body.box.x1,
            "y1": body.box.y1,
            "x2": body.box.x2,
            "y2": body.box.y2,
            "frame_width": body.frame_width,
            "frame_height": body.frame_height,
            "frame_time": body.frame_time,
            "sent_at": msg.sent_at,
            "received_at": received_at,
        }
        row_id = _insert_ignore(session, Event.__table__, values)  # type: ignore[arg-type]
        if row_id is None:
            return Outcome(duplicate=True)
        event = EventOut.of(Event(id=row_id, **values))  # a transient copy: no second SELECT
        alert = self._alert(session, msg, received_at)
        return Outcome(event=event, device=DeviceOut.of(device) if created else None, alert=alert)

    def _snapshot(self, session: Session, msg: SnapshotMessage, received_at: datetime) -> Outcome:
        """Kept as alert evidence: the JPEG as sent (already redacted at the edge) and its SHA-256."""
        device, created = self._device(session, msg.device_id, received_at)
        body = msg.body
        jpeg = body.jpeg_bytes()
        row_id = _insert_ignore(
            session,
            AlertSnapshot.__table__,  # type: ignore[arg-type]
            {
                "message_id": msg.id, "device_id": msg.device_id, "seq": msg.seq, "camera_id": body.camera_id,
                "event_id": body.event_id, "phase": body.phase, "label": body.label, "score": body.score,
                "box": body.box.model_dump(mode="json"), "width": body.width, "height": body.height,
                "redactions": list(body.redactions), "jpeg": jpeg, "sha256": hashlib.sha256(jpeg).hexdigest(),
                "frame_time": body.frame_time, "sent_at": msg.sent_at, "received_at": received_at,
            },
        )  # fmt: skip
        if row_id is None:
            return Outcome(duplicate=True)
        return Outcome(device=DeviceOut.of(device) if created else None)

    def _rule_event(self, session: Session, msg: RuleEventMessage, received_at: datetime) -> Outcome:
        """Rule events are kept as alerts only (the starts); the others just count as received."""
        device, created = self._device(session, msg.device_id, received_at)
        if session.scalar(select(Alert.id).where(Alert.message_id == msg.id)) is not None:
            return Outcome(duplicate=True)
        alert = self._alert(session, msg, received_at)
        return Outcome(device=DeviceOut.of(device) if created else None, alert=alert)

    def _camera_health(self, session: Session, msg: CameraHealthMessage, received_at: datetime) -> Outcome:
        device, created = self._device(session, msg.device_id, received_at)
        body = msg.body
        row_id = _insert_ignore(
            session,
            CameraHealthEvent.__table__,  # type: ignore[arg-type]
            {
                "message_id": msg.id,
                "device_id": msg.device_id,
                "seq": msg.seq,
                "camera_id": body.camera_id,
                "condition": body.condition,
                "phase": body.phase,
                "since": body.since,
                "until": body.until,
                "variant": body.variant,
                "value": body.value,
                "threshold": body.threshold,
                "detail": _clip(body.detail, 300),
                "sent_at": msg.sent_at,
                "received_at": received_at,
            },
        )
        if row_id is None:
            return Outcome(duplicate=True)
        alert = self._alert(session, msg, received_at)
        return Outcome(device=DeviceOut.of(device) if created else None, alert=alert)

    def _health(self, session: Session, msg: HealthMessage, received_at: datetime) -> Outcome:
        device, _ = self._device(session, msg.device_id, received_at)
        body = msg.body.model_dump(mode="json")
        row_id = _insert_ignore(
            session,
            HealthSample.__table__,  # type: ignore[arg-type]
            {
                "message_id": msg.id,
                "device_id": msg.device_id,
                "seq": msg.seq,
                "sent_at": msg.sent_at,
                "received_at": received_at,
                "body": body,
            },
        )
        if row_id is None:
            return Outcome(duplicate=True)
        # An outbox draining after an outage delivers old health late: keep the newest by the
        # device's own clock as "last health", and store every sample for history.
        if device.last_health_at is None or msg.sent_at >= device.last_health_at:
            device.last_health = body
            device.last_health_at = msg.sent_at
            device.agent_version = _clip(msg.body.agent_version, 64)
        session.flush()
        return Outcome(device=DeviceOut.of(device))

    def _presence(self, session: Session, msg: PresenceMessage, received_at: datetime) -> Outcome:
        device, _ = self._device(session, msg.device_id, received_at)
        body = msg.body
        row_id = _insert_ignore(
            session,
            PresenceChange.__table__,  # type: ignore[arg-type]
            {
                "message_id": msg.id,
                "device_id": msg.device_id,
                "seq": msg.seq,
                "state": body.state,
                "reason": _clip(body.reason, 200),
                "agent_version": _clip(body.agent_version, 64),
                "sent_at": msg.sent_at,
                "received_at": received_at,
            },
        )
        if row_id is None:
            return Outcome(duplicate=True)
        # Applied in arrival order, not by seq or sent_at: an agent builds its last-will (offline)
        # before it connects and publishes online, so the will carries the older seq yet is the
        # newer fact when the broker fires it. The broker delivers one client's topic in order.
        if body.state == "online" and body.reason == "connected":
            # Made the moment it is published, never replayed from the outbox: receive time minus
            # sent_at is the device's clock error (plus one hop of latency, milliseconds).
            _record_skew(session, msg, received_at)
        device.online = body.state == "online"
        device.presence_reason = _clip(body.reason, 200)
        device.last_presence_at = msg.sent_at
        if body.agent_version:
            device.agent_version = _clip(body.agent_version, 64)
        session.flush()
        return Outcome(device=DeviceOut.of(device))


def _lock_devices(session: Session, device_ids: set[str]) -> None:
    """Lock the batch's existing device rows up front, in one order (by id).

    Replicas on PostgreSQL write the same devices at once; taking the row locks in message order
    would let two batches lock pole-a/pole-b in opposite orders and deadlock. (A deadlock would
    still only cost a retry: it is an OperationalError, so the batch is held and stored again.)
    SQLite has one writer at a time and no row locks: nothing to do.
    """
    if session.get_bind().dialect.name == "sqlite" or not device_ids:
        return
    session.execute(
        select(Device.device_id).where(Device.device_id.in_(sorted(device_ids))).order_by(Device.device_id).with_for_update()
    ).all()


def note_received(session: Session, device_id: str, seq: int) -> None:
    """Merge `seq` into the device's runs of received sequence numbers, whatever the arrival order.

    Touches at most the two runs next to `seq`: one that it extends, or two that it joins. Runs
    with the device's row locked (every caller has been through `_device`), so replicas do not
    interleave their merges on PostgreSQL.
    """
    near = session.execute(
        select(ReceivedSeqRange.first, ReceivedSeqRange.last).where(
            ReceivedSeqRange.device_id == device_id,
            ReceivedSeqRange.first <= seq + 1,
            ReceivedSeqRange.last >= seq - 1,
        )
    ).all()
    if any(first <= seq <= last for first, last in near):
        return
    first = min([seq, *(f for f, _ in near)])
    last = max([seq, *(la for _, la in near)])
    if near:
        session.execute(
            delete(ReceivedSeqRange).where(
                ReceivedSeqRange.device_id == device_id,
                or_(*(ReceivedSeqRange.first == f for f, _ in near)),
            )
        )
    session.execute(insert(ReceivedSeqRange).values(device_id=device_id, first=first, last=last))


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
