"""A hard deadline around a blocking call, for libraries that ignore their own timeouts.

balena-sdk sends every request through `requests` without a timeout (its `timeout` setting is never
passed on), so a half-open link at the pole would hang the technician's command forever.
`asyncio.to_thread` is not enough: the default executor's threads are joined when the event loop
and the interpreter shut down, so a hung call would still hold the command open after its deadline.
Each call here runs on its own daemon thread instead; when the deadline passes, the caller gets
`DeadlineExceeded` at once and the stuck thread is abandoned (it dies with the process).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class DeadlineExceeded(TimeoutError):
    """The call did not return within its deadline; it may still complete later in the background."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"{what} did not answer in {seconds:g} s")
        self.what = what
        self.seconds = seconds


async def call_with_deadline(fn: Callable[[], T], seconds: float, what: str) -> T:
    """Run `fn` off the event loop and give up waiting for it after `seconds`."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def succeed(result: T) -> None:
        if not future.done():  # else the caller gave up already
            future.set_result(result)

    def fail(error: BaseException) -> None:
        if not future.done():
            future.set_exception(error)

    def work() -> None:
        try:
            result = fn()
        except BaseException as exc:  # handed to the waiting coroutine, which re-raises it
            _hand_back(loop, fail, exc)
        else:
            _hand_back(loop, succeed, result)

    threading.Thread(target=work, name=f"deadline:{what}", daemon=True).start()
    try:
        return await asyncio.wait_for(future, seconds)
    except asyncio.TimeoutError:
        raise DeadlineExceeded(what, seconds) from None


def _hand_back(loop: asyncio.AbstractEventLoop, settle: Callable[[T], None], value: T) -> None:
    # RuntimeError: the loop closed while the call was stuck; nobody waits for it any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(settle, value)
