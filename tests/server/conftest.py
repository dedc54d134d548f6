"""Fixtures of the server suite: every test that stores something runs on both databases.

`database` is parametrised: SQLite (a file in the test's tmp dir) and PostgreSQL (a fresh database
on one private server per test session, marked `postgres`). `-m "not postgres"` runs the SQLite half
only; without PostgreSQL's binaries the PostgreSQL half skips, or fails under POLEWATCH_REQUIRE_ALL=1.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support import postgres


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[postgres.PostgresServer]:
    server = postgres.start()
    yield server
    server.destroy()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQLAlchemy URL of an empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.db'}"
        return
    server: postgres.PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create_database()
    yield url
    server.drop_database(url)
