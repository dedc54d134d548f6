"""The fleet server's tables, as typed SQLAlchemy 2 ORM models.

One schema for SQLite (the embedded default) and PostgreSQL (production), so only portable types
are used, with per-dialect variants where one engine has a better native type (JSONB, BIGINT
identity). Timestamps are stored in UTC and always come back timezone-aware, whatever the engine.
The migrations in migrations/versions must produce exactly this metadata; a test compares them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, validates
from sqlalchemy.types import TypeEngine

from .camera_signature import of as camera_signature_of

# Deterministic constraint names, so a later migration can drop or alter them by name on both
# engines (SQLite batch mode needs names to find them).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Row ids that the console uses as SSE cursors must only ever grow: BIGINT on PostgreSQL, and on
# SQLite an INTEGER PRIMARY KEY (the rowid) declared AUTOINCREMENT so deleted ids are never reused.
RowId = BigInteger().with_variant(Integer(), "sqlite")
JsonDoc = JSON().with_variant(JSONB(), "postgresql")


class _SqliteUtcText(sqlite.DATETIME):
    """SQLite's DATETIME, bound as the text UtcDateTime has already formatted (see there)."""

    def bind_processor(self, dialect: Dialect) -> None:
        return None

    def literal_processor(self, dialect: Dialect) -> Callable[[str], str]:
        return lambda text: f"'{text}'"  # digits, '-', ':', '.' and a space: nothing to escape


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that is written as UTC and read back timezone-aware on every engine.

    SQLite has no time zone type and returns naive values; without this the API would mix naive and
    aware datetimes depending on the engine.

    On SQLite the value is formatted here, in SQLAlchemy's own DATETIME storage format, instead of
    by the DATETIME type after this: one call per value rather than three, and the ingest binds
    several timestamps per message (bench/ingest.py).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(_SqliteUtcText())  # type: ignore[no-untyped-call]
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | str | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the fleet server stores aware UTC times only")
        utc = value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            # "YYYY-MM-DD HH:MM:SS.ffffff", the offset cut off: what sqlite.DATETIME stores and reads.
            return utc.isoformat(" ", "microseconds")[:26]
        return utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Device(Base):
    """One box on a pole, as last heard from. Created by the first message it sends."""

    __tablename__ = "devices"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    first_seen: Mapped[datetime] = mapped_column(UtcDateTime())
    last_seen: Mapped[datetime] = mapped_column(UtcDateTime(), doc="Server time of the last message.")
    online: Mapped[bool] = mapped_column(Boolean(), default=False)
    presence_reason: Mapped[str | None] = mapped_column(String(200), default=None)
    agent_version: Mapped[str | None] = mapped_column(String(64), default=None)
    last_presence_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)
    last_health: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc, default=None)
    last_health_at: Mapped[datetime | None] = mapped_column(
        UtcDateTime(), default=None, doc="sent_at of the health in last_health."
    )
    camera_signature: Mapped[str | None] = mapped_column(
        Text(), default=None, doc="last_health's cameras, for the roll-up (camera_signature.py)."
    )

    @validates("last_health")
    def _keep_camera_signature(self, _key: str, report: dict[str, Any] | None) -> dict[str, Any] | None:
        # Set with the report, so that no writer can leave the roll-up reading an older one.
        self.camera_signature = camera_signature_of(report.get("cameras") if isinstance(report, dict) else None)
        return report


