"""Group commit: everything that arrived within one commit window goes to disk in one transaction
(one fsync), and only then are its producers answered.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Mapping
from typing import Any

from ..priority import Priority
from .capacity import _Capacity
from .commands import _Flush, _Put, _Remove, _Reply, _settle
from .degraded import _Degraded
from .errors import OutboxError, _StorageError
from .ledger import _Ledger
from .limits import DELETE_BATCH, DELETE_DELAY_S
from .records import Accepted, AcceptStatus, Pending, _GivenUp
from .schema import _COUNTERS, _zero
from .storage import _Storage

log = logging.getLogger("polewatch.agent.outbox")


class _GroupCommit(_Storage, _Degraded, _Capacity, _Ledger):
    """One transaction for a batch of writes, and the bookkeeping of acknowledged rows."""

    def _commit(self, writes: list[_Put | _Remove | _Flush], *, retry_now: bool = False) -> None:
        puts = [w for w in writes if isinstance(w, _Put)]
        rows = [r for p in puts for r in p.rows]
        statuses: dict[int, AcceptStatus] = {}
        error: BaseException | None = None
        # The window runs from one commit's start to the next: at most one fsync per window, and a
        # commit that took long does not make the next batch wait a whole window more.
        self._last_commit = time.monotonic()
        if self._state != "ok" and time.monotonic() < self._retry_at and not retry_now:
            self._hold(rows, statuses)
        else:
            try:
                statuses = self._write(rows, {p.rows[0].seq: p.carries for p in puts if p.carries})
            except _StorageError as exc:
                self._degrade(exc)
                self._hold(rows, statuses)
            except Exception as exc:  # not a disk condition: a bug; tell every waiter
                log.exception("outbox commit failed")
                error = exc
        answers: list[tuple[_Reply, Any, BaseException | None]] = []
        for w in writes:
            if w.reply is None:
                continue
            if error is not None:
                answers.append((w.reply, None, error))
            elif isinstance(w, _Put):
                answers.append(
                    (w.reply, [Accepted(m, statuses.get(m.seq, "dropped")) for m in w.messages], None)
                )
            else:
                answers.append((w.reply, None, None))
        _settle(answers)
        if rows or self._held:
            for listener in list(self._listeners):
                try:
                    listener()
                except Exception:  # a listener's bug must not stop the writer
                    log.exception("outbox listener failed")

    def _write(self, rows: list[Pending], reports: Mapping[int, list[int]] | None = None) -> dict[int, AcceptStatus]:
        """One transaction: acknowledged rows out, held and new rows in (making room), counters, and
        the ledger of what was given up. `reports`: seq of a given_up message among `rows` -> the
        ledger ids it carries, marked as carried if the message is stored."""
        if self._conn is None:
            try:
                self._conn = self._open()
            except OutboxError as exc:  # e.g. locked by another process meanwhile: keep going in memory
                raise _StorageError("unavailable", str(exc)) from exc
        conn = self._conn
        incoming = sorted([*self._held.values(), *rows], key=lambda r: r.seq) if self._held else rows
        counts = dict(self._counts)
        evicted = _zero()
        statuses: dict[int, AcceptStatus] = {}
        # Acknowledged rows go first when room is short: they must not be counted as evicted.
        removing = dict(self._removing) if self._deletes_due() or self._short_of_room(conn, incoming) else {}
        # The next sequence number needs saving only when rows that carry it may be deleted, or for a
        # number used by no row (presence): otherwise the highest stored row says it (see _load).
        persist_seq = bool(removing) or not incoming or self._unsaved_seq
        with self._lock:
            ledger_n = len(self._ledger_new)
            given: list[_GivenUp] = self._ledger_new[:ledger_n]
        delivered_reports = [seq for seq in removing if seq in self._reports]
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._delete_acknowledged(conn, removing, counts)
                if delivered_reports:
                    conn.executemany("DELETE FROM given_up WHERE report_seq = ?", [(s,) for s in delivered_reports])
                self._insert(conn, incoming, counts, evicted, statuses, given)
                self._ledger_write(conn, given)
                reserved = self._renew_reservation(conn)
                carried = {seq: ids for seq, ids in (reports or {}).items() if statuses.get(seq) == "stored"}
                conn.executemany(
                    "UPDATE given_up SET report_seq = ? WHERE id = ?",
                    [(seq, i) for seq, ids in carried.items() for i in ids],
                )
                unsaved = {name: dict(self._unsaved[name]) for name in _COUNTERS}
                for p, n in evicted.items():
                    unsaved["evicted"][p] += n
                self._save_meta(conn, unsaved, persist_seq=persist_seq or any(evicted.values()))
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            raise self._storage_error(exc) from exc
        except sqlite3.DatabaseError as exc:
            # Damaged under our feet: reopen (which checks the file and moves it aside) on the next try.
            self._close_connection()
            raise _StorageError("unavailable", f"outbox database damaged: {exc}") from exc
        # Committed: make the in-memory picture match.
        self._seq_reserved = max(self._seq_reserved, reserved)
        with self._lock:
            del self._ledger_new[:ledger_n]
        self._reports.difference_update(delivered_reports)
        self._reports.difference_update(seq for seq, _, _ in given)
        self._reports.update(carried)
        self._commits += 1
        self._counts = counts
        self._unsaved_seq = False
        self._delete_now = False
        if removing:
            for seq in removing:
                priority = self._removing.pop(seq, None)
                self._removing_n[priority] = self._removing_n.get(priority, 1) - 1
            self._removing_since = time.monotonic() if self._removing else None
        self._fold_counters("evicted", evicted)
        recovered = self._state != "ok"
        self._held.clear()
        self._held_alerts = 0
        self._held_latest.clear()
        if recovered:
            log.warning("outbox storage writable again", extra={"path": str(self.path), "was": self._state})
            self._state = "ok"
            self._last_error = None
        if any(evicted.values()):
            self._log_eviction(evicted)
        self._maybe_checkpoint()
        return statuses

    def _mark_removed(self, seqs: list[tuple[int, Priority | None]]) -> None:
        for seq, priority in seqs:
            if seq in self._held:  # never reached the disk: nothing to delete there
                self._unhold(seq)
            elif seq not in self._removing:
                self._removing[seq] = priority
                self._removing_n[priority] = self._removing_n.get(priority, 0) + 1
        if self._removing and self._removing_since is None:
            self._removing_since = time.monotonic()

    def _deletes_due(self) -> bool:
        if not self._removing:
            return False
        if self._delete_now or len(self._removing) >= DELETE_BATCH:
            return True
        return self._removing_since is not None and time.monotonic() - self._removing_since >= DELETE_DELAY_S
