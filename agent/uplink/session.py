"""The agent's one MQTT connection: presence, draining the outbox, reconnecting forever.

The broker is the only way out of the pole, and it will go away (a fibre cut, a broker restart), so
this loop never gives up: it reconnects with exponential backoff and jitter, announces itself with a
retained `online` presence, leaves a retained `offline` will with the broker, and publishes the
outbox oldest first at QoS 1, deleting a row only once the broker acknowledged it. After a crash
anywhere in between, the worst case is a duplicate, which the server drops by message id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Coroutine
from typing import Any

import aiomqtt

from polewatch.protocol import Presence, encode, topics

from ..config import MqttConfig
from .outbox import Outbox, Pending

log = logging.getLogger("polewatch.agent.uplink")

# How many messages are in flight to the broker at once; paho's own in-flight window is 20.
BATCH = 20
PUBLISH_TIMEOUT_S = 15.0


def backoff_delays(start: float = 0.5, ceiling: float = 30.0) -> list[float]:
    """Doubling delays up to `ceiling`; full jitter is applied when they are used."""
    delays, delay = [], start
    while delay < ceiling:
        delays.append(delay)
        delay *= 2
    delays.append(ceiling)
    return delays


async def _first_failure(*coroutines: Coroutine[Any, Any, None]) -> None:
    """Run coroutines together; when one ends or fails, cancel the rest and re-raise its error.

    (asyncio.TaskGroup does this from Python 3.11; the agent also runs on 3.10.)
    """
    tasks = [asyncio.create_task(c) for c in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        error = task.exception()
        if error is not None:
            raise error
    raise aiomqtt.MqttError("the MQTT session ended")


class Uplink:
    def __init__(self, config: MqttConfig, outbox: Outbox, *, device_id: str, agent_version: str) -> None:
        self.config = config
        self.outbox = outbox
        self.device_id = device_id
        self.agent_version = agent_version
        self.connected = False
        self.published = 0
        self.reconnects = 0
        self._wake = asyncio.Event()
        self._client: aiomqtt.Client | None = None

    def notify(self) -> None:
        """Tell the drain loop that the outbox has something new."""
        self._wake.set()

    def _presence(self, state: str, reason: str) -> bytes:
        body = Presence(state="online" if state == "online" else "offline", agent_version=self.agent_version,
                        reason=reason)
        return encode(self.outbox.stamp(body))

    def _client_for_session(self) -> aiomqtt.Client:
        cfg = self.config
        tls_context = None
        if cfg.tls is not None:
            tls_context = ssl.create_default_context(cafile=str(cfg.tls.ca_file))
            if cfg.tls.cert_file is not None:
                tls_context.load_cert_chain(str(cfg.tls.cert_file), str(cfg.tls.key_file or cfg.tls.cert_file))
        will = aiomqtt.Will(
            topics.up(self.device_id, "presence"),
            self._presence("offline", "connection lost"),
            qos=1,
            retain=True,
        )
        return aiomqtt.Client(
            cfg.host,
            cfg.port,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password else None,
            identifier=self.device_id,
            clean_session=False,
            keepalive=cfg.keepalive_s,
            will=will,
            tls_context=tls_context,
            timeout=10,
        )

    async def run(self) -> None:
        """Stay connected and keep the outbox drained, until cancelled."""
        delays = backoff_delays(ceiling=self.config.reconnect_max_s)
        attempt = 0
        while True:
            delay = 0.0
            try:
                async with self._client_for_session() as client:
                    self._client = client
                    self.connected = True
                    attempt = 0
                    log.info("connected to broker", extra={"broker": f"{self.config.host}:{self.config.port}"})
                    await client.publish(
                        topics.up(self.device_id, "presence"),
                        await asyncio.to_thread(self._presence, "online", "connected"),
                        qos=1,
                        retain=True,
                        timeout=PUBLISH_TIMEOUT_S,
                    )
                    await client.subscribe(topics.device_down_filter(self.device_id), qos=1)
                    await _first_failure(self._drain(client), self._listen(client))
            except aiomqtt.MqttError as exc:
                delay = random.uniform(0, delays[min(attempt, len(delays) - 1)])
                log.warning(
                    "broker connection lost or refused; retrying",
                    extra={"error": str(exc), "retry_in_s": round(delay, 2), "attempt": attempt + 1},
                )
                attempt += 1
                self.reconnects += 1
            finally:
                self._client = None
                self.connected = False
            await asyncio.sleep(delay)

    async def _listen(self, client: aiomqtt.Client) -> None:
        """Read the down branch; the iterator also raises as soon as the link is lost."""
        async for message in client.messages:
            # Config and commands on the down branch are handled by the uplink issue's downlink;
            # until then they are logged so an operator can see they reached the box.
            log.info("down message received", extra={"topic": str(message.topic), "bytes": len(message.payload or b"")})

    async def _drain(self, client: aiomqtt.Client) -> None:
        while True:
            batch = await asyncio.to_thread(self.outbox.peek, BATCH)
            if not batch:
                self._wake.clear()
                # Re-check after clearing, so a message added in between is not left waiting.
                if await asyncio.to_thread(self.outbox.pending_count) == 0:
                    with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout=5.0)
                continue
            results = await asyncio.gather(*(self._publish(client, p) for p in batch), return_exceptions=True)
            acked = [p.row_id for p, r in zip(batch, results, strict=True) if r is None]
            await asyncio.to_thread(self.outbox.remove, acked)
            self.published += len(acked)
            for result in results:
                if isinstance(result, BaseException):
                    raise result

    @staticmethod
    async def _publish(client: aiomqtt.Client, pending: Pending) -> None:
        await client.publish(pending.topic, pending.payload, qos=1, retain=pending.retain, timeout=PUBLISH_TIMEOUT_S)

    async def say_goodbye(self) -> None:
        """On a clean stop, replace the will with an explicit offline presence (reason: shutdown)."""
        client = self._client
        if client is None:
            return
        with contextlib.suppress(aiomqtt.MqttError, asyncio.TimeoutError, TimeoutError):
            await client.publish(
                topics.up(self.device_id, "presence"),
                self._presence("offline", "shutdown"),
                qos=1,
                retain=True,
                timeout=3,
            )