class Event(Base):
    """One detection message. A tracked object (event_id) has several rows: start, updates, end."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_device_id_id", "device_id", "id"),
        Index("ix_events_label_id", "label", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(36), unique=True)
    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("devices.device_id"))
    seq: Mapped[int] = mapped_column(BigInteger())
    camera_id: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(80), doc="Track id: one object from start to end.")
    phase: Mapped[str] = mapped_column(String(8))
    label: Mapped[str] = mapped_column(String(64))
    score: Mapped[float] = mapped_column(Float())
    x1: Mapped[float] = mapped_column(Float())
    y1: Mapped[float] = mapped_column(Float())
    x2: Mapped[float] = mapped_column(Float())
    y2: Mapped[float] = mapped_column(Float())
    frame_width: Mapped[int] = mapped_column(Integer())
    frame_height: Mapped[int] = mapped_column(Integer())
    frame_time: Mapped[datetime] = mapped_column(UtcDateTime())
    sent_at: Mapped[datetime] = mapped_column(UtcDateTime())
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())


class HealthSample(Base):
    """Every health message, for history and charts; devices.last_health holds the newest."""

    __tablename__ = "health_samples"
    __table_args__ = (Index("ix_health_samples_device_id_sent_at", "device_id", "sent_at"),)

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(36), unique=True)
    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("devices.device_id"))
    seq: Mapped[int] = mapped_column(BigInteger())
    sent_at: Mapped[datetime] = mapped_column(UtcDateTime())
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())
    body: Mapped[dict[str, Any]] = mapped_column(JsonDoc)


class HealthRollup(Base):
    """Health samples of one device over one time bucket, once the raw samples have aged out.

    `bucket_s` is the tier: 300 (5-minute buckets, after the raw window) or 3600 (hourly, after the
    5-minute window). `stats` holds, per metric, the count, sum, min and max of the samples that
    had it: every one of those merges exactly, so a late sample or a second pass adds to a bucket
    without re-reading what was folded into it. JSON rather than a column per statistic because
    the metric set follows the health message, which grows.
    """

    __tablename__ = "health_rollups"
    __table_args__ = (
        UniqueConstraint("device_id", "bucket_s", "bucket_start", name="uq_health_rollups_bucket"),
        Index("ix_health_rollups_bucket_s_bucket_start", "bucket_s", "bucket_start"),
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("devices.device_id"))
    bucket_s: Mapped[int] = mapped_column(Integer(), doc="Bucket length: 300 or 3600 seconds.")
    bucket_start: Mapped[datetime] = mapped_column(UtcDateTime(), doc="By the device's clock (sent_at).")
    samples: Mapped[int] = mapped_column(Integer())
    stats: Mapped[dict[str, Any]] = mapped_column(JsonDoc, doc="metric -> {n, sum, min, max}.")


class MaintenanceLease(Base):
    """One row per background job that must not run twice at once across replicas.

    Each pass of the job starts its transaction by updating its row: the row lock (PostgreSQL) or
    the write lock (SQLite) holds any other replica's pass until this one commits, and the row
    says when the job last ran and what it did.
    """

    __tablename__ = "maintenance_leases"

    job: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(120), default=None, doc="Who ran the last pass.")
    last_run_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)
    last_result: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc, default=None)


class PresenceChange(Base):
    """Every presence message: the online/offline history, and the dedup key for presence.

    Retained presence is delivered again on every (re)subscribe; the unique message id is what
    makes that replay a no-op.
    """

    __tablename__ = "presence_changes"
    __table_args__ = (Index("ix_presence_changes_device_id_id", "device_id", "id"),)

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(36), unique=True)
    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("devices.device_id"))
    seq: Mapped[int] = mapped_column(BigInteger())
    state: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str | None] = mapped_column(String(200))
    agent_version: Mapped[str | None] = mapped_column(String(64))
    sent_at: Mapped[datetime] = mapped_column(UtcDateTime())
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())


class CameraHealthEvent(Base):
    """Every camera_health message: the start and the end of each condition of each camera.

    A start and its end share (device_id, camera_id, condition, since); a start without its end is
    a condition still open ("pole 17 camera covered since 02:14").
    """

    __tablename__ = "camera_health_events"
    __table_args__ = (
        Index("ix_camera_health_events_device_id_id", "device_id", "id"),
        Index("ix_camera_health_events_episode", "device_id", "camera_id", "condition", "since"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(36), unique=True)
    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("devices.device_id"))
    seq: Mapped[int] = mapped_column(BigInteger())
    camera_id: Mapped[str] = mapped_column(String(64))
    condition: Mapped[str] = mapped_column(String(16))
    phase: Mapped[str] = mapped_column(String(8))
    since: Mapped[datetime] = mapped_column(UtcDateTime())
    until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    variant: Mapped[str | None] = mapped_column(String(16))
    value: Mapped[float | None] = mapped_column(Float())
    threshold: Mapped[float | None] = mapped_column(Float())
    detail: Mapped[str | None] = mapped_column(String(300))
    sent_at: Mapped[datetime] = mapped_column(UtcDateTime())
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ReceivedSeqRange(Base):
    """Sequence numbers received from a device, merged into runs first..last.

    The server's half of gap accounting: together with the ranges the device says it gave up
    (`given_up_ranges`), what is in neither is still on its way. Runs, not one row per message, so a
    device's whole history is a handful of rows and a gap report reads only those.
    """

    __tablename__ = "received_seq_ranges"

    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("devices.device_id"), primary_key=True)
    first: Mapped[int] = mapped_column(BigInteger(), primary_key=True, autoincrement=False)
    last: Mapped[int] = mapped_column(BigInteger())


class GivenUpReport(Base):
    """Every given_up message: the dedup key for them, and when each report came."""

    __tablename__ = "given_up_reports"
    __table_args__ = (Index("ix_given_up_reports_device_id_id", "device_id", "id"),)

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(36), unique=True)
    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("devices.device_id"))
    seq: Mapped[int] = mapped_column(BigInteger())
    ranges: Mapped[int] = mapped_column(Integer(), doc="How many ranges the report carried.")
    sent_at: Mapped[datetime] = mapped_column(UtcDateTime())
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())


class GivenUpRange(Base):
    """Sequence numbers a device will never send: evicted, expired, dropped, presence not queued, or
    lost with a damaged outbox. A range can be reported more than once; it is stored once."""

    __tablename__ = "given_up_ranges"
    __table_args__ = (UniqueConstraint("device_id", "first", "last", "reason", name="uq_given_up_ranges_range"),)

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("devices.device_id"))
    first: Mapped[int] = mapped_column(BigInteger())
    last: Mapped[int] = mapped_column(BigInteger())
    priority: Mapped[str | None] = mapped_column(String(16), doc="Outbox class; null when the device did not know.")
    reason: Mapped[str] = mapped_column(String(16))


class DeviceClock(Base):
    """The clock skew the server sees for a device: server receive time minus the device's sent_at,
    on a message that is sent the moment it is made (the online presence of each connection)."""

    __tablename__ = "device_clocks"

    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("devices.device_id"), primary_key=True)
    skew_s: Mapped[float] = mapped_column(Float(), doc="Positive: the device's clock is behind the server's.")
    measured_at: Mapped[datetime] = mapped_column(UtcDateTime(), doc="Server time of the measurement.")
    message_id: Mapped[str] = mapped_column(String(36), doc="The message it was measured on.")


# --- people and rights ---------------------------------------------------------------------------


class User(Base):
    """A person who signs in to the console or the API. Never deleted (the audit log names them):
    `disabled` ends their access."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str | None] = mapped_column(String(200), default=None)
    role: Mapped[str] = mapped_column(String(16))
    sites: Mapped[list[str]] = mapped_column(JsonDoc, doc="Technicians: the sites they are assigned to.")
    password_hash: Mapped[str] = mapped_column(String(255))
    disabled: Mapped[bool] = mapped_column(Boolean(), default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class LoginSession(Base):
    """A console sign-in: the cookie carries a random token, the table only its SHA-256."""

    __tablename__ = "login_sessions"
    __table_args__ = (Index("ix_login_sessions_user_id", "user_id"),)

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(RowId, ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)


class ApiToken(Base):
    """A machine's credential (Authorization: Bearer ...), with its own role; only its SHA-256 is kept."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(16))
    sites: Mapped[list[str]] = mapped_column(JsonDoc)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[str] = mapped_column(String(100), doc="Who made it, as the audit log names them.")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)


class AuditEntry(Base):
    """One change made by a person, a token or the command line: who, what, when, before/after.

    Append-only: no code path updates or deletes a row, and the migration adds triggers that make
    the database itself refuse UPDATE and DELETE on this table.
    """

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_actor_id", "actor", "id"),
        Index("ix_audit_log_target_id", "target_type", "target_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    actor: Mapped[str] = mapped_column(String(120), doc="user:<name>, token:<name> or cli:<os user>.")
    actor_role: Mapped[str | None] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64), doc="e.g. user.create, token.revoke, session.login.")
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(120))
    before: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    after: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    client: Mapped[str | None] = mapped_column(String(64), doc="The client's address, when over HTTP.")


# --- configuration (fleet -> group -> device documents) and commands ------------------------------


class ConfigLayer(Base):
    """One version of one configuration layer: the fleet's, a group's or a device's document.

    A change never edits a row: it adds the next version, so the history is the table and a
    rollback is a new version carrying an earlier one's document.
    """

    __tablename__ = "config_layers"
    __table_args__ = (
        UniqueConstraint("scope", "target", "version", name="uq_config_layers_version"),
        Index("ix_config_layers_scope_target_id", "scope", "target", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(8), doc="fleet, group or device.")
    target: Mapped[str] = mapped_column(String(64), doc="The group or device id; empty for the fleet.")
    version: Mapped[int] = mapped_column(Integer())
    document: Mapped[dict[str, Any]] = mapped_column(JsonDoc)
    comment: Mapped[str | None] = mapped_column(String(500))
    rolled_back_from: Mapped[int | None] = mapped_column(Integer(), doc="Rollback: the version it copies.")
    created_by: Mapped[str] = mapped_column(String(120))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ConfigGroupMember(Base):
    """Which configuration group a device is in (one at most): the group layer it takes."""

    __tablename__ = "config_group_members"
    __table_args__ = (Index("ix_config_group_members_group_name", "group_name", "device_id"),)

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    group_name: Mapped[str] = mapped_column(String(64))


class DeviceConfig(Base):
    """Per device: the effective document last computed and published, and what the box said of it."""

    __tablename__ = "device_configs"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    desired_version: Mapped[int] = mapped_column(Integer(), doc="Only goes up; the version the box is sent.")
    document: Mapped[dict[str, Any]] = mapped_column(JsonDoc, doc="The effective (merged) document.")
    computed_at: Mapped[datetime] = mapped_column(UtcDateTime())
    published_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), doc="Null: not on the broker yet.")
    publish_error: Mapped[str | None] = mapped_column(String(300))
    down_seq: Mapped[int] = mapped_column(BigInteger(), doc="The server's counter of down messages to this box.")
    applied_version: Mapped[int | None] = mapped_column(Integer(), doc="Per the box's newest config report.")
    report_version: Mapped[int | None] = mapped_column(Integer(), doc="The version the newest report is about.")
    report_status: Mapped[str | None] = mapped_column(String(8))
    report_sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    refusal_version: Mapped[int | None] = mapped_column(Integer())
    refusal_reason: Mapped[str | None] = mapped_column(String(2000))
    refusal_field: Mapped[str | None] = mapped_column(String(200))
    refusal_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class ConfigReportRow(Base):
    """Every config_report message a box sent: applied or refused, and why."""

    __tablename__ = "config_reports"
    __table_args__ = (Index("ix_config_reports_device_id_id", "device_id", "id"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(36), unique=True)
    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("devices.device_id"))
    seq: Mapped[int] = mapped_column(BigInteger())
    version: Mapped[int] = mapped_column(Integer())
    status: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str | None] = mapped_column(String(2000))
    field: Mapped[str | None] = mapped_column(String(200))
    applied_version: Mapped[int | None] = mapped_column(Integer())
    changed: Mapped[list[str]] = mapped_column(JsonDoc)
    sent_at: Mapped[datetime] = mapped_column(UtcDateTime())
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())


class DeviceCommand(Base):
    """A command sent to a box, and its outcome from the box's newest ack."""

    __tablename__ = "device_commands"
    __table_args__ = (Index("ix_device_commands_device_id_id", "device_id", "id"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    command_id: Mapped[str] = mapped_column(String(80), unique=True)
    device_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(64))
    args: Mapped[dict[str, Any]] = mapped_column(JsonDoc)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_by: Mapped[str] = mapped_column(String(120))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    published_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    publish_error: Mapped[str | None] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(8), doc="sent (no ack yet), done, refused or failed.")
    reason: Mapped[str | None] = mapped_column(String(2000))
    result: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    acked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class CommandAckRow(Base):
    """Every command_ack message (a repeated ack is a row too: it shows the box was asked again)."""

    __tablename__ = "command_acks"
    __table_args__ = (Index("ix_command_acks_device_id_id", "device_id", "id"),)

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(36), unique=True)
    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("devices.device_id"))
    seq: Mapped[int] = mapped_column(BigInteger())
    command_id: Mapped[str] = mapped_column(String(80))
    status: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str | None] = mapped_column(String(2000))
    result: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    repeated: Mapped[bool] = mapped_column(Boolean())
    sent_at: Mapped[datetime] = mapped_column(UtcDateTime())
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())


