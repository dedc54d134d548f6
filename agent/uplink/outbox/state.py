"""Everything the outbox keeps in memory, and the few helpers every part of it uses.

The outbox is one class put together from the modules of this package, each a part of the job
(see __init__.py); this is the part they all share. Everything but the locks, the queue and the
plain numbers read by status() is owned by the writer thread.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from polewatch.protocol import topics

from ...config import OutboxConfig
from ..priority import Priority
from .commands import _Command
from .errors import StorageState, _StorageError
from .limits import PURGE_INTERVAL_S, _Limits
from .records import Pending, _GivenUp
from .schema import _COUNTERS, _zero

log = logging.getLogger("polewatch.agent.outbox")


class OutboxState:
    """The state shared by the parts of `Outbox` (the writer thread owns most of it)."""

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
        # queue.Queue, not SimpleQueue. On 3.10 and 3.11, SimpleQueue.get(timeout=t) recomputes the
        # time left after it takes its lock and passes it on unchecked: if that lock was left free by
        # an earlier put and the queue is empty, a short timeout comes out negative, which the C lock
        # takes as "wait forever" (3.13 rewrote it). The writer's commit window makes such timeouts
        # common: in CI on 3.10 a writer sat in an untimed futex wait inside that get (py-spy and
        # /proc) with 1290 messages gathered and uncommitted, their producers waiting with it.
        # queue.Queue counts its timeouts in Python.
        self._queue: queue.Queue[_Command] = queue.Queue()
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

    def _topic(self, kind: str) -> str:
        topic = self._topics.get(kind)
        if topic is None:
            topic = self._topics[kind] = topics.up(self.device_id, kind)
        return topic

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

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _guarded(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as exc:  # housekeeping must never stop the writer
            log.warning("outbox housekeeping failed", extra={"error": str(exc)})

    def _fold_counters(self, counter: str, fresh: Mapping[Priority, int]) -> None:
        """After a commit: the unsaved counts and this commit's `fresh` ones are now on disk."""
        with self._stats_lock:
            for name in _COUNTERS:
                for p, n in self._unsaved[name].items():
                    self._totals[name][p] += n
                self._unsaved[name] = _zero()
            for p, n in fresh.items():
                self._totals[counter][p] += n
