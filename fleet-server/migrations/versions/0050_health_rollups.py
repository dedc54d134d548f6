"""Health history downsampling: per-device rollups of aged health samples, and the lease rows
that keep two replicas from compacting at once.

Revision ID: 0050
Revises: 0040
Create Date: 2026-11-30

Types are spelled out here rather than imported from models.py, so that this migration keeps
producing the same schema when the models move on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0050"
down_revision: str | None = "0040"
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
        "health_rollups",
        sa.Column("id", _row_id(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("bucket_s", sa.Integer(), nullable=False),
        sa.Column("bucket_start", _ts(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("stats", _json(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.device_id"], name=op.f("fk_health_rollups_device_id_devices")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_health_rollups")),
        sa.UniqueConstraint("device_id", "bucket_s", "bucket_start", name="uq_health_rollups_bucket"),
    )
    op.create_index("ix_health_rollups_bucket_s_bucket_start", "health_rollups", ["bucket_s", "bucket_start"])
    op.create_table(
        "maintenance_leases",
        sa.Column("job", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=120), nullable=True),
        sa.Column("last_run_at", _ts(), nullable=True),
        sa.Column("last_result", _json(), nullable=True),
        sa.PrimaryKeyConstraint("job", name=op.f("pk_maintenance_leases")),
    )


def downgrade() -> None:
    op.drop_table("maintenance_leases")
    op.drop_index("ix_health_rollups_bucket_s_bucket_start", table_name="health_rollups")
    op.drop_table("health_rollups")
