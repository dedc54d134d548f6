"""Each device's newest health report's cameras, kept as a short signature beside the report.

Revision ID: 0070
Revises: 0060
Create Date: 2026-11-24

The fleet roll-up read the cameras out of every device's JSON report on every request (json_each /
jsonb_array_elements over 10,000 reports was most of its time, bench/registry.py); the ingest now
writes the signature with the report (camera_signature.py), and this
revision fills it in for the reports already stored, with the same SQL the roll-up used. The SQL is
spelled out here rather than imported, so that this migration does not move with the code.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0070"
down_revision: str | None = "0060"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# `camera_id<US>connected (1/0)<US>state` per camera (object) of the `cameras` list, joined by <RS>;
# NULL when there are none.
_SIGNATURE = {
    "sqlite": (
        "(SELECT group_concat(coalesce(json_extract(c.value, '$.camera_id'), '') || char(31) || "
        "coalesce(json_extract(c.value, '$.connected'), 0) || char(31) || "
        "coalesce(json_extract(c.value, '$.state'), ''), char(30)) "
        "FROM json_each(CASE WHEN json_type(devices.last_health, '$.cameras') = 'array' "
        "THEN json_extract(devices.last_health, '$.cameras') ELSE '[]' END) AS c WHERE c.type = 'object')"
    ),
    "postgresql": (
        "(SELECT string_agg(coalesce(c->>'camera_id', '') || chr(31) || "
        "CASE WHEN (c->>'connected') = 'true' THEN '1' ELSE '0' END || chr(31) || coalesce(c->>'state', ''), chr(30)) "
        "FROM jsonb_array_elements(CASE WHEN jsonb_typeof(devices.last_health->'cameras') = 'array' "
        "THEN devices.last_health->'cameras' ELSE '[]'::jsonb END) AS c WHERE jsonb_typeof(c) = 'object')"
    ),
}


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("camera_signature", sa.Text(), nullable=True))
    signature = _SIGNATURE.get(op.get_context().dialect.name)
    if signature is not None:
        op.execute(f"UPDATE devices SET camera_signature = {signature} WHERE last_health IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("camera_signature")