# --- registry and enrolment ------------------------------------------------------------------------


class Site(Base):
    """A place the city manages as one (a district's command area, a park): poles belong to one site.

    Keyed by a short slug that people type (technicians' `sites` lists name these)."""

    __tablename__ = "sites"

    site_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    address: Mapped[str | None] = mapped_column(String(300), default=None)
    district: Mapped[str | None] = mapped_column(String(100), default=None, doc="Kecamatan.")
    kelurahan: Mapped[str | None] = mapped_column(String(100), default=None)
    latitude: Mapped[float | None] = mapped_column(Float(), default=None)
    longitude: Mapped[float | None] = mapped_column(Float(), default=None)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Pole(Base):
    """A physical pole: it stays when boxes come and go, so config and history hang on it."""

    __tablename__ = "poles"
    __table_args__ = (Index("ix_poles_site_id_pole_id", "site_id", "pole_id"),)

    pole_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    site_id: Mapped[str] = mapped_column(String(64), ForeignKey("sites.site_id"))
    name: Mapped[str] = mapped_column(String(200))
    address: Mapped[str | None] = mapped_column(String(300), default=None)
    district: Mapped[str | None] = mapped_column(String(100), default=None)
    kelurahan: Mapped[str | None] = mapped_column(String(100), default=None)
    latitude: Mapped[float | None] = mapped_column(Float(), default=None)
    longitude: Mapped[float | None] = mapped_column(Float(), default=None)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class RegisteredDevice(Base):
    """A box the registry knows (enrolled or entered by ops), with the pole it hangs on now.

    Separate from `devices` (which the ingest creates from whatever it hears), so a box can be
    registered before its first message and a message from an unregistered id never invents one."""

    __tablename__ = "registry_devices"
    __table_args__ = (Index("ix_registry_devices_pole_id", "pole_id"),)

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pole_id: Mapped[str | None] = mapped_column(String(64), ForeignKey("poles.pole_id"), default=None)
    hardware: Mapped[str | None] = mapped_column(String(255), default=None)
    agent_version: Mapped[str | None] = mapped_column(String(64), default=None)
    model_version: Mapped[str | None] = mapped_column(String(64), default=None)
    cameras: Mapped[list[str]] = mapped_column(JsonDoc, doc="Camera ids the box is set up with.")
    status: Mapped[str] = mapped_column(String(16), doc="active | revoked")
    box_fingerprint: Mapped[str | None] = mapped_column(String(64), unique=True, default=None)
    registered_at: Mapped[datetime] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)
    # Known from enrolment (migration 0060); boxes enrolled before it have none and must enrol again
    # before their credentials can be rotated (a password is sealed to this key, a certificate signed for it).
    box_public_key: Mapped[str | None] = mapped_column(Text(), default=None, doc="PEM SubjectPublicKeyInfo.")
    credential_kind: Mapped[str | None] = mapped_column(String(16), default=None, doc="password | certificate")
    broker_login: Mapped[str | None] = mapped_column(String(120), default=None, doc="Its broker username now.")
    certificate_serial: Mapped[str | None] = mapped_column(String(40), default=None, doc="Hex, of the one in use.")


