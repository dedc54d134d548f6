"""The agent's one MQTT connection: presence, draining the outbox, reconnecting forever.

The broker is the only way out of the pole, and it will go away (a fibre cut, a broker restart), so
this loop never gives up: it reconnects with exponential backoff and jitter, announces itself with a
retained `online` presence, leaves a retained `offline` will with the broker, and publishes the
outbox at QoS 1, deleting a message only once the broker acknowledged it. After a crash anywhere in
between, the worst case is a duplicate, which the server drops by message id.

After a reconnect, what waited in the outbox (the backlog) is replayed alerts first, oldest first
within a class, paced by a token bucket (`outbox.replay_rate`) so a pole coming back does not flood
its link or the broker; messages made after the reconnect (live) go out as they come, ahead of the
backlog, so a long replay never holds back what is happening now.

`switch` moves the session to another broker (a signed move, agent/uplink/move.py) without a
duplicate: no new publish starts, those in flight get their acknowledgement, an `offline` presence
says where the box went, and the next connection goes to the new endpoint; what is still in the
outbox is sent there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import aiomqtt

from polewatch.protocol import Presence, encode, topics
from polewatch.waiting import wait_done, wait_event

from ..config import MqttConfig
from .outbox import Outbox, OutboxError, Pending
from .priority import Priority

log = logging.getLogger("polewatch.agent.uplink")

# How many messages are in flight to the broker at once (unacknowledged QoS 1 publishes); the
# client's own in-flight window is set to the same, so none wait inside paho.
INFLIGHT = 20
# Messages read from the outbox per visit to its writer thread.
FETCH = 1000
# Acknowledgements handed to the outbox together (one hop to its writer thread per group).
ACK_GROUP = 1024
PUBLISH_TIMEOUT_S = 15.0


class _Switching(Exception):
    """The drain stopped cleanly because the session moves to another broker."""


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


class TokenBucket:
    """Paces the replay: on average `rate` messages per second, at most `burst` at once."""

    def __init__(self, rate: float | None, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else (max(1.0, rate / 10.0) if rate else 1.0)
        self._tokens = self.burst
        self._stamp = time.monotonic()

    def delay(self) -> float:
        """Seconds until one token is available (0: take it now with `take`)."""
        if self.rate is None:
            return 0.0
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate

    def take(self) -> None:
        if self.rate is not None:
            self._tokens -= 1.0


class Uplink:
    """The one MQTT session of the agent: presence, replay and live publishing from the outbox.

    `replay_rate` (messages/s, None: unpaced) bounds only the backlog found at each connect; live
    messages are never held back. `inflight` publishes at most wait for their acknowledgement.
    """

    def __init__(
        self,
        config: MqttConfig,
        outbox: Outbox,
        *,
        device_id: str,
        agent_version: str,
        replay_rate: float | None = None,
        inflight: int = INFLIGHT,
        on_down: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self.config = config
        self.on_down = on_down
        self.outbox = outbox
        self.device_id = device_id
        self.agent_version = agent_version
        self.replay_rate = replay_rate
        self.inflight = inflight
        self.connected = False
        self.published = 0
        self.replayed = 0
        self.reconnects = 0
        self.replaying = False
        self.subscriptions = 0
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: aiomqtt.Client | None = None
        self._next_config: MqttConfig | None = None
        self._switch_now = asyncio.Event()
        self._sent_recent: deque[int] = deque(maxlen=4096)
        self._sent_waiters: dict[int, asyncio.Future[None]] = {}
        self._publishing = 0  # publishes waiting for their acknowledgement now
        self._none_publishing = asyncio.Event()
        # A credential on trial (rotation): the login to go back to if the broker refuses it, and who
        # waits for the outcome (None once in, else the broker's reason).
        self._trial: tuple[MqttConfig, asyncio.Future[str | None]] | None = None

    def switch(self, config: MqttConfig) -> None:
        """Leave the current broker cleanly and connect to `config` from now on (see the module's doc)."""
        self._next_config = config
        self._switch_now.set()

    async def try_credential(self, candidate: MqttConfig) -> str | None:
        """Reconnect with another credential (credentials.py) the way a move does (nothing in flight is
        sent twice): None once the broker let it in and it is the session's credential from now on;
        else the broker's reason, and the session is back on the old one at once."""
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._trial = (self.config, future)
        self.switch(candidate)
        return await future

    async def wait_sent(self, seq: int, timeout: float) -> bool:
        """True once the outbox message `seq` was acknowledged by the broker of this session, False after
        `timeout` (the link is down): the caller decides whether to wait longer."""
        if seq in self._sent_recent:
            return True
        waiter = self._sent_waiters.setdefault(seq, asyncio.get_running_loop().create_future())
        try:
            return await wait_done(waiter, timeout)  # the shared waiter is never cancelled
        finally:
            self._sent_waiters.pop(seq, None)

    def _sent(self, seq: int) -> None:
        self._sent_recent.append(seq)
        waiter = self._sent_waiters.get(seq)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def notify(self) -> None:
        """Tell the drain loop that the outbox has something new (the outbox also says so itself)."""
        self._wake.set()

    def _on_commit(self) -> None:
        # Called from the outbox's writer thread.
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(self._wake.set)

    def _presence(self, state: str, reason: str) -> bytes:
        body = Presence(state="online" if state == "online" else "offline", agent_version=self.agent_version,
                        reason=reason)
        return encode(self.outbox.stamp(body))

    def _client_for_session(self, will_payload: bytes, cfg: MqttConfig) -> aiomqtt.Client:
        tls_context = None
        if cfg.tls is not None:
            tls_context = ssl.create_default_context(cafile=str(cfg.tls.ca_file))
            if cfg.tls.cert_file is not None:
                tls_context.load_cert_chain(str(cfg.tls.cert_file), str(cfg.tls.key_file or cfg.tls.cert_file))
        will = aiomqtt.Will(topics.up(self.device_id, "presence"), will_payload, qos=1, retain=True)
        client = aiomqtt.Client(
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
            max_inflight_messages=self.inflight,
        )
        # Our own window keeps `inflight` publishes waiting for their acks: not worth a warning each.
        client.pending_calls_threshold = 2 * self.inflight + 10
        return client

    async def run(self) -> None:
        """Stay connected and keep the outbox drained, until cancelled."""
        self._loop = asyncio.get_running_loop()
        self.outbox.add_listener(self._on_commit)
        try:
            await self._run()
        finally:
            self.outbox.remove_listener(self._on_commit)

    async def _run(self) -> None:
        delays = backoff_delays(ceiling=self.config.reconnect_max_s)
        attempt = 0
        will_payload: bytes | None = None
        while True:
            delay = 0.0
            trial: tuple[MqttConfig, asyncio.Future[str | None]] | None = None
            if self._next_config is not None:
                if (self._next_config.host, self._next_config.port) != (self.config.host, self.config.port):
                    log.warning("switching broker", extra={"from": f"{self.config.host}:{self.config.port}",
                                                           "to": f"{self._next_config.host}:{self._next_config.port}"})
                self.config, self._next_config = self._next_config, None
                trial, self._trial = self._trial, None
                delays = backoff_delays(ceiling=self.config.reconnect_max_s)
                attempt = 0
            self._switch_now.clear()
            config = self.config
            try:
                # One will per session: failed attempts never publish it, so they reuse it (no new
                # sequence number, no disk write, per attempt during a long outage).
                if will_payload is None:
                    will_payload = await asyncio.to_thread(self._presence, "offline", "connection lost")
                async with self._client_for_session(will_payload, config) as client:
                    will_payload = None
                    if trial is not None:
                        trial[1].set_result(None)
                        trial = None
                        log.info("connected with the new credential")
                    self._client = client
                    self.connected = True
                    attempt = 0
                    log.info("connected to broker", extra={"broker": f"{config.host}:{config.port}"})
                    try:
                        await _first_failure(self._set_up_and_drain(client), self._listen(client))
                    except _Switching:
                        await self._leave(client)
                    finally:
                        # Disconnected as soon as the session failed, not only once the client's own
                        # teardown (which may wait for its timeout) is over: health says so at once.
                        self.connected = False
            except aiomqtt.MqttError as exc:
                if trial is not None:  # the new credential was refused: straight back to the old one
                    self.config = trial[0]
                    trial[1].set_result(_tls_problem(exc) or str(exc) or type(exc).__name__)
                    log.error("the broker refused the new credential; back on the old one", extra={"error": str(exc)})
                    continue
                delay = random.uniform(0, delays[min(attempt, len(delays) - 1)])
                tls_problem = _tls_problem(exc) if self.config.tls is not None else None
                if tls_problem is not None:
                    log.error(
                        "TLS handshake with the broker failed; retrying",
                        extra={"error": tls_problem, "retry_in_s": round(delay, 2), "attempt": attempt + 1,
                               "ca_file": str(self.config.tls.ca_file) if self.config.tls else None,
                               "hint": "check mqtt.tls.ca_file (the CA that signed the broker's certificate), "
                                       "the broker's host name, and the client certificate if the broker "
                                       "requires one"},
                    )
                else:
                    log.warning(
                        "broker connection lost or refused; retrying",
                        extra={"error": str(exc), "retry_in_s": round(delay, 2), "attempt": attempt + 1},
                    )
                attempt += 1
                self.reconnects += 1
            finally:
                self._client = None
                self.connected = False
                self.replaying = False
            if self._next_config is None:
                await wait_event(self._switch_now, delay)  # a switch cuts the wait short

    async def _leave(self, client: aiomqtt.Client) -> None:
        """Before a switch: a retained `offline` presence on the old broker (a clean disconnect sends no will)."""
        target = self._next_config
        if target is not None and (target.host, target.port) == (self.config.host, self.config.port):
            return  # a new credential on the same broker: the next connection says `online` again
        reason = f"moved to {target.host}:{target.port}" if target is not None else "moved"
        with contextlib.suppress(aiomqtt.MqttError, asyncio.TimeoutError, TimeoutError):
            await client.publish(topics.up(self.device_id, "presence"),
                                 await asyncio.to_thread(self._presence, "offline", reason),
                                 qos=1, retain=True, timeout=5)  # fmt: skip

    async def _set_up_and_drain(self, client: aiomqtt.Client) -> None:
        """Announce `online`, subscribe, then drain. Beside `_listen` from the start, whose iterator
        raises the moment the link is lost: aiomqtt does not fail a publish or a subscribe whose
        connection drops, so awaited alone they kept a dead session `connected` until their timeout."""
        await client.publish(
            topics.up(self.device_id, "presence"),
            await asyncio.to_thread(self._presence, "online", "connected"),
            qos=1,
            retain=True,
            timeout=PUBLISH_TIMEOUT_S,
        )
        # On every connect, also when the broker says it kept our session: a broker restarted
        # without persistence has forgotten the subscription (and says so only through a flag some
        # brokers get wrong), and subscribing again is harmless.
        await client.subscribe(topics.device_down_filter(self.device_id), qos=1)
        self.subscriptions += 1
        await self._drain(client)

    async def _listen(self, client: aiomqtt.Client) -> None:
        """Read the down branch; the iterator also raises as soon as the link is lost."""
        async for message in client.messages:
            payload = message.payload
            if isinstance(payload, bytes | bytearray):
                data = bytes(payload)
            else:
                data = b"" if payload is None else str(payload).encode()
            log.debug("down message received", extra={"topic": message.topic.value, "bytes": len(data)})
            if self.on_down is not None:
                self.on_down(message.topic.value, data)

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Publish the backlog (paced, alerts first) and live messages (at once) through `inflight`
        workers, so up to that many publishes wait for their acknowledgement at any time; an
        acknowledged message is removed from the outbox."""
        # Acknowledgements of the last session are committed first, so none of those is sent again.
        await self.outbox.flush_async()
        picker = _Picker(self, mark=self.outbox.next_seq)
        self.replaying = True
        self._wake.set()
        workers = [asyncio.create_task(self._worker(client, picker)) for _ in range(self.inflight)]
        switch = asyncio.create_task(self._switch_now.wait())
        try:
            done, _ = await asyncio.wait([*workers, switch], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = task.exception()
                if error is not None:
                    raise error
            # A switch: no worker starts a publish any more; those in flight get their acks first, so
            # nothing is sent to both brokers.
            if self._publishing:
                await wait_event(self._none_publishing, PUBLISH_TIMEOUT_S)
            for task in workers:
                error = task.exception() if task.done() and not task.cancelled() else None
                if error is not None:
                    raise error
            raise _Switching()
        finally:
            switch.cancel()
            self.replaying = False
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            with contextlib.suppress(OutboxError):  # closed on the way out: re-sent next start, deduplicated
                picker.flush_acks()

    async def _worker(self, client: aiomqtt.Client, picker: _Picker) -> None:
        while True:
            try:
                pending, from_backlog = await picker.next()
            except _Switching:
                return
            if self._next_config is not None:
                return  # switching: not sent, it stays in the outbox for the next broker
            self._publishing += 1
            self._none_publishing.clear()
            try:
                await client.publish(pending.topic, pending.payload, qos=1, retain=pending.retain,
                                     timeout=PUBLISH_TIMEOUT_S)
            finally:
                self._publishing -= 1
                if not self._publishing:
                    self._none_publishing.set()
            picker.acknowledged(pending)
            self._sent(pending.seq)
            self.published += 1
            if from_backlog:
                self.replayed += 1

    async def say_goodbye(self) -> None:
        """On a clean stop, replace the will with an explicit offline presence (reason: shutdown)."""
        client = self._client
        if client is None:
            return
        with contextlib.suppress(aiomqtt.MqttError, asyncio.TimeoutError, TimeoutError):
            await client.publish(
                topics.up(self.device_id, "presence"),
                await asyncio.to_thread(self._presence, "offline", "shutdown"),
                qos=1,
                retain=True,
                timeout=3,
            )


def _tls_problem(exc: BaseException) -> str | None:
    """The TLS failure behind a connection error, in words, or None if it was not TLS."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    return text if "SSL" in text or "certificate" in text.lower() else None


class _Picker:
    """Chooses the next message for the drain workers: live ones first, as they come; then the
    backlog (sequence numbers below `mark`, what waited when the session began) in replay order,
    paced by the token bucket. Reads the outbox a few hundred at a time, one reader at a time."""

    def __init__(self, uplink: Uplink, mark: int) -> None:
        self.uplink = uplink
        self.outbox = uplink.outbox
        self.mark = mark
        self.live: deque[Pending] = deque()
        self.backlog: deque[Pending] = deque()
        self.live_after = dict.fromkeys(Priority, mark - 1)
        self.backlog_after = dict.fromkeys(Priority, -1)
        self.backlog_done = False
        self.bucket = TokenBucket(uplink.replay_rate)
        self.reading = asyncio.Lock()
        self.pacing = asyncio.Lock()
        self.acks: list[Pending] = []
        self.started = time.monotonic()
        self.replayed_before = uplink.replayed

    def acknowledged(self, pending: Pending) -> None:
        self.acks.append(pending)
        if len(self.acks) >= ACK_GROUP:
            self.flush_acks()

    def flush_acks(self) -> None:
        if self.acks:
            self.outbox.discard(self.acks)
            self.acks = []

    async def next(self) -> tuple[Pending, bool]:
        wake = self.uplink._wake
        unpaced = self.bucket.rate is None
        while True:
            if self.uplink._next_config is not None:
                # Switching brokers: checked on every turn, so a worker busy with a backlog ends too.
                raise _Switching()
            if self.live:
                return self.live.popleft(), False
            if unpaced and self.backlog and not wake.is_set():
                return self.backlog.popleft(), True
            if wake.is_set() or (not self.backlog and not self.backlog_done):
                await self._read()
                continue_reading = bool(self.live) or bool(self.backlog)
                if continue_reading:
                    continue
            if self.backlog:
                async with self.pacing:
                    delay = self.bucket.delay()
                    if delay <= 0 and self.backlog and not self.live:
                        self.bucket.take()
                        return self.backlog.popleft(), True
                    if delay > 0:
                        # Paced: sleep, but wake early for a live message.
                        await wait_event(wake, delay)
                continue
            # Nothing to send: hand over the acknowledgements, wait for news (or look again in 5 s).
            self.flush_acks()
            await wait_event(wake, 5.0)
            wake.set()

    async def _read(self) -> None:
        async with self.reading:
            wake = self.uplink._wake
            if not self.live and wake.is_set():
                wake.clear()
                fetched = await self.outbox.take_async(FETCH, after=self.live_after, min_seq=self.mark)
                for p in fetched:
                    self.live_after[p.priority] = max(self.live_after[p.priority], p.seq)
                self.live.extend(fetched)
            if not self.live and not self.backlog and not self.backlog_done:
                fetched = await self.outbox.take_async(FETCH, after=self.backlog_after, below_seq=self.mark)
                for p in fetched:
                    self.backlog_after[p.priority] = max(self.backlog_after[p.priority], p.seq)
                self.backlog.extend(fetched)
                if not fetched:
                    self.backlog_done = True
                    self.uplink.replaying = False
                    log.info(
                        "backlog replayed",
                        extra={"messages": self.uplink.replayed - self.replayed_before,
                               "seconds": round(time.monotonic() - self.started, 2)},
                    )
