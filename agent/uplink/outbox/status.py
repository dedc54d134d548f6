"""The outbox's part of the health report: storage state, what waits, what was given up, disk writes."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping

from polewatch.protocol import OutboxStatus, PriorityCounts

from ..priority import Priority
from .errors import StorageState
from .limits import RATE_WINDOW_S
from .state import OutboxState


class _Status(OutboxState):
    """Figures for the health report, readable from any thread."""

    @property
    def storage_state(self) -> StorageState:
        return self._state

    @property
    def commits(self) -> int:
        """Transactions committed (each one fsync of the write-ahead log)."""
        return self._commits

    def disk_bytes(self) -> int:
        """Bytes the outbox files take on disk now (database and write-ahead log)."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    def bytes_written(self) -> int:
        """Bytes the outbox has written to its files since it was opened: every write-ahead-log frame
        plus every page copied into the database by a checkpoint."""
        try:
            wal = os.stat(f"{self.path}-wal").st_size
        except OSError:
            wal = 0
        return self._written_checkpointed + wal

    def status(self) -> OutboxStatus:
        """The outbox's part of the health report."""
        written = self.bytes_written()
        now = time.monotonic()
        samples = self._rate_samples
        samples.append((now, written))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW_S:
            samples.popleft()
        first_t, first_written = samples[0]
        elapsed = now - first_t
        per_hour = (written - first_written) / elapsed * 3600.0 if elapsed >= 1.0 else None
        return OutboxStatus(
            storage=self._state,
            pending=self._counted(self._pending()),
            held_in_memory=len(self._held),
            disk_bytes=self.disk_bytes(),
            max_bytes=self.limits.max_bytes,
            evicted=self._counted(self._total("evicted")),
            expired=self._counted(self._total("expired")),
            dropped=self._counted(self._total("dropped")),
            corrupt_files=self._corrupt_files,
            counters_since=self._counters_since,
            write_bytes_total=written,
            write_bytes_per_hour=None if per_hour is None else round(per_hour, 1),
            last_error=self._last_error if self._state != "ok" else None,
        )

    def _pending(self) -> dict[Priority, int]:
        return {p: max(0, n - self._removing_n.get(p, 0)) for p, n in self._counts.items()}

    def _total(self, counter: str) -> dict[Priority, int]:
        """Saved count plus what is not on disk yet (while the disk cannot be written)."""
        with self._stats_lock:
            saved, unsaved = self._totals[counter], self._unsaved[counter]
            return {p: saved[p] + unsaved[p] for p in Priority}

    @staticmethod
    def _counted(counts: Mapping[Priority, int]) -> PriorityCounts:
        return PriorityCounts(**{p.label: max(0, n) for p, n in counts.items()})
