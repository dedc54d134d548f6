"""Delivery accounting: sequence numbers received, ranges given up by devices, clock skew per device.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

Types are spelled out here rather than imported from models.py, so that this migration keeps
producing the same schema when the models move on.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _row_id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "received_seq_ranges",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("first", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("last", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.device_id"], name=op.f("fk_received_seq_ranges_device_id_devices")
        ),
        sa.PrimaryKeyConstraint("device_id", "first", name=op.f("pk_received_seq_ranges")),
    )
    op.create_table(
        "given_up_reports",
        sa.Column("id", _row_id(), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("ranges", sa.Integer(), nullable=False),
        sa.Column("sent_at", _ts(), nullable=False),
        sa.Column("received_at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.device_id"], name=op.f("fk_given_up_reports_device_id_devices")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_given_up_reports")),
        sa.UniqueConstraint("message_id", name=op.f("uq_given_up_reports_message_id")),
    )
    op.create_index("ix_given_up_reports_device_id_id", "given_up_reports", ["device_id", "id"])
    op.create_table(
        "given_up_ranges",
        sa.Column("id", _row_id(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("first", sa.BigInteger(), nullable=False),
        sa.Column("last", sa.BigInteger(), nullable=False),
        sa.Column("priority", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.device_id"], name=op.f("fk_given_up_ranges_device_id_devices")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_given_up_ranges")),
        sa.UniqueConstraint("device_id", "first", "last", "reason", name="uq_given_up_ranges_range"),
    )
    op.create_table(
        "device_clocks",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("skew_s", sa.Float(), nullable=False),
        sa.Column("measured_at", _ts(), nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.device_id"], name=op.f("fk_device_clocks_device_id_devices")),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_device_clocks")),
    )


def downgrade() -> None:
    op.drop_table("device_clocks")
    op.drop_table("given_up_ranges")
    op.drop_index("ix_given_up_reports_device_id_id", table_name="given_up_reports")
    op.drop_table("given_up_reports")
    op.drop_table("received_seq_ranges")
