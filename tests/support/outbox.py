"""Message bodies of each outbox priority class, for the outbox tests (no server imports here).

There is no snapshot message kind yet (a later issue brings pictures), so snapshots are presence
bodies carrying a picture-sized payload, put with `priority=Priority.SNAPSHOT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiomqtt
from pydantic import SecretStr

from polewatch.agent.config import MqttConfig, OutboxConfig
from polewatch.agent.uplink.outbox import Outbox
from polewatch.agent.uplink.priority import Priority
from polewatch.agent.uplink.session import Uplink
from polewatch.protocol import Body, Box, CameraStatus, Detection, Health, Presence, decode

from .brokers import USERS, BrokerProcess


def alert(n: int) -> Detection:
    return Detection(
        event_id=f"trk-{n}",
        phase="start",
        camera_id="cam1",
        label="person",
        score=0.8,
        box=Box(x1=0.1, y1=0.2, x2=0.3, y2=0.6),
        frame_time=datetime.now(timezone.utc),
        frame_width=768,
        frame_height=576,
    )


def telemetry(n: int) -> Health:
    return Health(
        agent_version=f"test-{n}",
        uptime_s=float(n),
        cpu_percent=12.5,
        memory_percent=40.0,
        memory_rss_bytes=200_000_000,
        disk_percent=30.0,
        disk_free_bytes=10_000_000_000,
        cameras=[CameraStatus(camera_id="cam1", connected=True, fps=10.0)],
    )


def health_event(n: int) -> Presence:
    return Presence(state="online", reason=f"event-{n}")


def snapshot(n: int, size: int = 2000) -> Presence:
    return Presence(state="online", reason=f"snap-{n}-" + "x" * size)


MAKERS: dict[Priority, Any] = {
    Priority.TELEMETRY: telemetry,
    Priority.SNAPSHOT: snapshot,
    Priority.HEALTH_EVENT: health_event,
    Priority.ALERT: alert,
}


def body_of(priority: Priority, n: int) -> Body:
    body: Body = MAKERS[priority](n)
    return body


def open_outbox(path: Path, device: str = "pole-a", *, retry_s: float = 0.2, **config: Any) -> Outbox:
    """An outbox with a test config: `group_commit_ms` defaults to 2 so blocking `add`s stay quick,
    and a disk that failed is tried again every `retry_s`."""
    values: dict[str, Any] = {"group_commit_ms": 2.0}
    values.update(config)
    return Outbox(path, device, config=OutboxConfig(**values), retry_s=retry_s)


def mqtt_config(broker: BrokerProcess, device: str = "pole-a") -> MqttConfig:
    return MqttConfig(host=broker.host, port=broker.port, username=device, password=SecretStr(USERS[device]),
                      keepalive_s=5, reconnect_max_s=1.0)


@dataclass
class Arrivals:
    """Every message seen on the pole's up branch: (arrival time, message id), in arrival order."""

    seen: list[tuple[float, str]] = field(default_factory=list)

    def ids(self) -> list[str]:
        return [i for _, i in self.seen]

    def at(self, message_id: str) -> float:
        return next(t for t, i in self.seen if i == message_id)


@contextlib.asynccontextmanager
async def listening(broker: BrokerProcess, device: str = "pole-a") -> AsyncIterator[Arrivals]:
    arrivals = Arrivals()
    ready = asyncio.Event()

    async def listen() -> None:
        with contextlib.suppress(aiomqtt.MqttError):  # the test may kill the broker under us
            async with aiomqtt.Client(broker.host, broker.port, username="tester",
                                      password=USERS["tester"]) as client:
                await client.subscribe(f"polewatch/v1/{device}/up/#", qos=1)
                ready.set()
                async for message in client.messages:
                    arrivals.seen.append((time.monotonic(), decode(message.payload).id))

    task = asyncio.create_task(listen())
    await asyncio.wait_for(ready.wait(), 15)
    try:
        yield arrivals
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def running(uplink: Uplink) -> AsyncIterator[None]:
    task = asyncio.create_task(uplink.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
