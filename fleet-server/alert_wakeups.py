"""Wakes this replica's live alert streams when another replica stores an alert step.

The alert stream reads steps from the database in id order (alerts_stream.py); this only says
"there is something new". A step written here already wakes the streams through the local feed;
a step written by another replica (the broker's shared subscription handed it the message, or an
operator clicked there) reaches this one by:

- PostgreSQL: LISTEN on the channel every step NOTIFYs at commit (alerts.py), on a connection of
  its own: the wake-up comes within milliseconds;
- every engine: a poll of the newest step id every `alert_poll_s`, which covers SQLite, a
  notification lost while the LISTEN connection was being re-established, and a database that
  refuses LISTEN (a pooler in transaction mode).

Either way the wake-up is a FeedItem("alert") without data; the streams never trust its payload,
only the rows, so a spurious or repeated wake-up costs one cheap query and sends nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from polewatch.waiting import wait_event

from . import alerts
from .feed import Feed, FeedItem

log = logging.getLogger(__name__)

CHANNEL = alerts.STEP_CHANNEL
RELISTEN_S = 2.0
# How long one wait for notifications lasts: the listener checks whether it must stop between waits,
# so stopping never depends on how the driver handles a cancellation in the middle of one.
NOTIFY_WAIT_S = 1.0


class AlertWakeups:
    def __init__(self, engine: Engine, sessions: sessionmaker[Session], feed: Feed, poll_s: float) -> None:
        self._engine = engine
        self._sessions = sessions
        self._feed = feed
        self._poll_s = poll_s
        self._seen = 0
        self._nudge = asyncio.Event()
        self._stopping = False

    def _latest(self) -> int:
        with self._sessions() as session:
            return alerts.latest_step_id(session)

    async def _check(self) -> None:
        latest = await asyncio.to_thread(self._latest)
        if latest > self._seen:
            self._seen = latest
            self._feed.publish(FeedItem("alert", {}, latest))

    async def run(self) -> None:
        self._seen = await asyncio.to_thread(self._latest)
        listener = (
            asyncio.create_task(self._listen(), name="alert-listen")
            if self._engine.dialect.name == "postgresql"
            else None
        )
        try:
            while True:
                await wait_event(self._nudge, self._poll_s)
                self._nudge.clear()
                try:
                    await self._check()
                except Exception:  # the database is away for a moment: the next tick tries again
                    log.warning("could not look for new alert steps", exc_info=True)
        finally:
            self._stopping = True
            if listener is not None:
                listener.cancel()
                await asyncio.wait([listener], timeout=NOTIFY_WAIT_S + RELISTEN_S + 1)

    def _woken(self, payload: str) -> None:
        """A NOTIFY carries the step id: wake the streams at once, without a query."""
        try:
            step_id = int(payload)
        except ValueError:
            self._nudge.set()
            return
        if step_id > self._seen:
            self._seen = step_id
            self._feed.publish(FeedItem("alert", {}, step_id))

    async def _listen(self) -> None:
        import psycopg

        url = self._engine.url.set(drivername="postgresql")
        conninfo: dict[str, Any] = {
            k: v
            for k, v in {
                "host": url.host, "port": url.port, "dbname": url.database, "user": url.username,
                "password": url.password, **{k: str(v) for k, v in url.query.items()},
            }.items()
            if v is not None
        }  # fmt: skip
        while not self._stopping:
            try:
                async with await psycopg.AsyncConnection.connect(autocommit=True, **conninfo) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._nudge.set()  # anything committed while we were not listening
                    while not self._stopping:
                        async for note in conn.notifies(timeout=NOTIFY_WAIT_S):
                            self._woken(note.payload)
            except (psycopg.Error, OSError):
                if self._stopping:
                    return
                log.warning("LISTEN for alert steps failed; polling until it is back", exc_info=True)
            if not self._stopping:
                await asyncio.sleep(RELISTEN_S)
