"""The `Outbox` class: what producers and the uplink call."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from polewatch.protocol import Body, V1Message, build

from ...config import OutboxConfig
from ..priority import Priority, priority_of
from .commands import _Flush, _Remove, _Reply, _Report, _Stop
from .errors import OutboxClosed, _StorageError
from .ledger import REPORT_RANGES
from .limits import _Limits
from .reading import _Reading
from .records import Accepted, Pending
from .status import _Status
from .writer import _WriterThread


class Outbox(_WriterThread, _Reading, _Status):
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
        super().__init__(path, device_id, config=config, clock=clock, retry_s=retry_s)
        try:
            self._conn = self._open()
        except _StorageError as exc:
            self._read_what_we_can()
            self._degrade(exc)
        self._thread = threading.Thread(target=self._run, name=f"outbox-{device_id}", daemon=True)
        self._thread.start()

    # --- producers ------------------------------------------------------------------------------------

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

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the writer thread) after each commit that queued new messages."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    # --- maintenance and reporting --------------------------------------------------------------------

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
        reply = _Reply()
        self._submit(_Report(limit, reply))
        return _only(reply.result())

    async def report_given_up_async(self, limit: int = REPORT_RANGES) -> Accepted | None:
        reply = _Reply(asyncio.get_running_loop())
        self._submit(_Report(limit, reply))
        return _only(await reply.wait())

    def ledger(self) -> list[tuple[int, int, str | None, str, int | None]]:
        """The ledger as (first, last, class, reason, report_seq): for tests and people."""

        def read() -> list[tuple[int, int, str | None, str, int | None]]:
            if self._conn is None:
                return []
            rows = self._conn.execute("SELECT first, last, class, reason, report_seq FROM given_up ORDER BY first")
            return [(f, la, None if c is None else Priority(c).label, r, rs) for f, la, c, r, rs in rows]

        return self._call(read)

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


def _only(answer: list[Accepted] | None) -> Accepted | None:
    """A report's answer: the commit's list of one, or None when there was nothing to report."""
    return answer[0] if answer else None
