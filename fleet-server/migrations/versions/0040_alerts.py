"""Alerts for the command centre: agencies, routing rules, alerts, their steps and deliveries.

Revision ID: 0040
Revises: 0030
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

revision: str = "0040"
down_revision: str | None = "0030"
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
        "agencies",
        sa.Column("id", _row_id(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("webhook_url", sa.String(length=500), nullable=True),
        sa.Column("format", sa.String(length=8), nullable=False),
        sa.Column("secret", sa.String(length=128), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agencies")),
        sa.UniqueConstraint("name", name=op.f("uq_agencies_name")),
    )
    op.create_table(
        "routing_rules",
        sa.Column("id", _row_id(), autoincrement=True, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("agency_id", _row_id(), nullable=False),
        sa.Column("event_type", sa.String(length=80), nullable=True),
        sa.Column("rule_id", sa.String(length=64), nullable=True),
        sa.Column("site", sa.String(length=64), nullable=True),
        sa.Column("device_id", sa.String(length=64), nullable=True),
        sa.Column("from_minute", sa.Integer(), nullable=True),
        sa.Column("to_minute", sa.Integer(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(["agency_id"], ["agencies.id"], name=op.f("fk_routing_rules_agency_id_agencies")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_routing_rules")),
    )
    op.create_table(
        "alerts",
        sa.Column("id", _row_id(), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("event_type", sa.String(length=80), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("camera_id", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=80), nullable=True),
        sa.Column("rule_id", sa.String(length=64), nullable=True),
        sa.Column("label", sa.String(length=64), nullable=True),
        sa.Column("detail", _json(), nullable=False),
        sa.Column("occurred_at", _ts(), nullable=False),
        sa.Column("received_at", _ts(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("routed_agency_id", _row_id(), nullable=True),
        sa.Column("agency_id", _row_id(), nullable=True),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.device_id"], name=op.f("fk_alerts_device_id_devices")),
        sa.ForeignKeyConstraint(
            ["routed_agency_id"], ["agencies.id"], name=op.f("fk_alerts_routed_agency_id_agencies")
        ),
        sa.ForeignKeyConstraint(["agency_id"], ["agencies.id"], name=op.f("fk_alerts_agency_id_agencies")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
        sa.UniqueConstraint("message_id", name=op.f("uq_alerts_message_id")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_alerts_status_id", "alerts", ["status", "id"])
    op.create_index("ix_alerts_device_id_id", "alerts", ["device_id", "id"])
    op.create_table(
        "alert_steps",
        sa.Column("id", _row_id(), autoincrement=True, nullable=False),
        sa.Column("alert_id", _row_id(), nullable=False),
        sa.Column("step", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=120), nullable=False),
        sa.Column("agency_id", _row_id(), nullable=True),
        sa.Column("note", sa.String(length=500), nullable=True),
        sa.Column("at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(["alert_id"], ["alerts.id"], name=op.f("fk_alert_steps_alert_id_alerts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_steps")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_alert_steps_alert_id_id", "alert_steps", ["alert_id", "id"])
    op.create_table(
        "alert_deliveries",
        sa.Column("id", _row_id(), autoincrement=True, nullable=False),
        sa.Column("alert_id", _row_id(), nullable=False),
        sa.Column("agency_id", _row_id(), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=300), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("next_attempt_at", _ts(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(["alert_id"], ["alerts.id"], name=op.f("fk_alert_deliveries_alert_id_alerts")),
        sa.ForeignKeyConstraint(["agency_id"], ["agencies.id"], name=op.f("fk_alert_deliveries_agency_id_agencies")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_deliveries")),
    )
    op.create_index("ix_alert_deliveries_state_id", "alert_deliveries", ["state", "id"])
    op.create_table(
        "alert_snapshots",
        sa.Column("id", _row_id(), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("camera_id", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=80), nullable=False),
        sa.Column("phase", sa.String(length=8), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("box", _json(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("redactions", _json(), nullable=False),
        sa.Column("jpeg", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("frame_time", _ts(), nullable=False),
        sa.Column("sent_at", _ts(), nullable=False),
        sa.Column("received_at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.device_id"], name=op.f("fk_alert_snapshots_device_id_devices")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_snapshots")),
        sa.UniqueConstraint("message_id", name=op.f("uq_alert_snapshots_message_id")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_alert_snapshots_event", "alert_snapshots", ["device_id", "camera_id", "event_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_alert_snapshots_event", table_name="alert_snapshots")
    op.drop_table("alert_snapshots")
    op.drop_index("ix_alert_deliveries_state_id", table_name="alert_deliveries")
    op.drop_table("alert_deliveries")
    op.drop_index("ix_alert_steps_alert_id_id", table_name="alert_steps")
    op.drop_table("alert_steps")
    op.drop_index("ix_alerts_device_id_id", table_name="alerts")
    op.drop_index("ix_alerts_status_id", table_name="alerts")
    op.drop_table("alerts")
    op.drop_table("routing_rules")
    op.drop_table("agencies")
