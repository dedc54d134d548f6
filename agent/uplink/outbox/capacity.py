"""The hard cap on the outbox files: inserting within the byte budget, evicting the least important
class's oldest rows first, and deleting acknowledged rows so that their pages are freed.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Mapping
from typing import Any

from ..priority import EVICTION_ORDER, Priority
from .limits import INSERT_CHUNK, PAGE_SLACK
from .records import ROW_OVERHEAD, AcceptStatus, Pending, _GivenUp
from .schema import _table
from .state import OutboxState

log = logging.getLogger("polewatch.agent.outbox")


class _Capacity(OutboxState):
    """Rows in and out of the class tables within the byte budget."""

    def _delete_acknowledged(
        self, conn: sqlite3.Connection, removing: Mapping[int, Priority | None], counts: dict[Priority, int]
    ) -> None:
        if not removing:
            return
        by_class: dict[Priority, list[tuple[int]]] = {p: [] for p in Priority}
        unknown: list[tuple[int]] = []
        for seq, priority in removing.items():
            (by_class[priority] if priority is not None else unknown).append((seq,))
        for p in Priority:
            keys = by_class[p] + unknown
            if not keys:
                continue
            table = _table(p)
            if 0 < counts[p] <= len(keys):
                # Everything left in the table may be acknowledged (the usual case once a backlog is
                # sent, and on a quiet pole): then empty it in one go, which frees its pages without
                # writing them, where deleting row by row writes every page once more (SD card).
                acked = {k for (k,) in keys}
                if all(seq in acked for (seq,) in conn.execute(f"SELECT seq FROM {table}")):
                    conn.execute(f"DELETE FROM {table}")
                    counts[p] = 0
                    continue
            cursor = conn.executemany(f"DELETE FROM {table} WHERE seq = ?", keys)
            counts[p] -= max(0, cursor.rowcount)

    def _short_of_room(self, conn: sqlite3.Connection, incoming: list[Pending]) -> bool:
        if not self._removing or not incoming:
            return False
        need = int(sum(r.cost for r in incoming) * PAGE_SLACK)
        return self._used_bytes(conn) + need > self.limits.data_budget

    def _used_bytes(self, conn: sqlite3.Connection) -> int:
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
        return (int(pages) - int(free)) * self._page_size

    def _insert(
        self,
        conn: sqlite3.Connection,
        rows: list[Pending],
        counts: dict[Priority, int],
        evicted: dict[Priority, int],
        statuses: dict[int, AcceptStatus],
        given: list[_GivenUp],
    ) -> None:
        """Insert rows in sequence order; before one would break the budget, give up the oldest rows of
        the least important class (or the new row itself, if everything stored is more important).
        What is given up is added to `given`, for the ledger."""
        if not rows:
            return
        budget = self.limits.data_budget
        used = self._used_bytes(conn)
        if used + int(sum(r.cost for r in rows) * PAGE_SLACK) <= budget:
            by_class: dict[Priority, list[Pending]] = {}
            for r in rows:
                by_class.setdefault(r.priority, []).append(r)
            for p, group in by_class.items():
                self._insert_many(conn, p, group)
                counts[p] += len(group)
            statuses.update(dict.fromkeys((r.seq for r in rows), "stored"))
            return
        # Slow path, row by row: the outbox is at its cap.
        chunk = max(self._page_size, min(budget // 64, 64 * 1024))
        for r in rows:
            cost = int(r.cost * PAGE_SLACK)
            if used + cost > budget:
                used = self._used_bytes(conn)
            fits = True
            while used + cost > budget:
                victim = next((p for p in EVICTION_ORDER if counts[p] > 0), None)
                if victim is None or victim > r.priority:
                    fits = False
                    break
                need = used + cost - budget
                if victim != Priority.ALERT:
                    need = max(need, chunk)  # give up a little more, so the next rows do not each evict
                gone = self._evict_oldest(conn, victim, need)
                # Nothing there after all (the count was off): believe the table, not the count.
                counts[victim] = counts[victim] - len(gone) if gone else 0
                evicted[victim] += len(gone)
                given.extend((seq, victim, "evicted") for seq in gone)
                used = self._used_bytes(conn)
            if not fits:
                evicted[r.priority] += 1
                given.append((r.seq, r.priority, "evicted"))
                statuses[r.seq] = "evicted"
                continue
            self._insert_many(conn, r.priority, [r])
            counts[r.priority] += 1
            used += cost
            statuses[r.seq] = "stored"

    def _insert_many(self, conn: sqlite3.Connection, priority: Priority, rows: list[Pending]) -> None:
        """Insert with multi-row statements: one statement step per chunk instead of one per row, so
        the writer thread gives up and retakes the GIL far less often while producers are busy."""
        table = _table(priority)
        for start in range(0, len(rows), INSERT_CHUNK):
            chunk = rows[start : start + INSERT_CHUNK]
            sql = self._insert_sql.get((table, len(chunk)))
            if sql is None:
                sql = (
                    f"INSERT INTO {table} (seq, message_id, kind, payload, retain, created) VALUES "
                    + ",".join(["(?,?,?,?,?,?)"] * len(chunk))
                )
                if len(chunk) == INSERT_CHUNK or len(chunk) == 1:
                    self._insert_sql[(table, len(chunk))] = sql
            params: list[Any] = []
            for r in chunk:
                params += (r.seq, r.message_id, r.kind, r.payload, int(r.retain), r.created)
            conn.execute(sql, params)

    def _evict_oldest(self, conn: sqlite3.Connection, priority: Priority, need: int) -> list[int]:
        """Delete the oldest rows of one class whose sizes add up to `need` bytes (at least one row);
        returns their sequence numbers."""
        table = _table(priority)
        found = conn.execute(
            f"SELECT seq, length(payload) + length(message_id) + length(kind) + {ROW_OVERHEAD} "
            f"FROM {table} ORDER BY seq LIMIT 1024"
        ).fetchall()
        if not found:
            return []
        total, last = 0, found[-1][0]
        for seq, cost in found:
            total += int(cost * PAGE_SLACK)
            if total >= need:
                last = seq
                break
        conn.execute(f"DELETE FROM {table} WHERE seq <= ?", (last,))
        return [seq for seq, _ in found if seq <= last]

    def _log_eviction(self, evicted: Mapping[Priority, int]) -> None:
        # At the cap during a long outage every commit evicts: log the running totals once a minute.
        now = time.monotonic()
        if now - self._last_eviction_log < (10.0 if evicted[Priority.ALERT] else 60.0):
            return
        self._last_eviction_log = now
        log.warning(
            "outbox full: oldest messages given up",
            extra={
                "this_commit": {p.label: n for p, n in evicted.items() if n},
                "evicted_total": {p.label: n for p, n in self._totals["evicted"].items()},
                "max_bytes": self.limits.max_bytes,
            },
        )
