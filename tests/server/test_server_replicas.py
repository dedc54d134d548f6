"""Several server replicas on one database and one Mosquitto: each message is stored once, and the
broker's shared subscription spreads the work over the replicas."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from polewatch.fleet_server.ingest import subscription_filters
from polewatch.fleet_server.models import Device, Event, PresenceChange
from support import postgres
from support.brokers import BrokerProcess
from support.server import (
    RunningIngest,
    add_token,
    bearer,
    count,
    detection,
    live_server,
    pole,
    presence,
    running_ingest,
    settings_for,
    sse_events,
    wait_for,
)

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
                lambda: (
                    sum(r.ingest.stats.accepted_by_kind["presence"] + r.ingest.stats.duplicates for r in (one, two))
                    == 4
                ),
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
                lambda: (
                    sum(r.ingest.stats.accepted_by_kind["detection"] + r.ingest.stats.duplicates for r in runs) == 80
                ),
                timeout=60,
                what="both replicas to handle every message",
            )
        assert count(runs[0].sessions, Event) == 40
        assert sum(r.ingest.stats.accepted_by_kind["detection"] for r in runs) == 40
        assert sum(r.ingest.stats.duplicates for r in runs) == 40


def test_subscription_filters() -> None:
    assert subscription_filters(None) == ["polewatch/v1/+/up/#"]
    assert subscription_filters("fleet") == ["$share/fleet/polewatch/v1/+/up/#", "polewatch/v1/+/up/presence"]


async def _alerts_from(events: AsyncIterator[dict[str, str]], n: int, timeout: float = 20) -> list[dict[str, Any]]:
    """The next `n` alert events, decoded."""

    async def take() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        async for event in events:
            if event.get("event") == "alert":
                got.append({"id": int(event["id"]), **json.loads(event["data"])})
                if len(got) == n:
                    return got
        raise AssertionError(f"the stream ended after {len(got)} of {n} alerts")

    return await asyncio.wait_for(take(), timeout)


async def test_an_alert_stored_by_one_replica_reaches_a_console_on_the_other_exactly_once(
    mosquitto_broker: BrokerProcess, database: str
) -> None:
    """Replica A and B share the ingest; a console on B sees every alert, whichever replica stored
    it, once and in step order, and resuming on B after a disconnect misses nothing."""
    broker = mosquitto_broker
    admin = bearer(add_token(database, "admin", "replicas"))
    timeout = httpx.Timeout(10, read=30)
    async with (
        live_server(settings_for(broker, database, mqtt_client_id="fleet-sse-a", alert_poll_s=0.2)) as url_a,
        live_server(settings_for(broker, database, mqtt_client_id="fleet-sse-b", alert_poll_s=0.2)) as url_b,
        httpx.AsyncClient(base_url=url_a, timeout=timeout, headers=admin) as http_a,
        httpx.AsyncClient(base_url=url_b, timeout=timeout, headers=admin) as http_b,
        pole(broker, "pole-a") as pa,
    ):
        for http in (http_a, http_b):
            await wait_for(lambda h=http: _connected(h), what="both ingests to connect")  # type: ignore[misc]
        live = [detection("pole-a", event_id=f"x{i}") for i in range(20)]
        async with http_b.stream("GET", "api/alerts/stream") as response:
            assert response.status_code == 200
            events = sse_events(response.aiter_lines())
            for message in live:
                await pa.send(message)
            got = await _alerts_from(events, len(live))
        assert sorted(g["alert"]["message_id"] for g in got) == sorted(m.id for m in live), "each alert once"
        ids = [g["id"] for g in got]
        assert ids == sorted(ids) and len(set(ids)) == len(ids), "in step order, none twice"
        taken = [
            (await h.get("api/ingest/stats")).json()["accepted_by_kind"].get("detection", 0) for h in (http_a, http_b)
        ]
        assert sum(taken) == len(live) and taken[0] > 0, f"replica A stored none of the alerts B streamed: {taken}"

        # Away from the console: more alerts arrive, spread over both replicas.
        missed = [detection("pole-a", event_id=f"y{i}") for i in range(10)]
        for message in missed:
            await pa.send(message)
        await wait_for(lambda: count_alerts(http_a, 30), what="the missed alerts to be stored")
        async with http_b.stream("GET", "api/alerts/stream", headers={"Last-Event-ID": str(ids[-1])}) as response:
            events = sse_events(response.aiter_lines())
            replayed = await _alerts_from(events, len(missed))
            # Step order is commit order: two replicas storing at once may swap neighbours.
            assert sorted(r["alert"]["message_id"] for r in replayed) == sorted(m.id for m in missed)
            assert [r["id"] for r in replayed] == sorted(r["id"] for r in replayed) and replayed[0]["id"] > ids[-1]
            # Stepped by an operator on A: live on B too.
            step = await http_a.post(f"api/alerts/{replayed[0]['alert']['id']}/acknowledge")
            assert step.status_code == 200
            (ack,) = await _alerts_from(events, 1)
            assert ack["step"]["step"] == "acknowledge" and ack["id"] == step.json()["step"]["id"]


@pytest.mark.postgres
async def test_alerts_the_ingest_stores_wake_the_other_replicas_streams_at_once(
    mosquitto_broker: BrokerProcess, postgres_server: postgres.PostgresServer
) -> None:
    """On PostgreSQL a replica's console hears of another replica's alerts through NOTIFY, not its
    poll. Replica B has no broker here and polls once a minute, so only a NOTIFY at A's commit can
    bring A's alerts to B's stream within the wait (the batched ingest once stored alerts without one,
    and every cross-replica alert took the whole poll)."""
    database = postgres_server.create_database()
    admin = bearer(add_token(database, "admin", "notify"))
    async with (
        live_server(settings_for(mosquitto_broker, database, mqtt_client_id="fleet-notify-a", alert_poll_s=60)) as a,
        live_server(settings_for(None, database, mqtt_client_id="fleet-notify-b", alert_poll_s=60)) as b,
        httpx.AsyncClient(base_url=a, timeout=10, headers=admin) as http_a,
        httpx.AsyncClient(base_url=b, timeout=httpx.Timeout(10, read=30), headers=admin) as http_b,
        pole(mosquitto_broker, "pole-a") as pa,
    ):
        await wait_for(lambda: _connected(http_a), what="replica A's ingest to connect")
        live = [detection("pole-a", event_id=f"n{i}") for i in range(5)]
        async with http_b.stream("GET", "api/alerts/stream") as response:
            events = sse_events(response.aiter_lines())
            for message in live:
                await pa.send(message)
                await asyncio.sleep(0.2)  # one batch each: each needs its own wake-up
            got = await _alerts_from(events, len(live), timeout=10)
        assert sorted(g["alert"]["message_id"] for g in got) == sorted(m.id for m in live)
    postgres_server.drop_database(database)


async def _connected(http: httpx.AsyncClient) -> bool:
    return bool((await http.get("healthz")).json()["mqtt_connected"])


async def count_alerts(http: httpx.AsyncClient, n: int) -> bool:
    return len((await http.get("api/alerts", params={"limit": 100})).json()["items"]) >= n
