"""The server's side of the down branch, for agent tests: a plain aiomqtt client that publishes
config documents and commands to one box and collects everything the box sends up."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import aiomqtt

from polewatch.protocol import KINDS, Body, MessageError, V1Message, build, decode, encode, topics

from .brokers import USERS, BrokerProcess

M = TypeVar("M", bound=V1Message)


class Fleet:
    def __init__(self, client: aiomqtt.Client, device: str) -> None:
        self.client = client
        self.device = device
        self.received: list[V1Message] = []
        self.seq = 0

    async def send(self, body: Body, *, retain: bool = False) -> V1Message:
        """Publish a down message the way the fleet server does (envelope built with the contract)."""
        self.seq += 1
        message = build(body, device_id=self.device, seq=self.seq)
        await self.client.publish(topics.down(self.device, message.kind), encode(message), qos=1, retain=retain)
        return message

    async def publish_raw(self, kind: str, payload: bytes) -> None:
        await self.client.publish(topics.down(self.device, kind), payload, qos=1)

    def of(self, kind: type[M]) -> list[M]:
        return [m for m in self.received if isinstance(m, kind)]

    async def wait_for(self, kind: type[M], check: Callable[[M], bool] = lambda m: True, timeout: float = 30) -> M:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.of(kind):
                if check(message):
                    return message
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {kind.__name__} as expected within {timeout:.0f} s; got {self.of(kind)!r}")

    async def _read(self) -> None:
        async for m in self.client.messages:
            payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
            if not payload:
                continue
            with contextlib.suppress(MessageError):
                self.received.append(decode(payload, kinds=KINDS))


@contextlib.asynccontextmanager
async def fleet(broker: BrokerProcess, device: str = "pole-a") -> AsyncIterator[Fleet]:
    async with aiomqtt.Client(broker.host, broker.port, username="tester", password=USERS["tester"]) as client:
        await client.subscribe(f"{topics.PREFIX}/{device}/up/#", qos=1)
        handle = Fleet(client, device)
        reader = asyncio.create_task(handle._read())
        try:
            yield handle
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await reader


async def eventually(check: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
