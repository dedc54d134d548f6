"""The schema comes from the migrations, and the migrations match the ORM models."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import JSON, column, insert, inspect, select, table
from typer.testing import CliRunner

from polewatch.fleet_server import camera_signature, db
from polewatch.fleet_server.cli import app as cli
from polewatch.fleet_server.models import Base, Device


def test_migrated_schema_matches_the_models_and_downgrades_cleanly(database: str) -> None:
    engine = db.make_engine(database)
    try:
        db.upgrade(engine)
        assert db.current_revision(engine) == db.head_revision() == "0070"
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
            assert diff == [], diff
            if engine.dialect.name == "sqlite":
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.SQLITE_BUSY_TIMEOUT_MS
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
                # ids are the SSE resume cursor: SQLite must never hand out a deleted id again
                ddl = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'events'").scalar()
                assert "AUTOINCREMENT" in str(ddl)
            else:
                kind = conn.exec_driver_sql(
                    "SELECT data_type FROM information_schema.columns "
                    "WHERE table_name = 'events' AND column_name = 'id'"
                ).scalar()
                assert kind == "bigint"

        db.downgrade(engine, "base")
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        db.upgrade(engine)
        assert db.current_revision(engine) == db.head_revision()
    finally:
        engine.dispose()


def test_a_nested_sqlite_path_gets_its_folder(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'nested' / 'fleet.db'}")
    try:
        db.upgrade(engine)
        assert (tmp_path / "nested" / "fleet.db").is_file()
    finally:
        engine.dispose()


def test_migrations_render_for_postgresql() -> None:
    """The same migrations produce PostgreSQL DDL (offline mode: no server needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(db.MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", "postgresql://fleet@localhost/fleet")
    out = io.StringIO()
    cfg.stdout = out
    with redirect_stdout(out):
        command.upgrade(cfg, "head", sql=True)
    sql = out.getvalue()
    assert "CREATE TABLE events" in sql
    assert "id BIGSERIAL NOT NULL" in sql
    assert "last_health JSONB" in sql
    assert "TIMESTAMP WITH TIME ZONE" in sql


def test_migrate_command_creates_then_reports_up_to_date(database: str) -> None:
    url = database
    runner = CliRunner()
    first = runner.invoke(cli, ["migrate", "--database-url", url])
    assert first.exit_code == 0, first.output
    assert f"migrated from empty to revision {db.head_revision()}" in first.output
    again = runner.invoke(cli, ["migrate"], env={"POLEWATCH_DATABASE_URL": url})
    assert again.exit_code == 0, again.output
    assert f"already at revision {db.head_revision()}" in again.output


def test_the_camera_signature_of_reports_stored_before_0070_is_what_the_ingest_writes(database: str) -> None:
    """0070 fills devices.camera_signature in SQL for the reports already stored; the roll-up reads
    only that column, so the SQL must agree with registry_health.camera_signature, which the ingest
    uses from then on."""
    reports: dict[str, Any] = {
        "two-cameras": {
            "cameras": [
                {"camera_id": "cam1", "connected": True, "fps": 12.0},
                {"camera_id": "cam2", "connected": False, "state": "reconnecting"},
            ]
        },
        "state-down": {"cameras": [{"camera_id": "gate", "connected": True, "state": "down"}]},
        "no-cameras": {"cameras": []},
        "no-list": {"cpu_percent": 20.0},
        "not-a-list": {"cameras": {"camera_id": "cam1"}},
        "not-an-object": {"cameras": ["cam1", {"camera_id": "cam2", "connected": True}]},
    }
    engine = db.make_engine(database)
    try:
        db.upgrade(engine, "0060")
        now = datetime.now(timezone.utc)
        devices = table("devices", column("device_id"), column("first_seen"), column("last_seen"),
                        column("online"), column("last_health", JSON()))  # fmt: skip
        with engine.begin() as conn:
            conn.execute(insert(devices), [
                {"device_id": name, "first_seen": now, "last_seen": now, "online": True, "last_health": report}
                for name, report in reports.items()
            ])  # fmt: skip
        db.upgrade(engine)
        with engine.connect() as conn:
            stored = dict(conn.execute(select(Device.device_id, Device.camera_signature)).all())
        assert stored == {name: camera_signature.of(report.get("cameras")) for name, report in reports.items()}
        assert stored["two-cameras"] == "cam1\x1f1\x1f\x1ecam2\x1f0\x1freconnecting"
        assert stored["no-cameras"] is None and stored["not-a-list"] is None
        assert stored["not-an-object"] == "cam2\x1f1\x1f"
    finally:
        engine.dispose()
