"""The ledger of sequence numbers given up, and the reservation of numbers ahead of use.

Every number given up (evicted, expired, dropped, never queued, a damaged file replaced) is
written in the same transaction as the change that gave it up, and reported to the server until a
report carrying it is acknowledged: so the server can tell a gap that will never be filled from
messages still on their way (docs/outbox.md, "Gap accounting").
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from ..priority import Priority
from .records import _GivenUp
from .state import OutboxState

# Ranges per given_up message (the wire contract allows up to 1000).
REPORT_RANGES = 500


# Sequence numbers reserved on disk ahead of use. A message held in memory (disk unwritable) is sent
# only if its number is below the reservation, and a run that did not close its outbox makes the
# next one start past the reservation: so a number that went out from memory is never handed out
# again after a crash. Renewed when half used: one meta row every 512 messages.
SEQ_RESERVE = 1024


def ledger_ranges(entries: Iterable[_GivenUp]) -> list[tuple[int, int, Priority | None, str]]:
    """Runs of consecutive sequence numbers of one class and reason, as (first, last, class, reason)."""
    groups: dict[tuple[Priority | None, str], list[int]] = {}
    for seq, priority, reason in entries:
        groups.setdefault((priority, reason), []).append(seq)
    out: list[tuple[int, int, Priority | None, str]] = []
    for (priority, reason), seqs in groups.items():
        seqs = sorted(set(seqs))
        first = last = seqs[0]
        for seq in seqs[1:]:
            if seq == last + 1:
                last = seq
                continue
            out.append((first, last, priority, reason))
            first = last = seq
        out.append((first, last, priority, reason))
    return sorted(out, key=lambda r: r[0])


class _Ledger(OutboxState):
    """Writing the ledger and the sequence reservation, inside the caller's transaction."""

    def _renew_reservation(self, conn: sqlite3.Connection) -> int:
        """Reserve the next SEQ_RESERVE numbers on disk once half of the reservation is used (in the
        caller's transaction); returns the reservation then on disk."""
        with self._lock:
            nxt = self._next_seq
        if nxt + SEQ_RESERVE // 2 <= self._seq_reserved:
            return self._seq_reserved
        reserved = nxt + SEQ_RESERVE
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('seq_reserved', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (reserved,),
        )
        return reserved

    def _ledger_write(self, conn: sqlite3.Connection, given: list[_GivenUp]) -> None:
        """Record what was given up (in the caller's transaction). A given_up message among it makes
        the ranges it carried unreported again: the next report carries them."""
        if not given:
            return
        reports = [(seq,) for seq, _, _ in given if seq in self._reports]
        if reports:
            conn.executemany("UPDATE given_up SET report_seq = NULL WHERE report_seq = ?", reports)
        conn.executemany(
            "INSERT INTO given_up (first, last, class, reason) VALUES (?, ?, ?, ?)",
            [(first, last, None if p is None else int(p), reason) for first, last, p, reason in ledger_ranges(given)],
        )
