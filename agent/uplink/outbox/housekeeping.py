"""What the writer thread does besides committing: time-to-live, compaction, reports of the
ledger, and the last commit at shutdown.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3

from polewatch.protocol import GivenUp, GivenUpRange

from ..priority import Priority
from .commit import _GroupCommit
from .records import _GivenUp
from .schema import _COUNTERS, _table, _zero

log = logging.getLogger("polewatch.agent.outbox")


class _Housekeeping(_GroupCommit):
    """Maintenance steps, run on the writer thread between commits."""

    def _purge(self) -> int:
        """Delete, oldest first, the rows of each class older than its time-to-live."""
        if self._conn is None or not any(self._ttl.values()):
            return 0
        if self._removing:  # delivered messages are not "expired": delete them first
            self._delete_now = True
            self._commit([])
        conn = self._conn
        if conn is None:
            return 0
        now = self._clock()
        total = 0
        expired = _zero()
        given: list[_GivenUp] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for p, ttl in self._ttl.items():
                if ttl is None:
                    continue
                cutoff = now - ttl
                table = _table(p)
                while True:
                    # Rows age in sequence order, so only the head of each table is read; a row
                    # stamped late by a clock jump ends the sweep until it reaches the head itself.
                    head = conn.execute(f"SELECT seq, created FROM {table} ORDER BY seq LIMIT 500").fetchall()
                    prefix = 0
                    for _seq, created in head:
                        if created >= cutoff:
                            break
                        prefix += 1
                    if prefix == 0:
                        break
                    cursor = conn.execute(f"DELETE FROM {table} WHERE seq <= ?", (head[prefix - 1][0],))
                    expired[p] += max(0, cursor.rowcount)
                    given.extend((seq, p, "expired") for seq, _ in head[:prefix])
                    if prefix < len(head):
                        break
            unsaved = {name: dict(self._unsaved[name]) for name in _COUNTERS}
            for p, n in expired.items():
                unsaved["expired"][p] += n
            self._save_meta(conn, unsaved)
            self._ledger_write(conn, given)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        self._reports.difference_update(seq for seq, _, _ in given)
        for p, n in expired.items():
            self._counts[p] -= n
            total += n
        self._fold_counters("expired", expired)
        if total:
            log.warning("outbox messages expired", extra={"expired": {p.label: n for p, n in expired.items() if n}})
        return total

    def _compact(self, force: bool) -> bool:
        """Give free pages back to the file system: after a long outage has drained, the file is at its
        high-water mark although almost nothing is left in it. Only done when what is left is small, so
        the rewrite costs little (SD card) and fits in the write-ahead log's share of the cap."""
        conn = self._conn
        if conn is None:
            return False
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
        live = (int(pages) - int(free)) * self._page_size
        worth = int(free) * 4 >= int(pages) and int(free) >= 16
        if not (force or worth) or live > self.limits.wal_reserve // 2:
            return False
        self._checkpoint()
        conn.execute("VACUUM")
        self._checkpoint()
        log.info("outbox compacted", extra={"freed_pages": int(free), "live_bytes": live})
        return True

    def _unreported(self, limit: int) -> tuple[GivenUp, list[int]] | None:
        """The writer thread's side of `report_given_up`: the ledger ranges no report carries yet, as
        a message body and the ledger rows it carries (None: nothing to report, or the disk is out).

        The message is queued behind what producers queued already (see `_enqueue_put`), not written
        here: a number taken now would be higher than theirs and reach the disk first."""
        if self._state != "ok":
            return None
        with self._lock:
            unsaved = bool(self._ledger_new)
        if unsaved:
            self._commit([])  # the ledger's newest entries go to disk first, so they can be reported
        conn = self._conn
        if conn is None or self._state != "ok":
            return None
        found = conn.execute(
            "SELECT id, first, last, class, reason FROM given_up WHERE report_seq IS NULL ORDER BY first LIMIT ?",
            (max(1, min(limit, 1000)),),
        ).fetchall()
        if not found:
            return None
        body = GivenUp(
            ranges=[
                GivenUpRange.model_validate(
                    {"first": f, "last": la, "priority": None if c is None else Priority(c).label, "reason": r}
                )
                for _, f, la, c, r in found
            ]
        )
        return body, [int(i) for i, *_ in found]

    def _shutdown(self) -> None:
        if self._held or self._removing:
            self._delete_now = True
            self._commit([], retry_now=True)  # a last try: held messages onto disk, acknowledged ones off
        if self._held:
            log.error("outbox closed with messages held in memory only; they are lost",
                      extra={"held": len(self._held)})
        elif self._conn is not None and self._state == "ok":
            # A clean close: the next run may start right here, no numbers skipped.
            with self._lock:
                nxt = self._next_seq
            with contextlib.suppress(sqlite3.Error):
                self._conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    [("next_seq", nxt), ("seq_reserved", nxt)],
                )
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._checkpoint()
        self._close_connection()
