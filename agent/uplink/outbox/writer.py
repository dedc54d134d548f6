"""The writer thread: the one owner of the SQLite connection, and the plumbing that reaches it.

Reads are served at once; writes are gathered for up to one commit window and committed together.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .commands import _Call, _Command, _Flush, _Put, _Read, _Remove, _Reply, _settle, _Stop
from .errors import OutboxClosed
from .housekeeping import _Housekeeping
from .limits import DELETE_DELAY_S, MAX_BATCH_ROWS, PURGE_INTERVAL_S

log = logging.getLogger("polewatch.agent.outbox")

_T = TypeVar("_T")


class _WriterThread(_Housekeeping):
    """The writer thread's loop and timers, and how callers hand it work."""

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
            try:
                self._commit(writes)
            except Exception as exc:
                # A bug before the commit answered its writers would leave their producers awaiting
                # forever (a hang, not an error): answer each with the error (an answered one is skipped).
                _settle([(w.reply, None, exc) for w in writes if w.reply is not None])
                raise
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
