"""Several server replicas on one database and one Mosquitto: each message is stored once, and the
broker's shared subscription spreads the work over the replicas."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select

from polewatch.fleet_server.ingest import subscription_filters
from polewatch.fleet_server.models import Device, Event, PresenceChange
from support.brokers import BrokerProcess
from support.server import RunningIngest, count, detection, pole, presence, running_ingest, settings_for, wait_for

pytestmark = pytest.mark.mqtt

MESSAGES = 300


@contextlib.asynccontextmanager
async def replicas(broker: BrokerProcess, database: str, n: int) -> AsyncIterator[list[RunningIngest]]:
    """`n` ingests, each with its own MQTT session, engine and connection pool, in one group."""
    async with contextlib.AsyncExitStack() as stack:
        runs = [
            await stack.enter_async_context(
                running_ingest(settings_for(broker, database, mqtt_client_id=f"fleet-replica-{i}"))
            )
            for i in range(n)
        ]
        yield runs


async def test_two_replicas_store_each_message_once_and_share_the_work(
    mosquitto_broker: BrokerProcess, database: str
) -> None:
    broker = mosquitto_broker
    async with replicas(broker, database, 2) as (one, two):
        assert one.ingest.settings.mqtt_shared_group == "polewatch"
        sent = [detection(device, event_id=f"t{i}") for i in range(MESSAGES // 2) for device in ("pole-a", "pole-b")]
        async with pole(broker, "pole-a") as pa, pole(broker, "pole-b") as pb:
            await pa.send(presence("pole-a"))
            await pb.send(presence("pole-b"))
            for message in sent:
                await (pa if message.device_id == "pole-a" else pb).send(message)
            await wait_for(lambda: count(one.sessions, Event) == MESSAGES, timeout=60, what="every detection stored")
            # Presence reaches every replica (plain subscription, for the retained copies); the one
            # that loses the race finds the row there and counts a duplicate.
            await wait_for(
                lambda: sum(r.ingest.stats.accepted_by_kind["presence"] + r.ingest.stats.duplicates for r in (one, two))
                == 4,
                what="both replicas to see both presences",
            )

        with one.sessions() as s:
            ids = s.scalars(select(Event.message_id)).all()
            assert sorted(ids) == sorted(m.id for m in sent), "every message stored exactly once"
            assert s.scalar(select(func.count()).select_from(PresenceChange)) == 2
            assert {d.device_id: d.online for d in s.scalars(select(Device))} == {"pole-a": True, "pole-b": True}

        taken = [r.ingest.stats.accepted_by_kind["detection"] for r in (one, two)]
        assert sum(taken) == MESSAGES, f"a detection was processed twice or not at all: {taken}"
        assert all(t > 0 for t in taken), f"the broker gave one replica everything: {taken}"
        assert sum(r.ingest.stats.duplicates for r in (one, two)) == 2  # the two presences, once each
        assert sum(r.ingest.stats.accepted_by_kind["presence"] for r in (one, two)) == 2


async def test_without_a_shared_group_every_replica_sees_everything_and_the_store_keeps_one(
    broker: BrokerProcess, database: str
) -> None:
    """The plain subscription (the embedded amqtt broker has no shared subscriptions): double work,
    never double rows."""
    async with contextlib.AsyncExitStack() as stack:
        runs = [
            await stack.enter_async_context(
                running_ingest(
                    settings_for(broker, database, mqtt_client_id=f"fleet-plain-{i}", mqtt_shared_group=None)
                )
            )
            for i in range(2)
        ]
        sent = [detection("pole-a", event_id=f"p{i}") for i in range(40)]
        async with pole(broker, "pole-a") as pa:
            for message in sent:
                await pa.send(message)
            await wait_for(
                lambda: sum(r.ingest.stats.accepted_by_kind["detection"] + r.ingest.stats.duplicates for r in runs)
                == 80,
                timeout=60,
                what="both replicas to handle every message",
            )
        assert count(runs[0].sessions, Event) == 40
        assert sum(r.ingest.stats.accepted_by_kind["detection"] for r in runs) == 40
        assert sum(r.ingest.stats.duplicates for r in runs) == 40


def test_subscription_filters() -> None:
    assert subscription_filters(None) == ["polewatch/v1/+/up/#"]
    assert subscription_filters("fleet") == ["$share/fleet/polewatch/v1/+/up/#", "polewatch/v1/+/up/presence"]
