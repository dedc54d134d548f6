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
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

from polewatch.protocol import (
    Body,
    GivenUp,
    GivenUpRange,
    OutboxStatus,
    PriorityCounts,
    V1Message,
    build,
    encode,
    topics,
)

from ..config import OutboxConfig
from .priority import EVICTION_ORDER, REPLAY_ORDER, Priority, priority_of

log = logging.getLogger("polewatch.agent.outbox")

SCHEMA_VERSION = 1
StorageState = Literal["ok", "disk_full", "read_only", "unavailable"]
AcceptStatus = Literal["stored", "held", "dropped", "evicted"]

# Per-row bytes beside payload, id and kind: SQLite's cell header, the seq key, the other columns.
ROW_OVERHEAD = 24
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

_T = TypeVar("_T")


class OutboxError(RuntimeError):
    """The outbox cannot do what was asked; the text says why. Nothing that was accepted is lost."""


class OutboxClosed(OutboxError):
    """The outbox was closed; nothing more can be put into it."""


class _StorageError(Exception):
    """The disk cannot be written (full, read-only, I/O error): the outbox degrades to memory."""

    def __init__(self, state: StorageState, detail: str) -> None:
        super().__init__(detail)
        self.state = state
        self.detail = detail


class _Damaged(Exception):
    """The database file is not a sound SQLite database."""


class Pending(NamedTuple):
    """One message waiting for the broker. `seq` is its sequence number and its key in the outbox.

    (A named tuple, not a dataclass: tens of thousands are made per second at the accept rate goal.)
    """

    seq: int
    priority: Priority
    message_id: str
    kind: str
    topic: str
    payload: bytes
    retain: bool
    created: int  # Unix seconds, for the time-to-live
    cost: int  # roughly the bytes this row takes in the database (see `row_cost`)

    @property
    def row_id(self) -> int:
        """The key to pass to `remove` (the sequence number; kept under this name for callers)."""
        return self.seq


def row_cost(payload: bytes, message_id: str, kind: str) -> int:
    return len(payload) + len(message_id) + len(kind) + ROW_OVERHEAD


class Accepted(NamedTuple):
    """What became of one message handed to `put`/`add`.

    stored: committed to disk (durable). held: kept in memory only, because the disk cannot be written
    right now (it goes to disk once it can). evicted: given up at once because the outbox is full of
    more important messages. dropped: given up because the disk cannot be written and the memory
    allowance is used up (or the class is not kept in memory).
    """

    message: V1Message
    status: AcceptStatus

    @property
    def durable(self) -> bool:
        return self.status == "stored"

    @property
    def id(self) -> str:
        return self.message.id

    @property
    def seq(self) -> int:
        return self.message.seq


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


# --- commands for the writer thread -----------------------------------------------------------------


class _Reply:
    """Where the writer thread sends a command's answer: a waiting thread or an event loop."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop
        self.future: concurrent.futures.Future[Any] | asyncio.Future[Any] = (
            loop.create_future() if loop is not None else concurrent.futures.Future()
        )

    def result(self) -> Any:
        """Block until answered (threads)."""
        assert isinstance(self.future, concurrent.futures.Future)
        return self.future.result()

    async def wait(self) -> Any:
        """Await the answer (event loops)."""
        assert isinstance(self.future, asyncio.Future)
        return await self.future


@dataclass
class _Put:
    rows: list[Pending]
    messages: list[V1Message]
    reply: _Reply | None


@dataclass
class _Remove:
    seqs: list[tuple[int, Priority | None]]
    reply: _Reply | None


@dataclass
class _Flush:
    reply: _Reply | None


@dataclass
class _Read:
    fn: Callable[[], Any]
    reply: _Reply


@dataclass
class _Call:
    """Maintenance that writes (purge, compaction): run right after the pending writes are committed."""

    fn: Callable[[], Any]
    reply: _Reply


@dataclass
class _Stop:
    reply: _Reply


_Command = _Put | _Remove | _Flush | _Read | _Call | _Stop


def _settle(answers: list[tuple[_Reply, Any, BaseException | None]]) -> None:
    """Answer waiting threads directly and each event loop with one callback for all its futures."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, BaseException | None]]] = {}
    for reply, value, error in answers:
        future = reply.future
        if reply.loop is None:
            assert isinstance(future, concurrent.futures.Future)
            if not future.done():
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(value)
        else:
            assert isinstance(future, asyncio.Future)
            by_loop.setdefault(reply.loop, []).append((future, value, error))
    for loop, items in by_loop.items():
        # A closed loop has nobody left to answer.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle_in_loop, items)


def _settle_in_loop(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, value, error in items:
        if future.done():  # the waiter was cancelled; the work was done regardless
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)


# --- schema -------------------------------------------------------------------------------------------


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
# Ranges per given_up message (the wire contract allows up to 1000).
REPORT_RANGES = 500
# Sequence numbers reserved on disk ahead of use. A message held in memory (disk unwritable) is sent
# only if its number is below the reservation, and a run that did not close its outbox makes the
# next one start past the reservation: so a number that went out from memory is never handed out
# again after a crash. Renewed when half used: one meta row every 512 messages.
SEQ_RESERVE = 1024
# (sequence number, class or None when unknown, reason) of one message given up.
_GivenUp = tuple[int, "Priority | None", str]


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


