"""Storing what boxes say about configuration and commands: config_report and command_ack.

Called by the ingest's store (store.py) in its transaction, after the device row is locked. Each
message is a row, deduplicated by message id; the per-device summary (`device_configs`) and the
command's outcome (`device_commands`) take the newest report by the box's own clock, because an
outbox draining after an outage delivers old reports late.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Table
from sqlalchemy.orm import Session

from polewatch.protocol import CommandAckMessage, ConfigReportMessage

from .models import CommandAckRow, ConfigReportRow, DeviceCommand, DeviceConfig

InsertIgnore = Any  # store._insert_ignore: (session, table, values) -> row id or None


def _clip(value: str | None, length: int) -> str | None:
    return value[:length] if value is not None else None


def config_report(session: Session, msg: ConfigReportMessage, received_at: datetime, insert: InsertIgnore) -> bool:
    """Store one report; False when it is a duplicate."""
    body = msg.body
    table: Table = ConfigReportRow.__table__  # type: ignore[assignment]
    row_id = insert(session, table, {
        "message_id": msg.id, "device_id": msg.device_id, "seq": msg.seq, "version": body.version,
        "status": body.status, "reason": _clip(body.reason, 2000), "field": _clip(body.field, 200),
        "applied_version": body.applied_version, "changed": [c[:200] for c in body.changed[:100]],
        "sent_at": msg.sent_at, "received_at": received_at,
    })  # fmt: skip
    if row_id is None:
        return False
    state = session.get(DeviceConfig, msg.device_id)
    if state is None:  # a box reporting on a document this server never recorded (another server's)
        state = DeviceConfig(device_id=msg.device_id, desired_version=0, document={}, computed_at=received_at,
                             down_seq=0)  # fmt: skip
        session.add(state)
    if body.status == "refused" and (state.refusal_at is None or msg.sent_at >= state.refusal_at):
        # The last refusal stays on show even after a later success: "why was version 7 refused".
        state.refusal_version = body.version
        state.refusal_reason = _clip(body.reason, 2000)
        state.refusal_field = _clip(body.field, 200)
        state.refusal_at = msg.sent_at
    if state.report_sent_at is None or msg.sent_at >= state.report_sent_at:
        # An older report arriving late is history, not the current state.
        applied = body.applied_version
        if applied is None and body.status == "applied":
            applied = body.version
        state.applied_version = applied
        state.report_version = body.version
        state.report_status = body.status
        state.report_sent_at = msg.sent_at
    session.flush()
    return True


def command_ack(session: Session, msg: CommandAckMessage, received_at: datetime, insert: InsertIgnore) -> bool:
    """Store one ack and put its outcome on the command; False when it is a duplicate."""
    body = msg.body
    table: Table = CommandAckRow.__table__  # type: ignore[assignment]
    row_id = insert(session, table, {
        "message_id": msg.id, "device_id": msg.device_id, "seq": msg.seq, "command_id": body.command_id,
        "status": body.status, "reason": _clip(body.reason, 2000), "result": body.result,
        "repeated": body.repeated, "sent_at": msg.sent_at, "received_at": received_at,
    })  # fmt: skip
    if row_id is None:
        return False
    command = session.query(DeviceCommand).filter_by(command_id=body.command_id, device_id=msg.device_id).first()
    if command is not None and (command.acked_at is None or not body.repeated):
        command.status = body.status
        command.reason = _clip(body.reason, 2000)
        command.result = body.result
        command.acked_at = received_at
        session.flush()
    return True
