"""Credential rotation: each box's public key and current credential, and the rotations made.

Revision ID: 0060
Revises: 0050
Create Date: 2026-11-24

Boxes enrolled before this revision have no public key on record: the server cannot seal a password
to them nor sign a certificate for them, and says so; enrolling them again records it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0060"
down_revision: str | None = "0050"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("registry_devices") as batch:
        batch.add_column(sa.Column("box_public_key", sa.Text(), nullable=True))
        batch.add_column(sa.Column("credential_kind", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("broker_login", sa.String(length=120), nullable=True))
        batch.add_column(sa.Column("certificate_serial", sa.String(length=40), nullable=True))
    op.create_table(
        "credential_rotations",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("command_id", sa.String(length=80), nullable=False),
        sa.Column("requested_by", sa.String(length=120), nullable=False),
        sa.Column("requested_at", _ts(), nullable=False),
        sa.Column("expires_at", _ts(), nullable=False),
        sa.Column("finished_at", _ts(), nullable=True),
        sa.Column("reason", sa.String(length=2000), nullable=True),
        sa.Column("old_login", sa.String(length=120), nullable=True),
        sa.Column("new_login", sa.String(length=120), nullable=True),
        sa.Column("old_serial", sa.String(length=40), nullable=True),
        sa.Column("new_serial", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"], ["registry_devices.device_id"],
            name=op.f("fk_credential_rotations_device_id_registry_devices"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credential_rotations")),
        sa.UniqueConstraint("command_id", name=op.f("uq_credential_rotations_command_id")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_credential_rotations_device_id_id", "credential_rotations", ["device_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_credential_rotations_device_id_id", table_name="credential_rotations")
    op.drop_table("credential_rotations")
    with op.batch_alter_table("registry_devices") as batch:
        for column in ("certificate_serial", "broker_login", "credential_kind", "box_public_key"):
            batch.drop_column(column)
