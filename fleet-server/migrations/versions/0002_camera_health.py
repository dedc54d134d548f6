"""Camera-health events: start and end of covered, frozen, blurred, shifted and low-fps conditions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

Types are spelled out here rather than imported from models.py, so that this migration keeps
producing the same schema when the models move on.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "camera_health_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("camera_id", sa.String(length=64), nullable=False),
        sa.Column("condition", sa.String(length=16), nullable=False),
        sa.Column("phase", sa.String(length=8), nullable=False),
        sa.Column("since", _ts(), nullable=False),
        sa.Column("until", _ts(), nullable=True),
        sa.Column("variant", sa.String(length=16), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("detail", sa.String(length=300), nullable=True),
        sa.Column("sent_at", _ts(), nullable=False),
        sa.Column("received_at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.device_id"], name=op.f("fk_camera_health_events_device_id_devices")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_camera_health_events")),
        sa.UniqueConstraint("message_id", name=op.f("uq_camera_health_events_message_id")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_camera_health_events_device_id_id", "camera_health_events", ["device_id", "id"])
    op.create_index(
        "ix_camera_health_events_episode", "camera_health_events", ["device_id", "camera_id", "condition", "since"]
    )


def downgrade() -> None:
    op.drop_index("ix_camera_health_events_episode", table_name="camera_health_events")
    op.drop_index("ix_camera_health_events_device_id_id", table_name="camera_health_events")
    op.drop_table("camera_health_events")
