"""The writer thread: the one owner of the SQLite connection, and the plumbing that reaches it.

Reads are served at once; writes are gathered for up to one commit window and committed together.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from polewatch.protocol import Body, V1Message, build, encode

from ..priority import Priority, priority_of
from .commands import _Call, _Command, _Flush, _Put, _Read, _Remove, _Reply, _Report, _settle, _Stop
from .errors import OutboxClosed, OutboxError
from .housekeeping import _Housekeeping
from .limits import DELETE_DELAY_S, MAX_BATCH_ROWS, PURGE_INTERVAL_S
from .records import Pending, row_cost

log = logging.getLogger("polewatch.agent.outbox")

_T = TypeVar("_T")


class _WriterThread(_Housekeeping):
    """The writer thread's loop and timers, and how callers hand it work."""

    def _submit(self, command: _Command) -> None:
        with self._lock:
            if self._closed:
                raise OutboxClosed(f"the outbox {self.path} is closed")
            self._queue.put(command)

    def _enqueue_put(
        self,
        bodies: Sequence[Body],
        retain: bool,
        priority: Priority | None,
        reply: _Reply | None,
        carries: list[int] | None = None,
    ) -> None:
        """Number, wrap and encode the messages, and queue them in sequence order (all or none).

        Numbering and queueing under one lock is what keeps the disk in sequence order within a class
        (the uplink reads each class with a cursor): the writer thread queues its own reports this way.
        """
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
            self._queue.put(_Put(rows, messages, reply, carries))

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
        calls: list[_Call | _Report] = []
        stop: _Stop | None = None
        rows = 0
        batch_bytes = 0
        due: float | None = None
        while True:
            if isinstance(command, _Read):
                self._answer(command.reply, command.fn)
            elif isinstance(command, (_Call, _Report)):
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
            try:
                self._commit(writes)
            except Exception as exc:
                # A bug before the commit answered its writers would leave their producers awaiting
                # forever (a hang, not an error): answer each with the error (an answered one is skipped).
                _settle([(w.reply, None, exc) for w in writes if w.reply is not None])
                raise
        for call in calls:
            if isinstance(call, _Report):
                self._queue_report(call)
            else:
                self._answer(call.reply, call.fn)
        self._timers()
        if stop is not None:
            self._shutdown()
            _settle([(stop.reply, None, None)])
            return True
        return False

    def _queue_report(self, command: _Report) -> None:
        """A given_up message with what the ledger has not reported, queued like a producer's message;
        its caller is answered when it is committed (at once with None when there is nothing)."""
        limit = command.limit
        try:
            while (found := self._unreported(limit)) is not None:
                body, carries = found
                try:
                    self._enqueue_put([body], False, None, command.reply, carries)
                    return
                except OutboxClosed:
                    raise
                except OutboxError:
                    if len(carries) == 1:
                        raise
                    limit = len(carries) // 2  # more ranges than one message may carry in a small outbox
        except OutboxClosed:
            pass  # closing: the ranges stay in the ledger for the next run
        except Exception as exc:  # a bug or an odd disk: the caller gets the error, the writer lives on
            _settle([(command.reply, None, exc)])
            return
        _settle([(command.reply, None, None)])

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
