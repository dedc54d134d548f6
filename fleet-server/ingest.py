"""MQTT ingest: one persistent session on the broker, every device's up-topics in, rows out.

Delivery guarantees, in order of the path a message takes:

- The session is persistent (clean_session=False, a fixed client id per replica), so QoS 1 messages
  published while this server was down or reconnecting wait for it in the broker.
- Messages are stored in batches: what the broker has sent within a few ms (BATCH_LINGER_S), up to
  BATCH_MAX, goes into one transaction (store.py). Mosquitto sends at most `max_inflight_messages`
  unacknowledged QoS 1 messages to a client, so its config raises that from 20 to 1000
  (broker_access/mosquitto_files.py); with 20, no batch could hold more than 20.
- Messages are acknowledged (PUBACK) only after the transaction that stored them committed. A
  server killed between receiving and storing leaves the message unacknowledged, and the broker
  redelivers it on the next connection; the store's dedup by message id makes that harmless.
- A message that does not parse is logged with its reason, counted, and acknowledged: redelivering
  it would not make it valid.
- When the broker goes away, the loop reconnects forever with exponential backoff and jitter
  (replicas restarted together do not reconnect in lockstep) and subscribes again every time,
  because a broker that lost its state (amqtt restarted, Mosquitto without persistence) has
  forgotten the subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import aiomqtt

from polewatch.protocol import CORE_KINDS, KINDS, DetectionMessage, MessageError, V1Message, decode, topics
from polewatch.waiting import wait_event

from .feed import Feed, FeedItem
from .schemas import IngestStatsOut
from .settings import Settings
from .store import Outcome, Received, Store, TransientStoreError, event_out

log = logging.getLogger(__name__)

BATCH_MAX = 500
BATCH_LINGER_S = 0.005
# Kinds stored as rows (rule_event: its starts, as alerts; snapshot: as alert evidence). Other v1 kinds
# are rejected as unknown_kind, but their sequence numbers are still noted as received, so they never show
# as gaps in the accounting.
STORED_KINDS: tuple[str, ...] = (*CORE_KINDS, "given_up", "config_report", "command_ack", "rule_event", "snapshot")
STORE_RETRY_MAX_S = 10.0


def subscription_filters(shared_group: str | None) -> list[str]:
    """What this replica subscribes to.

    Without a group: every device's up branch. With one: the same branch as an MQTT shared
    subscription, so the broker hands each message to one replica of the group, plus a plain
    subscription to presence, because a broker never sends retained messages to a shared
    subscription and retained presence is how a fresh replica learns which poles are online.
    Every replica therefore also sees every presence; the store keeps one copy (unique message id)
    and the others count as duplicates.
    """
    if not shared_group:
        return [topics.all_up()]
    return [f"$share/{shared_group}/{topics.all_up()}", f"{topics.PREFIX}/+/up/presence"]


def reject_reason(exc: Exception) -> str:
    """A short, stable reason code for a rejected message, for counters and alerts on them."""
    if isinstance(exc, topics.TopicError):
        return "bad_topic"
    if isinstance(exc, MessageError):
        return exc.reason
    return "invalid"


def backoff_delay(attempt: int, low: float, high: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with "equal jitter": between half and all of min(high, low * 2**attempt)."""
    cap = min(high, low * (2 ** min(attempt, 32)))
    return (rng or random).uniform(cap / 2, cap)


@dataclass
class IngestStats:
    """Counters since this process started; the API serves a snapshot."""

    connected: bool = False
    connects: int = 0
    last_connected_at: datetime | None = None
    last_error: str | None = None
    accepted_by_kind: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    store_retries: int = 0
    batches: int = 0  # transactions that stored messages (batched / batches: messages per commit)
    batched: int = 0

    def snapshot(self) -> IngestStatsOut:
        return IngestStatsOut(
            connected=self.connected,
            connects=self.connects,
            last_connected_at=self.last_connected_at,
            last_error=self.last_error,
            accepted=sum(self.accepted_by_kind.values()),
            accepted_by_kind=dict(self.accepted_by_kind),
            duplicates=self.duplicates,
            rejected=sum(self.rejected_by_reason.values()),
            rejected_by_reason=dict(self.rejected_by_reason),
            store_retries=self.store_retries,
        )


