"""The tables on disk: one per priority class, the counters, the ledger of numbers given up.

Rows are appended once and deleted once, and each class's table stays dense, so giving up the
oldest rows of a class frees whole pages (SD card).
"""

from __future__ import annotations

from ..priority import REPLAY_ORDER, Priority

SCHEMA_VERSION = 1


def _table(priority: Priority) -> str:
    return f"q_{priority.label}"


_TABLE_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    seq INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL,
    created INTEGER NOT NULL
)"""


_META_DDL = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID"


# For people with the sqlite3 shell (with the agent stopped): every waiting message, in replay order.
_VIEW_DDL = "CREATE VIEW IF NOT EXISTS outbox AS " + " UNION ALL ".join(
    f"SELECT * FROM (SELECT seq, '{p.label}' AS class, message_id, kind, payload, retain, created "
    f"FROM {_table(p)} ORDER BY seq)"
    for p in REPLAY_ORDER
)


_COUNTERS = ("evicted", "expired", "dropped")


# The ledger of sequence numbers given up: ranges of one class and reason. `report_seq` is the given_up
# message that carries the range (NULL: not reported yet); the range is deleted once that message is
# acknowledged, and made unreported again if that message is itself given up.
_LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS given_up (
    id INTEGER PRIMARY KEY,
    first INTEGER NOT NULL,
    last INTEGER NOT NULL,
    class INTEGER,
    reason TEXT NOT NULL,
    report_seq INTEGER
)"""


def _counter_key(counter: str, priority: Priority) -> str:
    return f"{counter}.{priority.label}"


def _zero() -> dict[Priority, int]:
    return dict.fromkeys(Priority, 0)
