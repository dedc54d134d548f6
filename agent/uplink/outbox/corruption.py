"""A damaged database is moved aside and what can still be read from it is saved.

Enough is salvaged (the sequence number, the counters) that numbers are never handed out twice,
also when the file cannot be opened for writing at all (a read-only disk).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..priority import Priority
from .schema import _COUNTERS, _counter_key, _table
from .state import OutboxState


@dataclass
class _Salvage:
    """What could still be read from a damaged file: enough to keep sequence numbers unique."""

    next_seq: int | None = None
    meta: dict[str, int] = field(default_factory=dict)


class _Corruption(OutboxState):
    """Moving a damaged file aside and reading what is left in it."""

    def _move_aside(self) -> Path:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            os.replace(self.path, aside)
            # Its write-ahead log belongs to it: keep them together (sqlite3 opens them as a pair).
            if os.path.exists(f"{self.path}-wal"):
                os.replace(f"{self.path}-wal", f"{aside}-wal")
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{self.path}-shm")
        except OSError as exc:
            raise self._storage_error(exc) from exc
        return aside

    def _salvage(self, aside: Path) -> _Salvage:
        """Read what can still be read from a damaged or unwritable file: the sequence and the counters."""
        salvage = _Salvage()
        try:
            # immutable: no locks, no log, nothing written (the file may be damaged or on a read-only disk)
            conn = sqlite3.connect(f"{aside.resolve().as_uri()}?mode=ro&immutable=1", uri=True, timeout=0)
        except sqlite3.Error:
            return salvage
        try:
            with contextlib.suppress(sqlite3.Error):
                salvage.meta = {str(k): int(v) for k, v in conn.execute("SELECT key, value FROM meta")}
            highest = salvage.meta.get("next_seq", 0) - 1
            for table in (_table(p) for p in Priority):
                with contextlib.suppress(sqlite3.Error):
                    (top,) = conn.execute(f"SELECT MAX(seq) FROM {table}").fetchone()
                    if top is not None:
                        highest = max(highest, int(top))
            if highest >= 0 or "next_seq" in salvage.meta:
                salvage.next_seq = highest + 1
        finally:
            conn.close()
        return salvage

    def _read_what_we_can(self) -> None:
        """The database cannot be opened for writing (read-only disk): read its counters without
        locks, so sequence numbers carry on instead of starting again from zero."""
        if not self.path.exists():
            return
        salvage = self._salvage(self.path)
        floor = salvage.next_seq
        wal = Path(f"{self.path}-wal")
        if floor is None or (wal.exists() and wal.stat().st_size > 0):
            # The newest numbers may be in a log we cannot replay here: jump past any of them.
            floor = max(floor or 0, int(self._clock() * 1000))
        with self._lock:
            self._next_seq = max(self._next_seq, floor, salvage.meta.get("seq_reserved", 0))
        # Nothing can be reserved on this disk: held messages go out anyway (a known limit, see
        # docs/outbox.md), rather than a pole on a read-only card never sending anything.
        self._seq_reserved = 2**62
        self._opened = True
        for name in _COUNTERS:
            for p in Priority:
                self._totals[name][p] = salvage.meta.get(_counter_key(name, p), 0)
        self._corrupt_files = salvage.meta.get("corrupt_files", 0)