class PoleHistoryEntry(Base):
    """What happened on a pole and to a device: installed, moved, removed, replaced, revoked.

    Kept forever: "which box was on pole 17 last March" is a question the sanction process asks."""

    __tablename__ = "pole_history"
    __table_args__ = (
        Index("ix_pole_history_pole_id_id", "pole_id", "id"),
        Index("ix_pole_history_device_id_id", "device_id", "id"),
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    device_id: Mapped[str] = mapped_column(String(64))
    pole_id: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))
    from_pole_id: Mapped[str | None] = mapped_column(String(64), default=None)
    other_device_id: Mapped[str | None] = mapped_column(String(64), default=None, doc="replaced: the old box.")
    actor: Mapped[str] = mapped_column(String(120))


class DeviceGroup(Base):
    __tablename__ = "device_groups"

    group_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(String(500), default=None)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class DeviceGroupMember(Base):
    __tablename__ = "device_group_members"
    __table_args__ = (Index("ix_device_group_members_device_id", "device_id"),)

    group_id: Mapped[str] = mapped_column(String(64), ForeignKey("device_groups.group_id"), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("registry_devices.device_id"), primary_key=True)


class DeviceTag(Base):
    __tablename__ = "device_tags"
    __table_args__ = (Index("ix_device_tags_tag", "tag"),)

    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("registry_devices.device_id"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)


