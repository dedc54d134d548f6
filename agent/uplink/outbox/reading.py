"""Reading waiting messages in replay order, for the uplink."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping

from ..priority import REPLAY_ORDER, Priority
from .records import Pending, row_cost
from .schema import _table
from .state import OutboxState

log = logging.getLogger("polewatch.agent.outbox")


class _Reading(OutboxState):
    """The uplink's reads: alerts first, oldest first within a class."""

    def _take(
        self, limit: int, after: Mapping[Priority, int], min_seq: int, below_seq: int | None
    ) -> list[Pending]:
        out: list[Pending] = []
        for p in REPLAY_ORDER:
            want = limit - len(out)
            if want <= 0:
                break
            low = max(after.get(p, -1), min_seq - 1)
            found = self._read_class(p, low, below_seq, want)
            # A held message goes out only if its number is reserved on disk: after a crash the next
            # run starts past the reservation, so the number is never used twice.
            held = [r for r in self._held.values() if r.priority == p and r.seq > low
                    and (below_seq is None or r.seq < below_seq) and r.seq < self._seq_reserved]
            if held:
                found = sorted([*found, *held], key=lambda r: r.seq)[:want]
            out.extend(found)
        return out

    def _read_class(self, priority: Priority, low: int, below_seq: int | None, want: int) -> list[Pending]:
        conn = self._conn
        if conn is None:
            return []
        table = _table(priority)
        upper = "" if below_seq is None else " AND seq < ?"
        found: list[Pending] = []
        try:
            while len(found) < want:
                params: tuple[int, ...] = (low,) if below_seq is None else (low, below_seq)
                fetch = want - len(found)  # rows being removed are skipped and the rest read after
                rows = conn.execute(
                    f"SELECT seq, message_id, kind, payload, retain, created FROM {table} "
                    f"WHERE seq > ?{upper} ORDER BY seq LIMIT {fetch}",
                    params,
                ).fetchall()
                for seq, message_id, kind, payload, retain, created in rows:
                    if seq in self._removing:  # acknowledged; deleted with the next commit
                        continue
                    data = payload if isinstance(payload, bytes) else bytes(payload)
                    found.append(
                        Pending(seq, priority, message_id, kind, self._topic(kind), data, bool(retain), created,
                                row_cost(data, message_id, kind))
                    )
                    if len(found) >= want:
                        break
                if len(rows) < fetch:
                    break
                low = rows[-1][0]
        except sqlite3.Error as exc:
            log.warning("outbox read failed", extra={"error": str(exc)})
        return found
