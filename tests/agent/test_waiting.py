"""polewatch.waiting: event waits with a timeout that never swallow a cancellation.

The agent's session and the server's background loops wait on events like this; a swallowed
cancellation keeps such a loop running after it was told to stop (tests/agent/test_uplink.py shows
the whole session hanging that way).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

from polewatch.waiting import wait_done, wait_event


async def _cancelled_as_the_event_is_set(wait: Callable[[asyncio.Event], Awaitable[object]]) -> str:
    event = asyncio.Event()

    async def waiter() -> str:
        try:
            await wait(event)
        except asyncio.CancelledError:
            return "cancelled"
        return "carried on"

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0.01)
    event.set()
    task.cancel()  # in the same loop turn
    return await task


async def test_a_cancellation_at_the_moment_the_event_is_set_is_not_swallowed() -> None:
    assert await _cancelled_as_the_event_is_set(lambda e: wait_event(e, 10)) == "cancelled"
    # The reason for the helper: asyncio.wait_for before Python 3.12 returns instead.
    plain = await _cancelled_as_the_event_is_set(lambda e: asyncio.wait_for(e.wait(), 10))
    assert plain == ("carried on" if sys.version_info < (3, 12) else "cancelled")


async def test_wait_event_says_whether_the_event_came_before_the_timeout() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.05) is False
    asyncio.get_running_loop().call_later(0.02, event.set)
    assert await wait_event(event, 5) is True
    assert await wait_event(event, 0) is True  # already set
    assert len(asyncio.all_tasks()) == 1, "no waiter is left behind"


async def test_wait_done_leaves_a_shared_future_alone() -> None:
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    assert await wait_done(future, 0.05) is False
    assert not future.cancelled(), "another waiter may still want it"
    future.set_result(7)
    assert await wait_done(future, 5) is True and future.result() == 7
