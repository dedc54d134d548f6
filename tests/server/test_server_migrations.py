"""The schema comes from the migrations, and the migrations match the ORM models."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from typer.testing import CliRunner

from polewatch.fleet_server import db
from polewatch.fleet_server.cli import app as cli
from polewatch.fleet_server.models import Base


def test_migrated_schema_matches_the_models_and_downgrades_cleanly(database: str) -> None:
    engine = db.make_engine(database)
    try:
        db.upgrade(engine)
        assert db.current_revision(engine) == db.head_revision() == "0060"
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