class EnrolmentCode(Base):
    """A one-time code for one pole. Only the SHA-256 of the code is stored: a database dump gives
    no one a usable code."""

    __tablename__ = "enrolment_codes"
    __table_args__ = (Index("ix_enrolment_codes_pole_id", "pole_id"),)

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    pole_id: Mapped[str] = mapped_column(String(64), ForeignKey("poles.pole_id"))
    site_id: Mapped[str] = mapped_column(String(64))
    preset: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc, default=None)
    created_by: Mapped[str] = mapped_column(String(120))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)
    box_fingerprint: Mapped[str | None] = mapped_column(String(64), default=None)
    device_id: Mapped[str | None] = mapped_column(String(64), default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)


# --- alerts for the command centre -------------------------------------------------------------------


class Agency(Base):
    """Who alerts go to: police, fire brigade, the city's cleaning service (littering)...

    `format` says how they take alerts: `json` (our signed webhook body) or `cap` (OASIS CAP 1.2
    XML, what emergency services' systems read). `secret` signs every delivery (HMAC-SHA256).
    """

    __tablename__ = "agencies"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    webhook_url: Mapped[str | None] = mapped_column(String(500))
    format: Mapped[str] = mapped_column(String(8), doc="json or cap.")
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class RoutingRule(Base):
    """One routing rule: every condition that is set must match; the lowest `position` wins."""

    __tablename__ = "routing_rules"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    position: Mapped[int] = mapped_column(Integer())
    agency_id: Mapped[int] = mapped_column(RowId, ForeignKey("agencies.id"))
    event_type: Mapped[str | None] = mapped_column(String(80), doc="Exact, or a prefix ending in '*'.")
    rule_id: Mapped[str | None] = mapped_column(String(64), doc="The agent's zone/line rule id.")
    site: Mapped[str | None] = mapped_column(String(64), doc="A device id prefix (pole ids start with the site).")
    device_id: Mapped[str | None] = mapped_column(String(64))
    from_minute: Mapped[int | None] = mapped_column(Integer(), doc="Minutes after local midnight, inclusive.")
    to_minute: Mapped[int | None] = mapped_column(Integer(), doc="Exclusive; may be below from_minute (overnight).")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Alert(Base):
    """One event from the edge that an operator must look at, and where it is in its lifecycle."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index("ix_alerts_status_id", "status", "id"),
        Index("ix_alerts_device_id_id", "device_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(36), unique=True, doc="The edge message it came from.")
    source: Mapped[str] = mapped_column(String(16), doc="detection, rule_event or camera_health.")
    event_type: Mapped[str] = mapped_column(String(80), doc="e.g. detection:person, zone:enter, camera:covered.")
    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("devices.device_id"))
    camera_id: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str | None] = mapped_column(String(80), doc="The track or object id at the edge.")
    rule_id: Mapped[str | None] = mapped_column(String(64))
    label: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JsonDoc, doc="The message body, as received.")
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime(), doc="By the device's clock.")
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())
    status: Mapped[str] = mapped_column(String(16))
    routed_agency_id: Mapped[int | None] = mapped_column(RowId, ForeignKey("agencies.id"))
    agency_id: Mapped[int | None] = mapped_column(RowId, ForeignKey("agencies.id"))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class AlertStep(Base):
    """One step of an alert's life (created, acknowledged, assigned, resolved, false_alarm).

    Its id is the live stream's cursor: a console that reconnects replays every step after the
    last one it saw, so it misses neither a new alert nor a colleague's acknowledgement.
    """

    __tablename__ = "alert_steps"
    __table_args__ = (Index("ix_alert_steps_alert_id_id", "alert_id", "id"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(RowId, ForeignKey("alerts.id"))
    step: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), doc="The alert's status after this step.")
    actor: Mapped[str] = mapped_column(String(120), doc="user:<name>, token:<name>, or edge:<device> for created.")
    agency_id: Mapped[int | None] = mapped_column(RowId)
    note: Mapped[str | None] = mapped_column(String(500))
    at: Mapped[datetime] = mapped_column(UtcDateTime())


class Delivery(Base):
    """One alert sent to one agency: attempts so far, and the outcome. `dead` ones wait for an operator."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (Index("ix_alert_deliveries_state_id", "state", "id"),)

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(RowId, ForeignKey("alerts.id"))
    agency_id: Mapped[int] = mapped_column(RowId, ForeignKey("agencies.id"))
    state: Mapped[str] = mapped_column(String(12), doc="pending, delivered or dead.")
    attempts: Mapped[int] = mapped_column(Integer())
    last_error: Mapped[str | None] = mapped_column(String(300))
    last_status: Mapped[int | None] = mapped_column(Integer())
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class AlertSnapshot(Base):
    """A picture the agent sent with a detection event (`snapshot` kind): evidence for its alert.

    Linked to alerts by (device_id, camera_id, event_id) rather than by a key, because a snapshot
    may arrive before its detection (separate outbox classes) or for an event that raised no alert.
    """

    __tablename__ = "alert_snapshots"
    __table_args__ = (
        Index("ix_alert_snapshots_event", "device_id", "camera_id", "event_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(36), unique=True)
    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("devices.device_id"))
    seq: Mapped[int] = mapped_column(BigInteger())
    camera_id: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(80))
    phase: Mapped[str] = mapped_column(String(8))
    label: Mapped[str] = mapped_column(String(64))
    score: Mapped[float] = mapped_column(Float())
    box: Mapped[dict[str, Any]] = mapped_column(JsonDoc)
    width: Mapped[int] = mapped_column(Integer())
    height: Mapped[int] = mapped_column(Integer())
    redactions: Mapped[list[str]] = mapped_column(JsonDoc)
    jpeg: Mapped[bytes] = mapped_column(LargeBinary())
    sha256: Mapped[str] = mapped_column(String(64))
    frame_time: Mapped[datetime] = mapped_column(UtcDateTime())
    sent_at: Mapped[datetime] = mapped_column(UtcDateTime())
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())


class CredentialRotation(Base):
    """One rotation of a box's broker credential: pending until the box acks from the new one.

    The old credential stays valid while pending (a box offline during the rotation is not locked out);
    completed means the old login was deleted or the old certificate listed on the CRL; failed and
    expired mean the new one was withdrawn and the old one is still the box's."""

    __tablename__ = "credential_rotations"
    __table_args__ = (Index("ix_credential_rotations_device_id_id", "device_id", "id"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("registry_devices.device_id"))
    kind: Mapped[str] = mapped_column(String(16), doc="password | certificate")
    state: Mapped[str] = mapped_column(String(16), doc="pending | completed | failed | expired")
    command_id: Mapped[str] = mapped_column(String(80), unique=True)
    requested_by: Mapped[str] = mapped_column(String(120))
    requested_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), default=None)
    reason: Mapped[str | None] = mapped_column(String(2000), default=None)
    old_login: Mapped[str | None] = mapped_column(String(120), default=None)
    new_login: Mapped[str | None] = mapped_column(String(120), default=None)
    old_serial: Mapped[str | None] = mapped_column(String(40), default=None)
    new_serial: Mapped[str | None] = mapped_column(String(40), default=None)
