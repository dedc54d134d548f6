"""The on-disk outbox: every message is on disk before anyone is told it was accepted.

A pole may be cut off for days; what it saw in that time must still reach the command centre, and the
SD card it runs from must neither fill up nor wear out. docs/outbox.md gives the design; in short:

- SQLite in WAL mode, `synchronous=FULL`, one connection owned by one writer thread. Producers hand
  messages to that thread and are answered only after the transaction holding them is committed and
  fsync'd (group commit: one fsync for everything that arrived within `group_commit_ms`).
- One table per priority class, keyed by the message's sequence number: rows are appended once and
  deleted once (after the broker's QoS 1 acknowledgement), never rewritten, and each table stays
  dense, so giving up the oldest rows of a class frees whole pages.
- A hard cap on the bytes of the outbox files. When it would be exceeded, the oldest messages of the
  least important class go first (telemetry, snapshots, health events, alerts last). Every message
  given up (cap, time-to-live, unwritable disk) is counted per class, persistently.
- A disk that is full or read-only does not stop the agent: alerts (up to a cap) and the latest
  message of every other class are held in memory, the condition is reported, and the outbox writes
  them to disk by itself once it can again.
- A damaged database is detected when it is opened, moved aside and replaced by a new one.
- Every sequence number given up (evicted, expired, dropped, presence never queued, a damaged file
  replaced) is written to a ledger (`given_up`) in the same transaction, and reported to the server
  in `given_up` messages until one carrying it is acknowledged, so the server can tell a gap that
  will never be filled from messages still on their way.

The class `Outbox` is put together from the parts of this package, one job per module:

- `api`: the `Outbox` class, what producers and the uplink call.
- `writer`: the writer thread (the one owner of the connection) and how callers hand it work.
- `commit`: group commit, one transaction for everything of one commit window.
- `capacity`: the byte budget; eviction of the least important class's oldest rows.
- `ledger`: the ledger of numbers given up, and the reservation of numbers ahead of use.
- `degraded`: holding messages in memory while the disk cannot be written.
- `housekeeping`: time-to-live, compaction, ledger reports, the last commit at shutdown.
- `storage`, `schema`: opening, checking and migrating the SQLite file; the tables in it.
- `corruption`: moving a damaged file aside and salvaging its numbers and counters.
- `reading`, `status`: the uplink's reads; the health report's figures.
- `state`, `commands`, `records`, `limits`, `errors`: what the parts share.

The parts are mixins over `state.OutboxState` and may only call parts they inherit from, so the
import order is the dependency order. Everything importable from this package before the split still is.
"""

from .api import Outbox
from .errors import OutboxClosed, OutboxError, StorageState
from .ledger import REPORT_RANGES, SEQ_RESERVE, ledger_ranges
from .limits import (
    DELETE_BATCH,
    DELETE_DELAY_S,
    INSERT_CHUNK,
    MAX_BATCH_ROWS,
    PAGE_SLACK,
    PURGE_INTERVAL_S,
    RATE_WINDOW_S,
)
from .records import ROW_OVERHEAD, Accepted, AcceptStatus, Pending, row_cost
from .schema import SCHEMA_VERSION

__all__ = [
    "DELETE_BATCH",
    "DELETE_DELAY_S",
    "INSERT_CHUNK",
    "MAX_BATCH_ROWS",
    "PAGE_SLACK",
    "PURGE_INTERVAL_S",
    "RATE_WINDOW_S",
    "REPORT_RANGES",
    "ROW_OVERHEAD",
    "SCHEMA_VERSION",
    "SEQ_RESERVE",
    "AcceptStatus",
    "Accepted",
    "Outbox",
    "OutboxClosed",
    "OutboxError",
    "Pending",
    "StorageState",
    "ledger_ranges",
    "row_cost",
]
