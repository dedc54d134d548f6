"""A whole agent (polewatch.agent.runtime.Agent) running in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from polewatch.agent.config import AgentConfig
from polewatch.agent.runtime import Agent

from .fleet import eventually


@contextlib.asynccontextmanager
async def running(config: AgentConfig) -> AsyncIterator[Agent]:
    """Yields once the agent has subscribed to its down branch; on exit checks it is still running
    (it must never have stopped by itself), then stops it."""
    agent = Agent(config)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await eventually(lambda: agent.uplink.subscriptions >= 1 or task.done(), 30, "the agent to subscribe")
        assert not task.done(), task.exception()
        yield agent
        assert not task.done(), "the agent is still running"
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)
