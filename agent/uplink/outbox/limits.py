"""The byte budget and the pacing of the writer thread (docs/outbox.md, "Hard cap")."""

from __future__ import annotations

from dataclasses import dataclass

# Page usage exceeds the sum of row sizes a little (cell pointers, unused page tails): estimates of
# how much a batch will add are scaled up by this, and checked against the real page count.
PAGE_SLACK = 1.25


MAX_BATCH_ROWS = 4096


# Acknowledged rows are deleted in batches, not one commit per acknowledgement: deleting 500 adjacent
# rows rewrites a few pages once instead of the same page hundreds of times (SD card). The cost is
# that a crash forgets up to this many seconds of acknowledgements: those are sent again (duplicates
# the server drops by message id).
DELETE_BATCH = 16384


DELETE_DELAY_S = 2.0


INSERT_CHUNK = 256  # rows per INSERT statement (6 parameters each; SQLite allows 32766)


PURGE_INTERVAL_S = 30.0


RATE_WINDOW_S = 3600.0


@dataclass(frozen=True)
class _Limits:
    """The byte budget derived from the configured cap (see docs/outbox.md, "Hard cap")."""

    max_bytes: int
    wal_reserve: int
    data_budget: int
    checkpoint_at: int
    batch_bytes: int
    max_message: int

    @classmethod
    def for_cap(cls, max_bytes: int, page_size: int = 4096) -> _Limits:
        wal_reserve = min(max(max_bytes // 8, 96 * 1024), 16 * 1024 * 1024)
        data_budget = max_bytes - wal_reserve - 4 * page_size
        return cls(
            max_bytes=max_bytes,
            wal_reserve=wal_reserve,
            data_budget=data_budget,
            checkpoint_at=wal_reserve // 2,
            batch_bytes=wal_reserve // 4,
            max_message=max(4096, min(data_budget // 4, 16 * 1024 * 1024)),
        )
