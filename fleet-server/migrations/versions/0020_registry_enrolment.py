"""Registry and enrolment: sites, poles, registered devices, pole history, groups, tags, enrolment codes.

Revision ID: 0020
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

revision: str = "0020"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _row_id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _place() -> list[sa.Column[Any]]:
    return [
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("address", sa.String(length=300), nullable=True),
        sa.Column("district", sa.String(length=100), nullable=True),
        sa.Column("kelurahan", sa.String(length=100), nullable=True),
        sa.Column("latitude", sa.Float(), nullable=True),
        sa.Column("longitude", sa.Float(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "sites",
        sa.Column("site_id", sa.String(length=64), nullable=False),
        *_place(),
        sa.PrimaryKeyConstraint("site_id", name=op.f("pk_sites")),
    )
    op.create_table(
        "poles",
        sa.Column("pole_id", sa.String(length=64), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        *_place(),
        sa.ForeignKeyConstraint(["site_id"], ["sites.site_id"], name=op.f("fk_poles_site_id_sites")),
        sa.PrimaryKeyConstraint("pole_id", name=op.f("pk_poles")),
    )
    op.create_index("ix_poles_site_id_pole_id", "poles", ["site_id", "pole_id"])
    op.create_table(
        "registry_devices",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("pole_id", sa.String(length=64), nullable=True),
        sa.Column("hardware", sa.String(length=255), nullable=True),
        sa.Column("agent_version", sa.String(length=64), nullable=True),
        sa.Column("model_version", sa.String(length=64), nullable=True),
        sa.Column("cameras", _json(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("box_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("registered_at", _ts(), nullable=False),
        sa.Column("revoked_at", _ts(), nullable=True),
        sa.ForeignKeyConstraint(["pole_id"], ["poles.pole_id"], name=op.f("fk_registry_devices_pole_id_poles")),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_registry_devices")),
        sa.UniqueConstraint("box_fingerprint", name=op.f("uq_registry_devices_box_fingerprint")),
    )
    op.create_index("ix_registry_devices_pole_id", "registry_devices", ["pole_id"])
    op.create_table(
        "pole_history",
        sa.Column("id", _row_id(), autoincrement=True, nullable=False),
        sa.Column("at", _ts(), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("pole_id", sa.String(length=64), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("from_pole_id", sa.String(length=64), nullable=True),
        sa.Column("other_device_id", sa.String(length=64), nullable=True),
        sa.Column("actor", sa.String(length=120), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pole_history")),
    )
    op.create_index("ix_pole_history_pole_id_id", "pole_history", ["pole_id", "id"])
    op.create_index("ix_pole_history_device_id_id", "pole_history", ["device_id", "id"])
    op.create_table(
        "device_groups",
        sa.Column("group_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("group_id", name=op.f("pk_device_groups")),
    )
    op.create_table(
        "device_group_members",
        sa.Column("group_id", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"], ["device_groups.group_id"], name=op.f("fk_device_group_members_group_id_device_groups")
        ),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["registry_devices.device_id"],
            name=op.f("fk_device_group_members_device_id_registry_devices"),
        ),
        sa.PrimaryKeyConstraint("group_id", "device_id", name=op.f("pk_device_group_members")),
    )
    op.create_index("ix_device_group_members_device_id", "device_group_members", ["device_id"])
    op.create_table(
        "device_tags",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["registry_devices.device_id"], name=op.f("fk_device_tags_device_id_registry_devices")
        ),
        sa.PrimaryKeyConstraint("device_id", "tag", name=op.f("pk_device_tags")),
    )
    op.create_index("ix_device_tags_tag", "device_tags", ["tag"])
    op.create_table(
        "enrolment_codes",
        sa.Column("id", _row_id(), autoincrement=True, nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("pole_id", sa.String(length=64), nullable=False),
        sa.Column("site_id", sa.String(length=64), nullable=False),
        sa.Column("preset", _json(), nullable=True),
        sa.Column("created_by", sa.String(length=120), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("expires_at", _ts(), nullable=False),
        sa.Column("used_at", _ts(), nullable=True),
        sa.Column("box_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("device_id", sa.String(length=64), nullable=True),
        sa.Column("revoked_at", _ts(), nullable=True),
        sa.ForeignKeyConstraint(["pole_id"], ["poles.pole_id"], name=op.f("fk_enrolment_codes_pole_id_poles")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrolment_codes")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_enrolment_codes_code_hash")),
    )
    op.create_index("ix_enrolment_codes_pole_id", "enrolment_codes", ["pole_id"])


def downgrade() -> None:
    for index, table in (
        ("ix_enrolment_codes_pole_id", "enrolment_codes"),
        ("ix_device_tags_tag", "device_tags"),
        ("ix_device_group_members_device_id", "device_group_members"),
        ("ix_pole_history_device_id_id", "pole_history"),
        ("ix_pole_history_pole_id_id", "pole_history"),
        ("ix_registry_devices_pole_id", "registry_devices"),
        ("ix_poles_site_id_pole_id", "poles"),
    ):
        op.drop_index(index, table_name=table)
    for table in (
        "enrolment_codes", "device_tags", "device_group_members", "device_groups", "pole_history",
        "registry_devices", "poles", "sites",
    ):  # fmt: skip
        op.drop_table(table)