def _counter_key(counter: str, priority: Priority) -> str:
    return f"{counter}.{priority.label}"


def _zero() -> dict[Priority, int]:
    return dict.fromkeys(Priority, 0)


@dataclass
class _Salvage:
    """What could still be read from a damaged file: enough to keep sequence numbers unique."""

    next_seq: int | None = None
    meta: dict[str, int] = field(default_factory=dict)


class Outbox:
    """A durable, size-capped, prioritised queue of encoded messages for one device.

    Safe to use from several threads and event loops at once. Producers call `put`/`put_many` (async)
    or `add` (blocking); the uplink reads with `take_async` and acknowledges with `discard`.
    """

    def __init__(
        self,
        path: Path,
        device_id: str,
        *,
        config: OutboxConfig | None = None,
        clock: Callable[[], float] = time.time,
        retry_s: float = 5.0,
    ) -> None:
        self.path = path
        self.device_id = device_id
        self.config = config or OutboxConfig()
        self.limits = _Limits.for_cap(int(self.config.max_bytes))
        self._clock = clock
        self._retry_s = retry_s
        self._window_s = self.config.group_commit_ms / 1000.0
        self._ttl: dict[Priority, float | None] = {p: getattr(self.config.ttl_s, p.label) for p in Priority}

        self._lock = threading.Lock()  # sequence numbers and queue order
        self._stats_lock = threading.Lock()  # counters read by status() from other threads
        self._queue: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._closed = False
        self._listeners: list[Callable[[], None]] = []
        self._topics: dict[str, str] = {}
        self._insert_sql: dict[tuple[str, int], str] = {}

        # Everything below is owned by the writer thread (read elsewhere only as plain numbers).
        self._conn: sqlite3.Connection | None = None
        self._page_size = 4096
        self._next_seq = 0
        self._counts = _zero()
        self._totals: dict[str, dict[Priority, int]] = {name: _zero() for name in _COUNTERS}
        self._unsaved: dict[str, dict[Priority, int]] = {name: _zero() for name in _COUNTERS}
        self._corrupt_files = 0
        self._counters_since: datetime | None = None
        self._removing: dict[int, Priority | None] = {}  # acknowledged, not yet deleted
        self._removing_n: dict[Priority | None, int] = {}
        self._removing_since: float | None = None
        self._delete_now = False
        self._unsaved_seq = False  # a sequence number was used by no stored row (stamp): save it
        self._held: dict[int, Pending] = {}
        self._held_alerts = 0
        self._held_latest: dict[Priority, int] = {}
        self._state: StorageState = "ok"
        self._last_error: str | None = None
        self._retry_at = 0.0
        self._last_commit = 0.0
        self._commits = 0
        self._written_checkpointed = 0
        self._rate_samples: deque[tuple[float, int]] = deque()
        self._next_purge = time.monotonic() + PURGE_INTERVAL_S
        self._next_compact = time.monotonic() + self.config.compact_interval_s
        self._last_eviction_log = 0.0
        self._ledger_new: list[_GivenUp] = []  # given up, not in the ledger table yet (guarded by _lock)
        self._reports: set[int] = set()  # sequence numbers of given_up messages waiting in the outbox
        self._seq_reserved = 0  # numbers below this are reserved on disk (see SEQ_RESERVE)
        self._opened = False

        try:
            self._conn = self._open()
        except _StorageError as exc:
            self._read_what_we_can()
            self._degrade(exc)
        self._thread = threading.Thread(target=self._run, name=f"outbox-{device_id}", daemon=True)
        self._thread.start()

    # --- producers ------------------------------------------------------------------------------------

    def _enqueue_put(
        self, bodies: Sequence[Body], retain: bool, priority: Priority | None, reply: _Reply | None
    ) -> None:
        """Number, wrap and encode the messages, and queue them in sequence order (all or none)."""
        if not bodies:
            raise ValueError("nothing to put: no message bodies given")
        created = int(self._clock())
        device = self.device_id
        with self._lock:
            if self._closed:
                raise OutboxClosed(f"the outbox {self.path} is closed")
            first = self._next_seq
            rows: list[Pending] = []
            messages: list[V1Message] = []
            try:
                for offset, body in enumerate(bodies):
                    if not isinstance(body, Body):
                        raise TypeError(f"{type(body).__name__} is not a message body")
                    try:
                        message = build(body, device_id=device, seq=first + offset)
                    except KeyError:
                        raise TypeError(f"{type(body).__name__} is not a message kind the outbox can send") from None
                    payload = encode(message)
                    if len(payload) > self.limits.max_message:
                        raise OutboxError(
                            f"a {message.kind} message of {len(payload)} bytes is larger than the outbox takes "
                            f"({self.limits.max_message} bytes with max_bytes={self.limits.max_bytes}); not queued"
                        )
                    kind = message.kind
                    rows.append(
                        Pending(
                            message.seq,
                            priority if priority is not None else priority_of(kind),
                            message.id,
                            kind,
                            self._topic(kind),
                            payload,
                            retain,
                            created,
                            row_cost(payload, message.id, kind),
                        )
                    )
                    messages.append(message)
            except BaseException:
                self._next_seq = first  # nothing was queued: no sequence number is used up
                raise
            self._next_seq = first + len(rows)
            self._queue.put(_Put(rows, messages, reply))

    async def put(self, body: Body, *, retain: bool = False, priority: Priority | None = None) -> Accepted:
        """Queue one message; returns once it is committed to disk (or, if the disk fails, held)."""
        (accepted,) = await self.put_many([body], retain=retain, priority=priority)
        return accepted

    async def put_many(
        self, bodies: Sequence[Body], *, retain: bool = False, priority: Priority | None = None
    ) -> list[Accepted]:
        """Queue several messages in this order; returns once the commit holding them is on disk."""
        reply = _Reply(asyncio.get_running_loop())
        self._enqueue_put(bodies, retain, priority, reply)
        result: list[Accepted] = await reply.wait()
        return result

    def add(self, body: Body, *, retain: bool = False, priority: Priority | None = None) -> Accepted:
        """Blocking `put`: when this returns the message is on disk (see `Accepted.status`)."""
        reply = _Reply()
        self._enqueue_put([body], retain, priority, reply)
        result: list[Accepted] = reply.result()
        return result[0]

    def stamp(self, body: Body) -> V1Message:
        """Number and wrap a message that is not queued (presence: only its latest value matters).

        Blocks until the used sequence number is on disk, so it is never handed out again.
        """
        with self._lock:
            if self._closed:
                raise OutboxClosed(f"the outbox {self.path} is closed")
            message = build(body, device_id=self.device_id, seq=self._next_seq)
            self._next_seq += 1
            self._unsaved_seq = True
            # Published once, never resent (and a last will may never be used): in the ledger, so
            # the server does not wait for it if it never comes.
            self._ledger_new.append((message.seq, priority_of(message.kind), "not_queued"))
            reply = _Reply()
            self._queue.put(_Flush(reply))
        reply.result()
        return message

    def _topic(self, kind: str) -> str:
        topic = self._topics.get(kind)
        if topic is None:
            topic = self._topics[kind] = topics.up(self.device_id, kind)
        return topic

    @property
    def next_seq(self) -> int:
        """The sequence number the next message will get: everything below it was made already."""
        with self._lock:
            return self._next_seq

    # --- the uplink's side ----------------------------------------------------------------------------

    def peek(self, limit: int) -> list[Pending]:
        """The first `limit` messages in replay order: alerts first, oldest first within a class."""
        return self.take(limit)

    def take(
        self,
        limit: int,
        *,
        after: Mapping[Priority, int] | None = None,
        min_seq: int = 0,
        below_seq: int | None = None,
    ) -> list[Pending]:
        """Up to `limit` waiting messages in replay order, per class only those with seq > after[class]
        and min_seq <= seq < below_seq (the uplink keeps one cursor per class)."""
        return self._read(lambda: self._take(limit, after or {}, min_seq, below_seq))

    async def take_async(
        self,
        limit: int,
        *,
        after: Mapping[Priority, int] | None = None,
        min_seq: int = 0,
        below_seq: int | None = None,
    ) -> list[Pending]:
        """`take` for the event loop, without a worker thread of its own."""
        cursors = dict(after or {})
        return await self._read_async(lambda: self._take(limit, cursors, min_seq, below_seq))

    def remove(self, items: Iterable[int | Pending]) -> None:
        """Forget messages the broker acknowledged; returns when that is committed."""
        seqs = self._seqs(items)
        if not seqs:
            return
        reply = _Reply()
        self._submit(_Remove(seqs, reply))
        reply.result()

    def discard(self, items: Iterable[int | Pending]) -> None:
        """Forget acknowledged messages with the next commit, without waiting for it.

        Safe: until that commit a message is merely sent twice after a crash, and the server drops
        the duplicate by its id.
        """
        seqs = self._seqs(items)
        if seqs:
            self._submit(_Remove(seqs, None))

    @staticmethod
    def _seqs(items: Iterable[int | Pending]) -> list[tuple[int, Priority | None]]:
        return [(item.seq, item.priority) if isinstance(item, Pending) else (int(item), None) for item in items]

    def flush(self) -> None:
        """Return when everything queued so far is committed (acknowledgements included)."""
        reply = _Reply()
        self._submit(_Flush(reply))
        reply.result()

    async def flush_async(self) -> None:
        reply = _Reply(asyncio.get_running_loop())
        self._submit(_Flush(reply))
        await reply.wait()

    def pending_count(self) -> int:
        """Messages waiting for the broker: on disk (less those acknowledged) and held in memory."""
        return max(0, sum(self._counts.values()) - len(self._removing)) + len(self._held)

    def _pending(self) -> dict[Priority, int]:
        return {p: max(0, n - self._removing_n.get(p, 0)) for p, n in self._counts.items()}

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the writer thread) after each commit that queued new messages."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    # --- maintenance and reporting ----------------------------------------------------------------

    def purge_expired(self) -> int:
        """Give up messages older than their class's time-to-live now (also done every 30 s)."""
        return self._call(self._purge)

    def compact(self, *, force: bool = False) -> bool:
        """Return free pages to the file system if worth it (also checked every compact_interval_s)."""
        return self._call(lambda: self._compact(force))

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database and empty it."""
        self._call(self._checkpoint)

    def report_given_up(self, limit: int = REPORT_RANGES) -> Accepted | None:
        """Queue a `given_up` message with ledger ranges not yet reported; None when there are none
        (or the disk cannot be written now: the ranges wait in the ledger for the next call)."""
        return self._call(lambda: self._report(limit))

    async def report_given_up_async(self, limit: int = REPORT_RANGES) -> Accepted | None:
        reply = _Reply(asyncio.get_running_loop())
        self._submit(_Call(lambda: self._report(limit), reply))
        result: Accepted | None = await reply.wait()
        return result

    def ledger(self) -> list[tuple[int, int, str | None, str, int | None]]:
        """The ledger as (first, last, class, reason, report_seq): for tests and people."""

        def read() -> list[tuple[int, int, str | None, str, int | None]]:
            if self._conn is None:
                return []
            rows = self._conn.execute("SELECT first, last, class, reason, report_seq FROM given_up ORDER BY first")
            return [(f, la, None if c is None else Priority(c).label, r, rs) for f, la, c, r, rs in rows]

        return self._call(read)

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

    def reconfigure(self, config: OutboxConfig) -> None:
        """Take new limits from a remote config document, without closing the outbox.

        Swapped on the writer thread, between two steps, so a step never mixes old and new limits.
        A lower `max_bytes` is enforced from the next write on (eviction makes the room then);
        `replay_rate` belongs to the uplink.
        """

        def swap() -> None:
            self.config = config
            self.limits = _Limits.for_cap(int(config.max_bytes), self._page_size)
            self._window_s = config.group_commit_ms / 1000.0
            self._ttl = {p: getattr(config.ttl_s, p.label) for p in Priority}
            self._next_compact = min(self._next_compact, time.monotonic() + config.compact_interval_s)

        self._call(swap)

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

    def _total(self, counter: str) -> dict[Priority, int]:
        """Saved count plus what is not on disk yet (while the disk cannot be written)."""
        with self._stats_lock:
            saved, unsaved = self._totals[counter], self._unsaved[counter]
            return {p: saved[p] + unsaved[p] for p in Priority}

    def _fold_counters(self, counter: str, fresh: Mapping[Priority, int]) -> None:
        """After a commit: the unsaved counts and this commit's `fresh` ones are now on disk."""
        with self._stats_lock:
            for name in _COUNTERS:
                for p, n in self._unsaved[name].items():
                    self._totals[name][p] += n
                self._unsaved[name] = _zero()
            for p, n in fresh.items():
                self._totals[counter][p] += n

    @staticmethod
    def _counted(counts: Mapping[Priority, int]) -> PriorityCounts:
        return PriorityCounts(**{p.label: max(0, n) for p, n in counts.items()})

    def close(self) -> None:
        """Commit what is queued, fold the write-ahead log into the database, stop the writer."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            reply = _Reply()
            self._queue.put(_Stop(reply))
        reply.result()
        self._thread.join(timeout=30)

    # --- plumbing between callers and the writer thread ----------------------------------------------

    def _submit(self, command: _Command) -> None:
        with self._lock:
            if self._closed:
                raise OutboxClosed(f"the outbox {self.path} is closed")
            self._queue.put(command)

    def _read(self, fn: Callable[[], _T]) -> _T:
        reply = _Reply()
        self._submit(_Read(fn, reply))
        result: _T = reply.result()
        return result

    async def _read_async(self, fn: Callable[[], _T]) -> _T:
        reply = _Reply(asyncio.get_running_loop())
        self._submit(_Read(fn, reply))
        result: _T = await reply.wait()
        return result

    def _call(self, fn: Callable[[], _T]) -> _T:
        reply = _Reply()
        self._submit(_Call(fn, reply))
        result: _T = reply.result()
        return result

    # --- the writer thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        """The writer thread. It must outlive any bug in one step: producers wait on it."""
        while True:
            try:
                if self._step():
                    return
            except Exception:
                log.exception("outbox writer step failed; carrying on")
                time.sleep(0.1)

    def _step(self) -> bool:
        """Serve reads at once; gather writes for up to one commit window, commit them together.
        True once stopped."""
        try:
            command = self._queue.get(timeout=max(0.0, self._next_timer() - time.monotonic()))
        except queue.Empty:
            self._timers()
            return False
        writes: list[_Put | _Remove | _Flush] = []
        calls: list[_Call] = []
        stop: _Stop | None = None
        rows = 0
        batch_bytes = 0
        due: float | None = None
        while True:
            if isinstance(command, _Read):
                self._answer(command.reply, command.fn)
            elif isinstance(command, _Call):
                calls.append(command)
            elif isinstance(command, _Stop):
                stop = command
            elif isinstance(command, _Remove) and command.reply is None:
                # An acknowledgement: known at once (reads leave it out), deleted in a batch later.
                self._mark_removed(command.seqs)
            else:
                writes.append(command)
                if isinstance(command, _Remove):
                    self._mark_removed(command.seqs)
                    self._delete_now = True
                    due = time.monotonic()
                if isinstance(command, _Put):
                    rows += len(command.rows)
                    batch_bytes += sum(r.cost for r in command.rows)
                if isinstance(command, _Flush):
                    self._delete_now = True
                    due = time.monotonic()
                elif due is None:
                    due = max(time.monotonic(), self._last_commit + self._window_s)
            if stop or calls or rows >= MAX_BATCH_ROWS or batch_bytes >= self.limits.batch_bytes:
                break
            try:
                if due is None:
                    command = self._queue.get_nowait()
                else:
                    command = self._queue.get(timeout=max(0.0, due - time.monotonic()))
            except queue.Empty:
                break
        if writes:
            self._commit(writes)
        for call in calls:
            self._answer(call.reply, call.fn)
        self._timers()
        if stop is not None:
            self._shutdown()
            _settle([(stop.reply, None, None)])
            return True
        return False

    def _answer(self, reply: _Reply, fn: Callable[[], Any]) -> None:
        try:
            value = fn()
        except Exception as exc:  # a bug or an odd disk: the caller gets the error, the writer lives on
            _settle([(reply, None, exc)])
        else:
            _settle([(reply, value, None)])

    def _next_timer(self) -> float:
        timers = [self._next_purge, self._next_compact]
        if self._state != "ok":
            timers.append(self._retry_at)
        elif self._removing_since is not None:
            timers.append(self._removing_since + DELETE_DELAY_S)
        return min(timers)

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

    def _timers(self) -> None:
        now = time.monotonic()
        if self._state != "ok" and now >= self._retry_at:
            self._commit([], retry_now=True)  # try to write the held messages (and with them, whether the disk is back)
        elif self._state == "ok" and self._deletes_due():
            self._commit([])
        if now >= self._next_purge:
            self._next_purge = now + PURGE_INTERVAL_S
            if self._state == "ok":
                self._guarded(self._purge)
        if now >= self._next_compact:
            self._next_compact = now + self.config.compact_interval_s
            if self._state == "ok":
                self._guarded(lambda: self._compact(False))

    def _guarded(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as exc:  # housekeeping must never stop the writer
            log.warning("outbox housekeeping failed", extra={"error": str(exc)})

    # --- committing -----------------------------------------------------------------------------------

    def _commit(self, writes: list[_Put | _Remove | _Flush], *, retry_now: bool = False) -> None:
        puts = [w for w in writes if isinstance(w, _Put)]
        rows = [r for p in puts for r in p.rows]
        statuses: dict[int, AcceptStatus] = {}
        error: BaseException | None = None
        if self._state != "ok" and time.monotonic() < self._retry_at and not retry_now:
            self._hold(rows, statuses)
        else:
            try:
                statuses = self._write(rows)
            except _StorageError as exc:
                self._degrade(exc)
                self._hold(rows, statuses)
            except Exception as exc:  # not a disk condition: a bug; tell every waiter
                log.exception("outbox commit failed")
                error = exc
        self._last_commit = time.monotonic()
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

    def _write(self, rows: list[Pending], report: tuple[int, list[int]] | None = None) -> dict[int, AcceptStatus]:
        """One transaction: acknowledged rows out, held and new rows in (making room), counters, and
        the ledger of what was given up. `report`: (seq of a given_up message among `rows`, ledger
        ids it carries), marked as carried if the message is stored."""
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
                if report is not None and statuses.get(report[0]) == "stored":
                    conn.executemany("UPDATE given_up SET report_seq = ? WHERE id = ?",
                                     [(report[0], i) for i in report[1]])
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
        if report is not None and statuses.get(report[0]) == "stored":
            self._reports.add(report[0])
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

    def _delete_acknowledged(
        self, conn: sqlite3.Connection, removing: Mapping[int, Priority | None], counts: dict[Priority, int]
    ) -> None:
        if not removing:
            return
        by_class: dict[Priority, list[tuple[int]]] = {p: [] for p in Priority}
        unknown: list[tuple[int]] = []
        for seq, priority in removing.items():
            (by_class[priority] if priority is not None else unknown).append((seq,))
        for p in Priority:
            keys = by_class[p] + unknown
            if not keys:
                continue
            table = _table(p)
            if 0 < counts[p] <= len(keys):
                # Everything left in the table may be acknowledged (the usual case once a backlog is
                # sent, and on a quiet pole): then empty it in one go, which frees its pages without
                # writing them, where deleting row by row writes every page once more (SD card).
                acked = {k for (k,) in keys}
                if all(seq in acked for (seq,) in conn.execute(f"SELECT seq FROM {table}")):
                    conn.execute(f"DELETE FROM {table}")
                    counts[p] = 0
                    continue
            cursor = conn.executemany(f"DELETE FROM {table} WHERE seq = ?", keys)
            counts[p] -= max(0, cursor.rowcount)

    def _short_of_room(self, conn: sqlite3.Connection, incoming: list[Pending]) -> bool:
        if not self._removing or not incoming:
            return False
        need = int(sum(r.cost for r in incoming) * PAGE_SLACK)
        return self._used_bytes(conn) + need > self.limits.data_budget

    def _used_bytes(self, conn: sqlite3.Connection) -> int:
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
        return (int(pages) - int(free)) * self._page_size

    def _insert(
        self,
        conn: sqlite3.Connection,
        rows: list[Pending],
        counts: dict[Priority, int],
        evicted: dict[Priority, int],
        statuses: dict[int, AcceptStatus],
        given: list[_GivenUp],
    ) -> None:
        """Insert rows in sequence order; before one would break the budget, give up the oldest rows of
        the least important class (or the new row itself, if everything stored is more important).
        What is given up is added to `given`, for the ledger."""
        if not rows:
            return
        budget = self.limits.data_budget
        used = self._used_bytes(conn)
        if used + int(sum(r.cost for r in rows) * PAGE_SLACK) <= budget:
            by_class: dict[Priority, list[Pending]] = {}
            for r in rows:
                by_class.setdefault(r.priority, []).append(r)
            for p, group in by_class.items():
                self._insert_many(conn, p, group)
                counts[p] += len(group)
            statuses.update(dict.fromkeys((r.seq for r in rows), "stored"))
            return
        # Slow path, row by row: the outbox is at its cap.
        chunk = max(self._page_size, min(budget // 64, 64 * 1024))
        for r in rows:
            cost = int(r.cost * PAGE_SLACK)
            if used + cost > budget:
                used = self._used_bytes(conn)
            fits = True
            while used + cost > budget:
                victim = next((p for p in EVICTION_ORDER if counts[p] > 0), None)
                if victim is None or victim > r.priority:
                    fits = False
                    break
                need = used + cost - budget
                if victim != Priority.ALERT:
                    need = max(need, chunk)  # give up a little more, so the next rows do not each evict
                gone = self._evict_oldest(conn, victim, need)
                # Nothing there after all (the count was off): believe the table, not the count.
                counts[victim] = counts[victim] - len(gone) if gone else 0
                evicted[victim] += len(gone)
                given.extend((seq, victim, "evicted") for seq in gone)
                used = self._used_bytes(conn)
            if not fits:
                evicted[r.priority] += 1
                given.append((r.seq, r.priority, "evicted"))
                statuses[r.seq] = "evicted"
                continue
            self._insert_many(conn, r.priority, [r])
            counts[r.priority] += 1
            used += cost
            statuses[r.seq] = "stored"

    def _insert_many(self, conn: sqlite3.Connection, priority: Priority, rows: list[Pending]) -> None:
        """Insert with multi-row statements: one statement step per chunk instead of one per row, so
        the writer thread gives up and retakes the GIL far less often while producers are busy."""
        table = _table(priority)
        for start in range(0, len(rows), INSERT_CHUNK):
            chunk = rows[start : start + INSERT_CHUNK]
            sql = self._insert_sql.get((table, len(chunk)))
            if sql is None:
                sql = (
                    f"INSERT INTO {table} (seq, message_id, kind, payload, retain, created) VALUES "
                    + ",".join(["(?,?,?,?,?,?)"] * len(chunk))
                )
                if len(chunk) == INSERT_CHUNK or len(chunk) == 1:
                    self._insert_sql[(table, len(chunk))] = sql
            params: list[Any] = []
            for r in chunk:
                params += (r.seq, r.message_id, r.kind, r.payload, int(r.retain), r.created)
            conn.execute(sql, params)

    def _evict_oldest(self, conn: sqlite3.Connection, priority: Priority, need: int) -> list[int]:
        """Delete the oldest rows of one class whose sizes add up to `need` bytes (at least one row);
        returns their sequence numbers."""
        table = _table(priority)
        found = conn.execute(
            f"SELECT seq, length(payload) + length(message_id) + length(kind) + {ROW_OVERHEAD} "
            f"FROM {table} ORDER BY seq LIMIT 1024"
        ).fetchall()
        if not found:
            return []
        total, last = 0, found[-1][0]
        for seq, cost in found:
            total += int(cost * PAGE_SLACK)
            if total >= need:
                last = seq
                break
        conn.execute(f"DELETE FROM {table} WHERE seq <= ?", (last,))
        return [seq for seq, _ in found if seq <= last]

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

    def _report(self, limit: int) -> Accepted | None:
        """The writer thread's side of `report_given_up`."""
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
        with self._lock:
            if self._closed:
                return None
            message = build(body, device_id=self.device_id, seq=self._next_seq)
            self._next_seq += 1
        payload = encode(message)
        row = Pending(message.seq, priority_of(message.kind), message.id, message.kind, self._topic(message.kind),
                      payload, False, int(self._clock()), row_cost(payload, message.id, message.kind))
        statuses: dict[int, AcceptStatus] = {}
        try:
            statuses = self._write([row], report=(row.seq, [i for i, *_ in found]))
        except _StorageError as exc:
            # Held like any alert; its ranges stay unreported and go out again in a later report.
            self._degrade(exc)
            self._hold([row], statuses)
        for listener in list(self._listeners):
            with contextlib.suppress(Exception):
                listener()
        return Accepted(message, statuses.get(row.seq, "dropped"))

    def _save_meta(
        self, conn: sqlite3.Connection, unsaved: Mapping[str, Mapping[Priority, int]], *, persist_seq: bool = True
    ) -> None:
        values: list[tuple[str, int]] = []
        if persist_seq:
            with self._lock:
                values.append(("next_seq", self._next_seq))
        for name in _COUNTERS:
            for p, n in unsaved[name].items():
                if n:
                    values.append((_counter_key(name, p), self._totals[name][p] + n))
        if values:
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                values,
            )

    def _log_eviction(self, evicted: Mapping[Priority, int]) -> None:
        # At the cap during a long outage every commit evicts: log the running totals once a minute.
        now = time.monotonic()
        if now - self._last_eviction_log < (10.0 if evicted[Priority.ALERT] else 60.0):
            return
        self._last_eviction_log = now
        log.warning(
            "outbox full: oldest messages given up",
            extra={
                "this_commit": {p.label: n for p, n in evicted.items() if n},
                "evicted_total": {p.label: n for p, n in self._totals["evicted"].items()},
                "max_bytes": self.limits.max_bytes,
            },
        )

    # --- when the disk cannot be written -------------------------------------------------------------

    def _storage_error(self, exc: BaseException) -> _StorageError:
        text = str(exc)
        lowered = text.lower()
        err = getattr(exc, "errno", None)
        if "full" in lowered or err == errno.ENOSPC:
            return _StorageError("disk_full", text)
        if "readonly" in lowered or "read-only" in lowered or err == errno.EROFS or not self._dir_writable():
            return _StorageError("read_only", text)
        return _StorageError("unavailable", text)

    def _dir_writable(self) -> bool:
        return os.access(self.path.parent, os.W_OK)

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

    # --- reading --------------------------------------------------------------------------------------

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

    # --- opening, damage, schema -------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        """Open or create the database. A damaged file is moved aside and replaced by a new one."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._storage_error(exc) from exc
        try:
            return self._connect()
        except _Damaged as damage:
            aside = self._move_aside()
            salvage = self._salvage(aside)
            log.error(
                "outbox database damaged: moved aside, starting a new one",
                extra={"path": str(self.path), "moved_to": str(aside), "problem": str(damage),
                       "salvaged_next_seq": salvage.next_seq},
            )
            floor = salvage.next_seq
            if floor is None:
                # Nothing readable: jump to a value no earlier message can have had (see docs/outbox.md).
                floor = int(self._clock() * 1000)
            with self._lock:
                self._next_seq = max(self._next_seq, floor)
            try:
                conn = self._connect(corruption=salvage)
            except _Damaged as again:
                raise _StorageError("unavailable", f"a new outbox database is damaged too: {again}") from again
            return conn

    def _connect(self, corruption: _Salvage | None = None) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=0)
        except sqlite3.Error as exc:
            raise self._storage_error(exc) from exc
        try:
            # One process, one connection: no shared-memory index file to write back (SD card), and a
            # second agent on the same state dir is refused instead of interleaving.
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch the journal to WAL (got {mode}): read-only?")
            conn.execute("PRAGMA synchronous=FULL")
            # Freed pages are zeroed only where that costs no extra write (this SQLite zeroes always).
            conn.execute("PRAGMA secure_delete=FAST")
            conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints are ours: counted, and off the hot path
            problems = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                raise _Damaged("; ".join(problems[:3]))
            self._schema(conn, corruption)
            self._load(conn)
        except _Damaged:
            conn.close()
            raise
        except sqlite3.OperationalError as exc:
            conn.close()
            if "locked" in str(exc).lower():
                raise OutboxError(f"the outbox {self.path} is in use by another process (a second agent?)") from exc
            raise self._storage_error(exc) from exc
        except sqlite3.DatabaseError as exc:  # not a database, malformed: SQLITE_NOTADB, SQLITE_CORRUPT
            conn.close()
            raise _Damaged(str(exc)) from exc
        except OutboxError:
            conn.close()
            raise
        return conn

    def _schema(self, conn: sqlite3.Connection, corruption: _Salvage | None) -> None:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise OutboxError(
                f"the outbox {self.path} has schema {version}, newer than this agent's {SCHEMA_VERSION}; "
                "it was written by a newer agent: move it away or run that agent"
            )
        now = int(self._clock())
        conn.execute("BEGIN IMMEDIATE")
        try:
            if version < SCHEMA_VERSION:
                legacy = self._read_legacy(conn)
                for p in Priority:
                    conn.execute(_TABLE_DDL.format(table=_table(p)))
                conn.execute(_META_DDL)
                conn.execute(_VIEW_DDL)
                meta = {"next_seq": 0, "created_at": now}
                meta.update(legacy[1])
                if corruption is not None:
                    meta.update(corruption.meta)  # counters carry on, with the time they started
                    meta["corrupt_files"] = corruption.meta.get("corrupt_files", 0) + 1
                    meta["next_seq"] = max(meta.get("next_seq", 0), self._next_seq)
                conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(meta.items()))
                for p, group in legacy[0].items():
                    conn.executemany(
                        f"INSERT OR IGNORE INTO {_table(p)} (seq, message_id, kind, payload, retain, created) "
                        "VALUES (?,?,?,?,?,?)",
                        group,
                    )
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute(_LEDGER_DDL)  # also into outboxes made before the ledger existed
            if corruption is not None:
                # Whatever still waited in the damaged file is gone with it: every number below the
                # new start is given up, unless the server has it already.
                first_free = max(int(meta.get("next_seq", 0)), self._next_seq) if version < SCHEMA_VERSION else 0
                if first_free > 0:
                    conn.execute(
                        "INSERT INTO given_up (first, last, class, reason) VALUES (0, ?, NULL, 'outbox_replaced')",
                        (first_free - 1,),
                    )
            # A write on every open: a read-only disk shows itself now, not at the first event.
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('opened_at', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (now,),
            )
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def _read_legacy(
        self, conn: sqlite3.Connection
    ) -> tuple[dict[Priority, list[tuple[int, str, str, bytes, int, int]]], dict[str, int]]:
        """Rows and counters of the first outbox (one `outbox` table, schema 0), moved to the new tables."""
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        rows: dict[Priority, list[tuple[int, str, str, bytes, int, int]]] = {}
        meta: dict[str, int] = {}
        if "outbox" not in names:
            return rows, meta
        now = int(self._clock())
        for message_id, topic, payload, retain in conn.execute(
            "SELECT message_id, topic, payload, retain FROM outbox ORDER BY row_id"
        ):
            kind = str(topic).rsplit("/", 1)[-1]
            try:
                seq = int(json.loads(payload)["seq"])
                priority = priority_of(kind)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("legacy outbox row unreadable; left out", extra={"message_id": message_id, "error": str(exc)})
                continue
            rows.setdefault(priority, []).append((seq, str(message_id), kind, bytes(payload), int(retain), now))
        if "meta" in names:
            meta = {str(k): int(v) for k, v in conn.execute("SELECT key, value FROM meta")}
            conn.execute("DROP TABLE meta")
        conn.execute("DROP TABLE outbox")
        highest = max((r[0] for group in rows.values() for r in group), default=-1)
        meta["next_seq"] = max(meta.get("next_seq", 0), highest + 1)
        log.info("outbox migrated to priority classes", extra={"messages": sum(len(g) for g in rows.values())})
        return rows, meta

    def _load(self, conn: sqlite3.Connection) -> None:
        (self._page_size,) = conn.execute("PRAGMA page_size").fetchone()
        meta = {str(k): int(v) for k, v in conn.execute("SELECT key, value FROM meta")}
        highest = -1
        counts = _zero()
        for p in Priority:
            count, top = conn.execute(f"SELECT COUNT(*), MAX(seq) FROM {_table(p)}").fetchone()
            counts[p] = int(count)
            if top is not None:
                highest = max(highest, int(top))
        self._counts = counts
        self._reports = {
            int(seq) for (seq,) in conn.execute("SELECT DISTINCT report_seq FROM given_up WHERE report_seq IS NOT NULL")
        }
        for name in _COUNTERS:
            for p in Priority:
                self._totals[name][p] = meta.get(_counter_key(name, p), 0)
        self._corrupt_files = meta.get("corrupt_files", 0)
        created = meta.get("created_at")
        self._counters_since = datetime.fromtimestamp(created, timezone.utc) if created else None
        saved = max(meta.get("next_seq", 0), highest + 1)
        reserved = meta.get("seq_reserved", 0)
        first_open = not self._opened
        with self._lock:
            # After an unclean stop the last run may have sent numbers up to its reservation from
            # memory: start past them (a reopen within this run knows its own numbers).
            self._next_seq = max(self._next_seq, saved, reserved if first_open else 0)
            start = self._next_seq
        self._opened = True
        conn.execute("BEGIN IMMEDIATE")
        try:
            if first_open and reserved > saved:
                conn.execute(
                    "INSERT INTO given_up (first, last, class, reason) VALUES (?, ?, NULL, 'skipped')",
                    (saved, reserved - 1),
                )
                log.warning("outbox was not closed cleanly; sequence numbers skipped",
                            extra={"first": saved, "last": reserved - 1})
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('seq_reserved', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (start + SEQ_RESERVE,),
            )
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        self._seq_reserved = start + SEQ_RESERVE

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

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    # --- write-ahead log, time-to-live, compaction ----------------------------------------------------

    def _wal_size(self) -> int:
        try:
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

    def _maybe_checkpoint(self) -> None:
        if self._wal_size() >= self.limits.checkpoint_at:
            self._guarded(self._checkpoint)

    def _checkpoint(self) -> None:
        """Copy the log into the database and truncate it, counting the bytes both steps write."""
        conn = self._conn
        if conn is None:
            return
        wal = self._wal_size()
        try:
            _busy, _frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.OperationalError as exc:
            raise self._storage_error(exc) from exc
        if self._wal_size() < wal:
            # A checkpoint writes each page once, however many frames it has in the log.
            (pages,) = conn.execute("PRAGMA page_count").fetchone()
            self._written_checkpointed += wal + min(max(0, int(copied)), int(pages)) * self._page_size

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
