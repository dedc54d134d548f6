"""Engines, sessions and schema migrations.

SQLite is tuned for one writer and many readers in one process: WAL so the API reads while the
ingest writes, a busy timeout so a second process (`polewatch server migrate` beside a running
server) waits instead of failing, foreign keys on. PostgreSQL needs none of that.

Migrations are Alembic's, run from code (`upgrade`) at every start and by the `migrate` command, so
a fresh machine and an upgraded one end up with the same schema without anyone running `alembic`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

PACKAGE_DIR = Path(__file__).resolve().parent
MIGRATIONS_DIR = PACKAGE_DIR / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 10_000

log = logging.getLogger(__name__)


def _is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def _sqlite_file(url: URL) -> Path | None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _sqlite_pragmas(busy_timeout_ms: int) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            # NORMAL is durable across application crashes in WAL mode; only a power cut can lose
            # the last transactions, and the broker redelivers what we had not acknowledged yet.
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    return on_connect


def make_engine(database_url: str, *, sqlite_busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS, **kwargs: Any) -> Engine:
    """An engine for `database_url`; for SQLite also creates the file's folder and sets WAL mode."""
    url = make_url(database_url)
    if _is_sqlite(url):
        path = _sqlite_file(url)
        if path is None:
            raise ValueError(
                f"{database_url!r}: an in-memory SQLite database cannot be shared by the ingest and "
                "the API threads; use a file"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"check_same_thread": False, "timeout": sqlite_busy_timeout_ms / 1000}
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas(sqlite_busy_timeout_ms))
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: rows are turned into API models after the commit that wrote them.
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine | None = None) -> Config:
    """Alembic config pointing at the packaged migrations; the engine travels as an attribute,
    so a password in the URL never passes through configparser interpolation."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (default: the newest)."""
    before = current_revision(engine)
    command.upgrade(alembic_config(engine), revision)
    after = current_revision(engine)
    if before != after:
        log.info("database migrated", extra={"from_revision": before, "to_revision": after})


def downgrade(engine: Engine, revision: str) -> None:
    command.downgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def safe_url(database_url: str) -> str:
    """The URL with any password hidden, for logs and console output."""
    return make_url(database_url).render_as_string(hide_password=True)
