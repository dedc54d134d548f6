"""What callers hand the writer thread, and how its answers get back to threads and event loops.

The one SQLite connection belongs to one thread; everybody else talks to it through these commands.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from polewatch.protocol import V1Message

from ..priority import Priority
from .records import Pending


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
    # A given_up message: the ledger rows it carries, marked as carried in the commit that stores it.
    carries: list[int] | None = None


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
class _Report:
    """Queue a given_up message with the unreported ledger (answered once that message is committed)."""

    limit: int
    reply: _Reply


@dataclass
class _Stop:
    reply: _Reply


_Command = _Put | _Remove | _Flush | _Read | _Call | _Report | _Stop


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
