"""In-process fan-out of what the ingest stored to every open console stream.

The feed is deliberately lossy per subscriber and the database is not: each subscriber has a
bounded buffer, and a subscriber that falls behind is cut off (its stream ends) rather than
slowing the ingest or growing without bound. Its browser reconnects with Last-Event-ID and the
stream replays the missed detections from the database, and a fresh device snapshot replaces
any device updates it missed. So a slow console costs a reconnect, never a lost event.

Everything here runs on the event loop thread; no locks needed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from polewatch.waiting import wait_event

DEFAULT_BUFFER = 1000


@dataclass(frozen=True)
class FeedItem:
    kind: Literal["detection", "device", "alert"]
    data: dict[str, Any]
    id: int | None = None  # the events row id, for detections; the alert_steps row id, for alerts


class Subscription:
    def __init__(self, buffer: int) -> None:
        self._items: deque[FeedItem] = deque()
        self._buffer = buffer
        self._wake = asyncio.Event()
        self.lagged = False
        self.closed = False

    def _push(self, item: FeedItem) -> None:
        if self.closed or self.lagged:
            return
        if len(self._items) >= self._buffer:
            self.lagged = True
        else:
            self._items.append(item)
        self._wake.set()

    def _close(self) -> None:
        self.closed = True
        self._wake.set()

    @property
    def ended(self) -> bool:
        """Closed by the server, or fell behind: finish the stream after what is buffered."""
        return self.closed or self.lagged

    async def next_batch(self, timeout: float | None = None) -> list[FeedItem]:
        """What arrived since the last call; waits for at least one item or the end."""
        if not self._items and not self.ended and not await wait_event(self._wake, timeout):
            return []
        self._wake.clear()
        items = list(self._items)
        self._items.clear()
        return items


class Feed:
    def __init__(self, buffer: int = DEFAULT_BUFFER) -> None:
        self._subs: set[Subscription] = set()
        self._buffer = buffer
        self.closed = False

    @contextmanager
    def subscribe(self) -> Iterator[Subscription]:
        sub = Subscription(self._buffer)
        if self.closed:
            sub._close()
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)

    def publish(self, item: FeedItem) -> None:
        for sub in list(self._subs):
            sub._push(item)

    def close(self) -> None:
        """End every stream (server shutdown), so the HTTP server is not held open by them."""
        self.closed = True
        for sub in list(self._subs):
            sub._close()

    @property
    def subscribers(self) -> int:
        return len(self._subs)
