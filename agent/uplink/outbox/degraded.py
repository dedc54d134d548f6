"""When the disk cannot be written: alerts (up to a cap) and the latest message of every other class
are held in memory, the rest is given up and counted, and the outbox writes them to disk by itself
once it can again.
"""

from __future__ import annotations

import logging
import time

from ..priority import Priority
from .errors import _StorageError
from .records import AcceptStatus, Pending
from .state import OutboxState

log = logging.getLogger("polewatch.agent.outbox")


class _Degraded(OutboxState):
    """Holding messages in memory while the disk is full, read-only or failing."""

    def _degrade(self, exc: _StorageError) -> None:
        if self._state != exc.state:
            log.error(
                "outbox cannot write to disk; holding alerts in memory",
                extra={"path": str(self.path), "state": exc.state, "error": exc.detail,
                       "memory_alerts": self.config.memory_alerts},
            )
        self._state = exc.state
        self._last_error = exc.detail
        self._retry_at = time.monotonic() + self._retry_s
        if exc.state != "disk_full":
            # Read-only or failing: reopen from scratch on the next try. A full disk still reads fine,
            # so the connection stays and the backlog keeps draining.
            self._close_connection()

    def _hold(self, rows: list[Pending], statuses: dict[int, AcceptStatus]) -> None:
        """Keep what is worth keeping in memory until the disk can be written again."""
        cap = self.config.memory_alerts
        for r in rows:
            if r.priority == Priority.ALERT:
                if cap <= 0:
                    self._unsaved["dropped"][r.priority] += 1
                    statuses[r.seq] = "dropped"
                    self._given_up_in_memory(r.seq, r.priority)
                    continue
                self._held[r.seq] = r
                self._held_alerts += 1
                statuses[r.seq] = "held"
                while self._held_alerts > cap:
                    oldest = next(seq for seq, p in self._held.items() if p.priority == Priority.ALERT)
                    self._unhold(oldest)
                    self._unsaved["dropped"][Priority.ALERT] += 1
                    statuses[oldest] = "dropped"
                    self._given_up_in_memory(oldest, Priority.ALERT)
            else:
                # Of every other class only the newest is worth keeping (it says how the box is now).
                previous = self._held_latest.get(r.priority)
                if previous is not None and previous in self._held:
                    self._unhold(previous)
                    self._unsaved["dropped"][r.priority] += 1
                    statuses[previous] = "dropped"
                    self._given_up_in_memory(previous, r.priority)
                self._held[r.seq] = r
                self._held_latest[r.priority] = r.seq
                statuses[r.seq] = "held"

    def _given_up_in_memory(self, seq: int, priority: Priority) -> None:
        """Dropped while the disk cannot be written: into the ledger with the next commit that works."""
        with self._lock:
            self._ledger_new.append((seq, priority, "dropped"))

    def _unhold(self, seq: int) -> None:
        row = self._held.pop(seq, None)
        if row is not None and row.priority == Priority.ALERT:
            self._held_alerts -= 1
