"""The on-disk outbox: every message is on disk before anyone is told it was accepted.

A pole may be cut off for days; what it saw in that time must still reach the command centre. So a
message is committed to SQLite (WAL, synchronous=FULL) before `add` returns, and a row is deleted
only after the broker acknowledged it at QoS 1. The per-device sequence number lives in the same
database and is taken in the same transaction as the insert, so it survives restarts and never
repeats. (Size caps, priorities and group commit build on this table; see the uplink issue.)
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from polewatch.protocol import Body, V1Message, build, encode, topics

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    row_id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('next_seq', 0);
"""


@dataclass(frozen=True)
class Pending:
    row_id: int
    message_id: str
    topic: str
    payload: bytes
    retain: bool


class Outbox:
    """A durable FIFO of encoded messages for one device. Safe to call from several threads."""

    def __init__(self, path: Path, device_id: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.device_id = device_id
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _take_seq(self) -> int:
        (seq,) = self._db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
        self._db.execute("UPDATE meta SET value = value + 1 WHERE key = 'next_seq'")
        return int(seq)

    def add(self, body: Body, *, retain: bool = False) -> V1Message:
        """Number, wrap and store one message; when this returns it is on disk."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                message = build(body, device_id=self.device_id, seq=self._take_seq())
                self._db.execute(
                    "INSERT INTO outbox (message_id, topic, payload, retain) VALUES (?, ?, ?, ?)",
                    (message.id, topics.up(self.device_id, message.kind), encode(message), int(retain)),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return message

    def stamp(self, body: Body) -> V1Message:
        """Number and wrap a message that is not queued (presence: only its latest value matters)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._take_seq()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return build(body, device_id=self.device_id, seq=seq)

    def peek(self, limit: int) -> list[Pending]:
        """The oldest `limit` messages still waiting for the broker, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT row_id, message_id, topic, payload, retain FROM outbox ORDER BY row_id LIMIT ?",
                (limit,),
            ).fetchall()
        return [Pending(r[0], r[1], r[2], bytes(r[3]), bool(r[4])) for r in rows]

    def remove(self, row_ids: list[int]) -> None:
        """Forget messages the broker has acknowledged."""
        if not row_ids:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM outbox WHERE row_id = ?", [(r,) for r in row_ids])
            self._db.execute("COMMIT")

    def pending_count(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(count)
