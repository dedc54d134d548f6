"""A private PostgreSQL server for the tests, from the server binaries already on the machine.

`initdb` into a fresh temp dir, `postgres` on a random loopback port with its unix socket in that
dir, trust authentication for one superuser, durability switched off (a test database that dies
with the machine loses nothing anyone needs). Each test then gets its own database on it
(`create_database`), so tests never see each other's rows and no server start is paid per test.

PostgreSQL refuses to run as root, and CI runs the suite as root. Then the server runs as an
unprivileged account (`postgres` when Debian's package made one, else `nobody`) through
subprocess's `user=`/`group=`, and its temp dir is made outside pytest's private (0700, root-owned)
tmp tree and handed to that account, because the server must be able to reach its data directory.
"""

from __future__ import annotations

import contextlib
import glob
import grp
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .ports import free_port
from .required import STRICT

SUPERUSER = "polewatch"
PREFERRED_MAJOR = "15"
START_TIMEOUT_S = 30


def find_bindir() -> Path | None:
    """The folder with initdb and postgres: Debian's /usr/lib/postgresql/<major>/bin (15 first),
    else whatever `pg_config --bindir` names, else initdb on the PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: (PREFERRED_MAJOR not in p, p))
    if candidates:
        return Path(candidates[0]).parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def require_bindir() -> Path:
    """The PostgreSQL binaries, or skip (fail under POLEWATCH_REQUIRE_ALL=1) with how to get them."""
    bindir = find_bindir()
    if bindir is not None and (bindir / "postgres").exists():
        return bindir
    message = "PostgreSQL server binaries (initdb, postgres) are not installed: apt-get install postgresql"
    if STRICT:
        pytest.fail(message + " (POLEWATCH_REQUIRE_ALL=1: missing parts fail in CI)")
    pytest.skip(message)


def _run_as() -> tuple[int, int] | None:
    """The (uid, gid) to run the server as when we are root; None when we are not."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
    return 65534, grp.getgrnam("nogroup").gr_gid


@dataclass
class PostgresServer:
    bindir: Path
    root: Path
    port: int
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None
    databases: list[str] = field(default_factory=list)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True) as c:
            c.execute(sql)  # test-owned, generated names only

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.databases:
            self.databases.remove(name)

    def start(self) -> None:
        owner = _run_as()
        uid, gid = owner if owner else (None, None)
        if not self.datadir.exists():
            subprocess.run(
                [str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", SUPERUSER, "--auth=trust",
                 "-E", "UTF8", "--no-locale", "--no-sync"],
                check=True, capture_output=True, cwd=self.root, user=uid, group=gid,
            )  # fmt: skip
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(self.bindir / "postgres"), "-D", str(self.datadir), "-p", str(self.port),
             "-k", str(self.root), "-c", f"listen_addresses={self.host}",
             # A throwaway test server: no durability, room for several replicas' pools.
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=200"],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.root, user=uid, group=gid,
        )  # fmt: skip
        self._wait_ready()

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                tail = self.log_path.read_text()[-2000:]
                raise RuntimeError(f"postgres exited with {self.proc.returncode}: {tail}")
            try:
                with psycopg.connect(
                    host=self.host, port=self.port, user=SUPERUSER, dbname="postgres", connect_timeout=2
                ):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"postgres did not accept connections; see {self.log_path}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): open sessions are ended, nothing is written back."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start() -> PostgresServer:
    """initdb + postgres in a new temp dir; skips (or fails under REQUIRE_ALL) without the binaries."""
    bindir = require_bindir()
    pytest.importorskip("psycopg", reason="the PostgreSQL driver comes with the server extra (psycopg)")
    root = Path(tempfile.mkdtemp(prefix="polewatch-pg-"))
    owner = _run_as()
    if owner is not None:
        os.chown(root, *owner)
    server = PostgresServer(bindir=bindir, root=root, port=free_port())
    try:
        server.start()
    except BaseException:
        server.destroy()
        raise
    return server
