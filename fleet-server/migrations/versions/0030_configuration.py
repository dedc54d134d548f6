"""Configuration: layered documents (fleet, group, device), group membership, effective document and
report per device, config reports, commands and their acks.

Revision ID: 0030
Revises: 0010
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

revision: str = "0030"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _row_id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _message_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("id", _row_id(), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "config_layers",
        sa.Column("id", _row_id(), autoincrement=True, nullable=False),
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("target", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("document", _json(), nullable=False),
        sa.Column("comment", sa.String(length=500), nullable=True),
        sa.Column("rolled_back_from", sa.Integer(), nullable=True),
        sa.Column("created_by", sa.String(length=120), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_config_layers")),
        sa.UniqueConstraint("scope", "target", "version", name="uq_config_layers_version"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_config_layers_scope_target_id", "config_layers", ["scope", "target", "id"])
    op.create_table(
        "config_group_members",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("group_name", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_config_group_members")),
    )
    op.create_index("ix_config_group_members_group_name", "config_group_members", ["group_name", "device_id"])
    op.create_table(
        "device_configs",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("desired_version", sa.Integer(), nullable=False),
        sa.Column("document", _json(), nullable=False),
        sa.Column("computed_at", _ts(), nullable=False),
        sa.Column("published_at", _ts(), nullable=True),
        sa.Column("publish_error", sa.String(length=300), nullable=True),
        sa.Column("down_seq", sa.BigInteger(), nullable=False),
        sa.Column("applied_version", sa.Integer(), nullable=True),
        sa.Column("report_version", sa.Integer(), nullable=True),
        sa.Column("report_status", sa.String(length=8), nullable=True),
        sa.Column("report_sent_at", _ts(), nullable=True),
        sa.Column("refusal_version", sa.Integer(), nullable=True),
        sa.Column("refusal_reason", sa.String(length=2000), nullable=True),
        sa.Column("refusal_field", sa.String(length=200), nullable=True),
        sa.Column("refusal_at", _ts(), nullable=True),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_device_configs")),
    )
    op.create_table(
        "config_reports",
        *_message_columns(),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("reason", sa.String(length=2000), nullable=True),
        sa.Column("field", sa.String(length=200), nullable=True),
        sa.Column("applied_version", sa.Integer(), nullable=True),
        sa.Column("changed", _json(), nullable=False),
        sa.Column("sent_at", _ts(), nullable=False),
        sa.Column("received_at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.device_id"], name=op.f("fk_config_reports_device_id_devices")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_config_reports")),
        sa.UniqueConstraint("message_id", name=op.f("uq_config_reports_message_id")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_config_reports_device_id_id", "config_reports", ["device_id", "id"])
    op.create_table(
        "device_commands",
        sa.Column("id", _row_id(), autoincrement=True, nullable=False),
        sa.Column("command_id", sa.String(length=80), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("args", _json(), nullable=False),
        sa.Column("expires_at", _ts(), nullable=True),
        sa.Column("created_by", sa.String(length=120), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("published_at", _ts(), nullable=True),
        sa.Column("publish_error", sa.String(length=300), nullable=True),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("reason", sa.String(length=2000), nullable=True),
        sa.Column("result", _json(), nullable=True),
        sa.Column("acked_at", _ts(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_commands")),
        sa.UniqueConstraint("command_id", name=op.f("uq_device_commands_command_id")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_device_commands_device_id_id", "device_commands", ["device_id", "id"])
    op.create_table(
        "command_acks",
        *_message_columns(),
        sa.Column("command_id", sa.String(length=80), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("reason", sa.String(length=2000), nullable=True),
        sa.Column("result", _json(), nullable=True),
        sa.Column("repeated", sa.Boolean(), nullable=False),
        sa.Column("sent_at", _ts(), nullable=False),
        sa.Column("received_at", _ts(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.device_id"], name=op.f("fk_command_acks_device_id_devices")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_command_acks")),
        sa.UniqueConstraint("message_id", name=op.f("uq_command_acks_message_id")),
    )
    op.create_index("ix_command_acks_device_id_id", "command_acks", ["device_id", "id"])


def downgrade() -> None:
    for index, table in (
        ("ix_command_acks_device_id_id", "command_acks"),
        ("ix_device_commands_device_id_id", "device_commands"),
        ("ix_config_reports_device_id_id", "config_reports"),
        ("ix_config_group_members_group_name", "config_group_members"),
        ("ix_config_layers_scope_target_id", "config_layers"),
    ):
        op.drop_index(index, table_name=table)
    for table in ("command_acks", "device_commands", "config_reports", "device_configs", "config_group_members",
                  "config_layers"):
        op.drop_table(table)