class Ingest:
    """Owns the MQTT session and the single database writer thread."""

    def __init__(self, settings: Settings, store: Store, feed: Feed) -> None:
        self.settings = settings
        self.stats = IngestStats()
        self._store = store
        self._feed = feed
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-writer")
        self._connected = asyncio.Event()
        self._attempt = 0  # failed connection attempts in a row, for the backoff

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Until the ingest is connected and subscribed (for tests and readiness)."""
        if not await wait_event(self._connected, timeout):
            raise TimeoutError(f"the ingest did not connect and subscribe within {timeout} s")

    def close(self) -> None:
        """Let a write in progress finish (it will not be acked; the broker redelivers it)."""
        self._writer.shutdown(wait=True)

    # --- connection loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, consume, and on any connection loss reconnect; returns only when cancelled."""
        s = self.settings
        while True:
            try:
                client = aiomqtt.Client(
                    s.mqtt_host,
                    s.mqtt_port,
                    username=s.mqtt_username,
                    password=s.mqtt_password_value(),
                    identifier=s.mqtt_client_id,
                    protocol=aiomqtt.ProtocolVersion.V311,
                    clean_session=False,
                    keepalive=s.mqtt_keepalive_s,
                    tls_context=s.mqtt_tls_context(),
                    timeout=10,
                )
                # Acknowledge after the commit, not on receipt (see the module docstring). aiomqtt
                # does not expose paho's manual-ack switch, hence the reach into its client; it
                # must be set before CONNECT because a resumed session delivers at once.
                client._client.manual_ack_set(True)
                async with client:
                    await self._subscribe_and_consume(client)
            except aiomqtt.MqttError as exc:
                self._on_lost(str(exc))
            except Exception as exc:  # a bug must not stop the ingest for good; say so loudly
                log.exception("ingest loop failed; reconnecting")
                self._on_lost(f"{type(exc).__name__}: {exc}")
            delay = backoff_delay(self._attempt, s.mqtt_reconnect_min_s, s.mqtt_reconnect_max_s)
            self._attempt += 1
            log.info("mqtt reconnecting", extra={"in_s": round(delay, 2), "attempt": self._attempt})
            await asyncio.sleep(delay)

    def _on_connected(self) -> None:
        st = self.stats
        st.connected = True
        st.connects += 1
        st.last_connected_at = datetime.now(timezone.utc)
        self._attempt = 0
        self._connected.set()
        log.info(
            "mqtt connected",
            extra={
                "broker": f"{self.settings.mqtt_host}:{self.settings.mqtt_port}",
                "tls": self.settings.mqtt_ca_file is not None,
                "client_id": self.settings.mqtt_client_id,
                "subscribed": subscription_filters(self.settings.mqtt_shared_group),
                "connects": st.connects,
            },
        )

    def _on_lost(self, error: str) -> None:
        was_connected = self.stats.connected
        self.stats.connected = False
        self.stats.last_error = error
        self._connected.clear()
        log.warning(
            "mqtt connection lost" if was_connected else "mqtt connect failed",
            extra={"broker": f"{self.settings.mqtt_host}:{self.settings.mqtt_port}", "error": error},
        )

    async def _subscribe_and_consume(self, client: aiomqtt.Client) -> None:
        """Subscribe while already consuming.

        A resumed session delivers its queued messages right after CONNACK, before the SUBACK;
        with manual acks, a broker that waits for each PUBACK before reading further packets
        (amqtt does, for 5 s) would stall the SUBSCRIBE if nobody were consuming yet.
        """
        filters = subscription_filters(self.settings.mqtt_shared_group)
        consume = asyncio.create_task(self._consume(client), name="mqtt-consume")
        subscribe = asyncio.create_task(client.subscribe([(f, 1) for f in filters]), name="mqtt-subscribe")
        try:
            await asyncio.wait({consume, subscribe}, return_when=asyncio.FIRST_COMPLETED)
            if subscribe.done():
                granted = subscribe.result()  # raises if the broker did not answer
                # MQTT 3.1.1 refuses a subscription (e.g. by ACL) with return code 0x80 in the
                # SUBACK, not with an error: treat it as a failed connection and retry.
                if any((code if isinstance(code, int) else code.value) >= 0x80 for code in granted):
                    raise aiomqtt.MqttError(f"the broker refused the subscription to {filters}")
                self._on_connected()
            await consume  # until the connection drops (raises MqttError)
        finally:
            for task in (consume, subscribe):
                task.cancel()
            for task in (consume, subscribe):
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await task

    async def _consume(self, client: aiomqtt.Client) -> None:
        messages = client.messages
        while True:
            batch = [await anext(messages)]
            if len(messages) + 1 < BATCH_MAX:
                # A burst is still arriving: a few ms more fill the batch, and a batch costs about
                # the same few statements whatever its size (bench/ingest.py: messages per commit).
                # Sleeping, not waiting on the queue with a timeout: cancelling a get that has just
                # taken a message would lose it.
                await asyncio.sleep(BATCH_LINGER_S)
            # Whatever is queued goes into the same transaction: one commit per burst.
            while len(messages) and len(batch) < BATCH_MAX:
                batch.append(await anext(messages))
            await self._handle(batch)
            for m in batch:  # in arrival order, as MQTT 3.1.1 requires of PUBACKs
                client._client.ack(m.mid, m.qos)

    # --- one batch -----------------------------------------------------------------------------

    async def _handle(self, batch: Sequence[aiomqtt.Message]) -> None:
        received_at = datetime.now(timezone.utc)
        to_store: list[Received] = []
        for m in batch:
            topic = m.topic.value
            payload = m.payload if isinstance(m.payload, bytes | bytearray) else str(m.payload).encode()
            try:
                parsed = topics.parse(topic)
                if parsed.direction != "up":
                    raise topics.TopicError(f"topic {topic!r} is a down topic")
                if parsed.kind not in KINDS:
                    raise MessageError(f"unknown message kind {parsed.kind!r} in the topic", reason="unknown_kind")
                if not payload:
                    # What clearing a retained presence looks like (decommissioning a pole).
                    raise MessageError("empty payload", reason="empty_payload")
                message = decode(bytes(payload), parsed, kinds=STORED_KINDS)
            except (topics.TopicError, MessageError) as exc:
                self._reject(reject_reason(exc), topic, bytes(payload), str(exc))
                seen = self._unstored_kind(topic, bytes(payload), exc)
                if seen is not None:
                    to_store.append(Received(seen, received_at, seq_only=True))
                continue
            to_store.append(Received(message, received_at))
        if not to_store:
            return
        outcomes = await self._store_until_done(to_store)
        self.stats.batches += 1
        self.stats.batched += len(to_store)
        for item, outcome in zip(to_store, outcomes, strict=True):
            self._count_and_publish(item, outcome)
        if any(o.raised_alert for o in outcomes) and self._feed.subscribers:
            # One nudge for the batch: the alert stream reads the new alerts from the database, as it
            # does for steps another replica stored (alert_wakeups.py).
            self._feed.publish(FeedItem("alert", {}))

    @staticmethod
    def _unstored_kind(topic: str, payload: bytes, exc: Exception) -> V1Message | None:
        """A valid message of a v1 kind this server does not store, or None."""
        if not isinstance(exc, MessageError) or exc.reason != "unknown_kind":
            return None
        try:
            return decode(payload, topics.parse(topic), kinds=KINDS)
        except (topics.TopicError, MessageError):
            return None

    async def _store_until_done(self, items: list[Received]) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            try:
                return await loop.run_in_executor(self._writer, self._store.apply_batch, items)
            except TransientStoreError as exc:
                delay = backoff_delay(attempt, 0.2, STORE_RETRY_MAX_S)
                attempt += 1
                self.stats.store_retries += 1
                log.error(
                    "database unavailable; holding messages",
                    extra={"error": str(exc), "retry_in_s": round(delay, 2)},
                )
                await asyncio.sleep(delay)

    def _reject(self, reason: str, topic: str, payload: bytes, detail: str) -> None:
        self.stats.rejected_by_reason[reason] += 1
        log.warning(
            "rejected message",
            extra={
                "reason": reason,
                "topic": topic,
                "detail": detail,
                "bytes": len(payload),
                "payload_head": payload[:120].decode("utf-8", "replace"),
            },
        )

    def _count_and_publish(self, item: Received, outcome: Outcome) -> None:
        msg = item.message
        if item.seq_only:  # counted as rejected already
            return
        if outcome.error is not None:
            self._reject("store_error", topics.up(msg.device_id, msg.kind), b"", outcome.error)
            return
        if outcome.duplicate:
            self.stats.duplicates += 1
            log.debug("duplicate message", extra={"message_id": msg.id, "device_id": msg.device_id})
            return
        self.stats.accepted_by_kind[msg.kind] += 1
        if not self._feed.subscribers:
            return  # nobody follows a live stream: no JSON for nobody (a stream opened later reads the database)
        if outcome.device is not None:
            self._feed.publish(FeedItem("device", outcome.device.model_dump(mode="json")))
        if outcome.event_row is not None and isinstance(msg, DetectionMessage):
            event = event_out(outcome.event_row, msg, item.received_at)
            self._feed.publish(FeedItem("detection", event.model_dump(mode="json"), event.id))

