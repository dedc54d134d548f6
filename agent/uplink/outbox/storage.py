"""Opening the database: pragmas, schema and its migration, loading the counters, the write-ahead log."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from collections.abc import Mapping
from datetime import datetime, timezone

from ..priority import Priority, priority_of
from .corruption import _Corruption, _Salvage
from .errors import OutboxError, _Damaged, _StorageError
from .ledger import SEQ_RESERVE
from .schema import (
    _COUNTERS,
    _LEDGER_DDL,
    _META_DDL,
    _TABLE_DDL,
    _VIEW_DDL,
    SCHEMA_VERSION,
    _counter_key,
    _table,
    _zero,
)

log = logging.getLogger("polewatch.agent.outbox")


class _Storage(_Corruption):
    """The SQLite file: opened, checked, migrated, loaded, checkpointed."""

    def _open(self) -> sqlite3.Connection:
        """Open or create the database. A damaged file is moved aside and replaced by a new one."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._storage_error(exc) from exc
        try:
            return self._connect()
        except _Damaged as damage:
            aside = self._move_aside()
            salvage = self._salvage(aside)
            log.error(
                "outbox database damaged: moved aside, starting a new one",
                extra={"path": str(self.path), "moved_to": str(aside), "problem": str(damage),
                       "salvaged_next_seq": salvage.next_seq},
            )
            floor = salvage.next_seq
            if floor is None:
                # Nothing readable: jump to a value no earlier message can have had (see docs/outbox.md).
                floor = int(self._clock() * 1000)
            with self._lock:
                self._next_seq = max(self._next_seq, floor)
            try:
                conn = self._connect(corruption=salvage)
            except _Damaged as again:
                raise _StorageError("unavailable", f"a new outbox database is damaged too: {again}") from again
            return conn

    def _connect(self, corruption: _Salvage | None = None) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=0)
        except sqlite3.Error as exc:
            raise self._storage_error(exc) from exc
        try:
            # One process, one connection: no shared-memory index file to write back (SD card), and a
            # second agent on the same state dir is refused instead of interleaving.
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch the journal to WAL (got {mode}): read-only?")
            conn.execute("PRAGMA synchronous=FULL")
            # Freed pages are zeroed only where that costs no extra write (this SQLite zeroes always).
            conn.execute("PRAGMA secure_delete=FAST")
            conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints are ours: counted, and off the hot path
            problems = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                raise _Damaged("; ".join(problems[:3]))
            self._schema(conn, corruption)
            self._load(conn)
        except _Damaged:
            conn.close()
            raise
        except sqlite3.OperationalError as exc:
            conn.close()
            if "locked" in str(exc).lower():
                raise OutboxError(f"the outbox {self.path} is in use by another process (a second agent?)") from exc
            raise self._storage_error(exc) from exc
        except sqlite3.DatabaseError as exc:  # not a database, malformed: SQLITE_NOTADB, SQLITE_CORRUPT
            conn.close()
            raise _Damaged(str(exc)) from exc
        except OutboxError:
            conn.close()
            raise
        return conn

    def _schema(self, conn: sqlite3.Connection, corruption: _Salvage | None) -> None:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise OutboxError(
                f"the outbox {self.path} has schema {version}, newer than this agent's {SCHEMA_VERSION}; "
                "it was written by a newer agent: move it away or run that agent"
            )
        now = int(self._clock())
        conn.execute("BEGIN IMMEDIATE")
        try:
            if version < SCHEMA_VERSION:
                legacy = self._read_legacy(conn)
                for p in Priority:
                    conn.execute(_TABLE_DDL.format(table=_table(p)))
                conn.execute(_META_DDL)
                conn.execute(_VIEW_DDL)
                meta = {"next_seq": 0, "created_at": now}
                meta.update(legacy[1])
                if corruption is not None:
                    meta.update(corruption.meta)  # counters carry on, with the time they started
                    meta["corrupt_files"] = corruption.meta.get("corrupt_files", 0) + 1
                    meta["next_seq"] = max(meta.get("next_seq", 0), self._next_seq)
                conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(meta.items()))
                for p, group in legacy[0].items():
                    conn.executemany(
                        f"INSERT OR IGNORE INTO {_table(p)} (seq, message_id, kind, payload, retain, created) "
                        "VALUES (?,?,?,?,?,?)",
                        group,
                    )
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute(_LEDGER_DDL)  # also into outboxes made before the ledger existed
            if corruption is not None:
                # Whatever still waited in the damaged file is gone with it: every number below the
                # new start is given up, unless the server has it already.
                first_free = max(int(meta.get("next_seq", 0)), self._next_seq) if version < SCHEMA_VERSION else 0
                if first_free > 0:
                    conn.execute(
                        "INSERT INTO given_up (first, last, class, reason) VALUES (0, ?, NULL, 'outbox_replaced')",
                        (first_free - 1,),
                    )
            # A write on every open: a read-only disk shows itself now, not at the first event.
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('opened_at', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (now,),
            )
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def _read_legacy(
        self, conn: sqlite3.Connection
    ) -> tuple[dict[Priority, list[tuple[int, str, str, bytes, int, int]]], dict[str, int]]:
        """Rows and counters of the first outbox (one `outbox` table, schema 0), moved to the new tables."""
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        rows: dict[Priority, list[tuple[int, str, str, bytes, int, int]]] = {}
        meta: dict[str, int] = {}
        if "outbox" not in names:
            return rows, meta
        now = int(self._clock())
        for message_id, topic, payload, retain in conn.execute(
            "SELECT message_id, topic, payload, retain FROM outbox ORDER BY row_id"
        ):
            kind = str(topic).rsplit("/", 1)[-1]
            try:
                seq = int(json.loads(payload)["seq"])
                priority = priority_of(kind)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("legacy outbox row unreadable; left out", extra={"message_id": message_id, "error": str(exc)})
                continue
            rows.setdefault(priority, []).append((seq, str(message_id), kind, bytes(payload), int(retain), now))
        if "meta" in names:
            meta = {str(k): int(v) for k, v in conn.execute("SELECT key, value FROM meta")}
            conn.execute("DROP TABLE meta")
        conn.execute("DROP TABLE outbox")
        highest = max((r[0] for group in rows.values() for r in group), default=-1)
        meta["next_seq"] = max(meta.get("next_seq", 0), highest + 1)
        log.info("outbox migrated to priority classes", extra={"messages": sum(len(g) for g in rows.values())})
        return rows, meta

    def _load(self, conn: sqlite3.Connection) -> None:
        (self._page_size,) = conn.execute("PRAGMA page_size").fetchone()
        meta = {str(k): int(v) for k, v in conn.execute("SELECT key, value FROM meta")}
        highest = -1
        counts = _zero()
        for p in Priority:
            count, top = conn.execute(f"SELECT COUNT(*), MAX(seq) FROM {_table(p)}").fetchone()
            counts[p] = int(count)
            if top is not None:
                highest = max(highest, int(top))
        self._counts = counts
        self._reports = {
            int(seq) for (seq,) in conn.execute("SELECT DISTINCT report_seq FROM given_up WHERE report_seq IS NOT NULL")
        }
        for name in _COUNTERS:
            for p in Priority:
                self._totals[name][p] = meta.get(_counter_key(name, p), 0)
        self._corrupt_files = meta.get("corrupt_files", 0)
        created = meta.get("created_at")
        self._counters_since = datetime.fromtimestamp(created, timezone.utc) if created else None
        saved = max(meta.get("next_seq", 0), highest + 1)
        reserved = meta.get("seq_reserved", 0)
        first_open = not self._opened
        with self._lock:
            # After an unclean stop the last run may have sent numbers up to its reservation from
            # memory: start past them (a reopen within this run knows its own numbers).
            self._next_seq = max(self._next_seq, saved, reserved if first_open else 0)
            start = self._next_seq
        self._opened = True
        conn.execute("BEGIN IMMEDIATE")
        try:
            if first_open and reserved > saved:
                conn.execute(
                    "INSERT INTO given_up (first, last, class, reason) VALUES (?, ?, NULL, 'skipped')",
                    (saved, reserved - 1),
                )
                log.warning("outbox was not closed cleanly; sequence numbers skipped",
                            extra={"first": saved, "last": reserved - 1})
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('seq_reserved', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (start + SEQ_RESERVE,),
            )
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        self._seq_reserved = start + SEQ_RESERVE

    def _save_meta(
        self, conn: sqlite3.Connection, unsaved: Mapping[str, Mapping[Priority, int]], *, persist_seq: bool = True
    ) -> None:
        values: list[tuple[str, int]] = []
        if persist_seq:
            with self._lock:
                values.append(("next_seq", self._next_seq))
        for name in _COUNTERS:
            for p, n in unsaved[name].items():
                if n:
                    values.append((_counter_key(name, p), self._totals[name][p] + n))
        if values:
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                values,
            )

    def _wal_size(self) -> int:
        try:
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

    def _maybe_checkpoint(self) -> None:
        if self._wal_size() >= self.limits.checkpoint_at:
            self._guarded(self._checkpoint)

    def _checkpoint(self) -> None:
        """Copy the log into the database and truncate it, counting the bytes both steps write."""
        conn = self._conn
        if conn is None:
            return
        wal = self._wal_size()
        try:
            _busy, _frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.OperationalError as exc:
            raise self._storage_error(exc) from exc
        if self._wal_size() < wal:
            # A checkpoint writes each page once, however many frames it has in the log.
            (pages,) = conn.execute("PRAGMA page_count").fetchone()
            self._written_checkpointed += wal + min(max(0, int(copied)), int(pages)) * self._page_size
