"""Initial schema: devices, detection events, health samples, presence history.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Types are spelled out here rather than imported from models.py, so that this migration keeps
producing the same schema when the models move on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _row_id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("first_seen", _ts(), nullable=False),
        sa.Column("last_seen", _ts(), nullable=False),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("presence_reason", sa.String(length=200), nullable=True),
        sa.Column("agent_version", sa.String(length=64), nullable=True),
        sa.Column("last_presence_at", _ts(), nullable=True),
        sa.Column("last_health", _json(), nullable=True),
        sa.Column("last_health_at", _ts(), nullable=True),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_devices")),
    )
    op.create_table(
        "events",
        sa.Column("id", _row_id(), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("camera_id", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=80), nullable=False),
        sa.Column("phase", sa.String(length=8), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("x1", sa.Float(), nullable=False),
        sa.Column("y1", sa.Float(), nullable=False),
        sa.Column("x2", sa.Float(), nullable=False),
        sa.Column("y2", sa.Float(), nullable=False),
        sa.Column("frame_width", sa.Integer(), nullable=False),
        sa.Column("frame_height", sa.Integer(), nullable=False),
        sa.Column("frame_time", _ts(), nullable=False),
        sa.Column("sent_at", _ts(), nullable=False),
        sa.Column("received_at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.device_id"], name=op.f("fk_events_device_id_devices")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.UniqueConstraint("message_id", name=op.f("uq_events_message_id")),
        # Never reuse a row id: ids are the console's SSE resume cursor.
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_device_id_id", "events", ["device_id", "id"])
    op.create_index("ix_events_label_id", "events", ["label", "id"])

    op.create_table(
        "health_samples",
        sa.Column("id", _row_id(), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("sent_at", _ts(), nullable=False),
        sa.Column("received_at", _ts(), nullable=False),
        sa.Column("body", _json(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.device_id"], name=op.f("fk_health_samples_device_id_devices")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_health_samples")),
        sa.UniqueConstraint("message_id", name=op.f("uq_health_samples_message_id")),
    )
    op.create_index("ix_health_samples_device_id_sent_at", "health_samples", ["device_id", "sent_at"])

    op.create_table(
        "presence_changes",
        sa.Column("id", _row_id(), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=8), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("agent_version", sa.String(length=64), nullable=True),
        sa.Column("sent_at", _ts(), nullable=False),
        sa.Column("received_at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.device_id"], name=op.f("fk_presence_changes_device_id_devices")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_presence_changes")),
        sa.UniqueConstraint("message_id", name=op.f("uq_presence_changes_message_id")),
    )
    op.create_index("ix_presence_changes_device_id_id", "presence_changes", ["device_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_presence_changes_device_id_id", table_name="presence_changes")
    op.drop_table("presence_changes")
    op.drop_index("ix_health_samples_device_id_sent_at", table_name="health_samples")
    op.drop_table("health_samples")
    op.drop_index("ix_events_label_id", table_name="events")
    op.drop_index("ix_events_device_id_id", table_name="events")
    op.drop_table("events")
    op.drop_table("devices")
