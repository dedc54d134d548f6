"""Waiting on an event with a timeout, without losing a cancellation.

Before Python 3.12, `asyncio.wait_for(event.wait(), timeout)` returns normally when the event is set
in the same loop turn as the caller is cancelled: the cancellation is swallowed. A loop that waits
like that (the agent's MQTT session between reconnects or for news, the server's background jobs)
then carries on and never stops, and a shutdown that waits for it hangs. The agent must run on
Python 3.10 (Jetson JetPack 6), so `asyncio.timeout` is not there either. `asyncio.wait` never
swallows a cancellation: it is what these helpers use. Shared by the agent and the server, which
import nothing of each other.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """True once `event` is set, False after `timeout` seconds; a cancellation always propagates."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()
    return bool(done)


async def wait_done(future: asyncio.Future[Any], timeout: float | None) -> bool:
    """True once `future` is done, False after `timeout` seconds; `future` is left running either way
    (it may be shared with other waiters), and a cancellation of the caller always propagates."""
    done, _ = await asyncio.wait({future}, timeout=timeout)
    return bool(done)
