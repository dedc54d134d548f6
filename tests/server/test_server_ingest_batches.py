"""The batched write path: a batch is one transaction of bulk upserts, a bad message costs only
itself, PUBACKs follow the commit, and the routing rules are read fresh for each batch."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import select

from polewatch.fleet_server.db import make_engine, make_sessionmaker, upgrade
from polewatch.fleet_server.models import Agency, Alert, CameraHealthEvent, Event, ReceivedSeqRange, RoutingRule
from polewatch.fleet_server.store import Received, Store
from polewatch.protocol import V1Message, encode
from support.brokers import BrokerProcess
from support.server import camera_health, count, detection, pole, running_ingest, settings_for, wait_for

pytestmark = pytest.mark.mqtt


def reusing_id(message_id: str) -> V1Message:
    """A camera-health start that reuses a detection's message id: its own row inserts (another
    table), but the alert it raises collides with the detection's alert (UNIQUE message_id), so it
    fails in the database, not in parsing: the case the per-message fallback exists for."""
    return camera_health().model_copy(update={"id": message_id})


def test_a_message_that_fails_in_the_database_costs_only_itself(database: str) -> None:
    engine = make_engine(database)
    try:
        upgrade(engine)
        sessions = make_sessionmaker(engine)
        store = Store(sessions)
        now = datetime.now(timezone.utc)
        earlier = detection(event_id="earlier")
        assert not store.apply_batch([Received(earlier, now)])[0].duplicate

        good, bad, later = detection(event_id="good"), reusing_id(earlier.id), detection(event_id="later")
        batch = [Received(m, now) for m in (good, bad, good, later)]
        outcomes = store.apply_batch(batch)

        assert [(o.duplicate, o.error) for o in outcomes] == [
            (False, None), (False, "IntegrityError"), (True, None), (False, None),
        ]  # fmt: skip
        assert outcomes[0].event_row is not None and outcomes[0].raised_alert
        with sessions() as s:
            assert sorted(s.scalars(select(Event.event_id))) == ["earlier", "good", "later"]
            assert s.scalars(select(CameraHealthEvent)).all() == [], "the bad message's own row rolled back"
            assert len(s.scalars(select(Alert)).all()) == 3
            # The bad one's sequence number is not noted as received: it was not stored.
            runs = s.execute(select(ReceivedSeqRange.first, ReceivedSeqRange.last).order_by(ReceivedSeqRange.first))
            seqs = {n for first, last in runs for n in range(first, last + 1)}
            assert bad.seq not in seqs
            assert {earlier.seq, good.seq, later.seq} <= seqs
    finally:
        engine.dispose()


async def test_a_burst_with_malformed_duplicate_and_failing_messages_stores_the_good_ones_once(
    mosquitto_broker: BrokerProcess, database: str
) -> None:
    """Queued while the server was away, so the broker hands them over in a burst (batches)."""
    broker = mosquitto_broker
    settings = settings_for(broker, database)
    first = detection(event_id="first")
    async with running_ingest(settings) as run, pole(broker) as pa:
        await pa.send(first)
        await wait_for(lambda: count(run.sessions, Event) == 1, what="the first detection")
    good = [detection(event_id=f"good-{i}") for i in range(20)]
    async with pole(broker) as pa:
        await pa.send(good[0])
        await pa.raw("detection", b"{not json")
        await pa.send(good[0])  # a redelivery: same message id
        await pa.raw("camera_health", encode(reusing_id(first.id)))
        for message in good[1:]:
            await pa.send(message)
    async with running_ingest(settings) as run:
        await wait_for(lambda: run.ingest.stats.snapshot().accepted == len(good), what="the good messages")
        await wait_for(lambda: run.ingest.stats.duplicates == 1, what="the duplicate")
        stats = run.ingest.stats.snapshot()
        assert stats.rejected_by_reason == {"not_json": 1, "store_error": 1}
        assert run.ingest.stats.batched == len(good) + 2  # the good ones, the copy, the failing one
        with run.sessions() as s:
            assert sorted(s.scalars(select(Event.message_id))) == sorted(m.id for m in [first, *good])
            assert s.scalars(select(CameraHealthEvent)).all() == []


async def test_a_batch_is_acknowledged_only_after_its_commit(mosquitto_broker: BrokerProcess, tmp_path: Path) -> None:
    """Batch A commits; batch B is held (the database is locked) when the server dies. The next run
    gets B again (no PUBACK was sent for it) and not A (acknowledged after its commit): B stored
    once, nothing counted as a duplicate."""
    broker = mosquitto_broker
    db = tmp_path / "fleet.db"
    settings = settings_for(broker, db)
    stored_first = [detection(event_id=f"a-{i}") for i in range(10)]
    held = [detection(event_id=f"b-{i}") for i in range(10)]
    async with running_ingest(settings, busy_timeout_ms=200) as run:
        async with pole(broker) as pa:
            for message in stored_first:
                await pa.send(message)
            await wait_for(lambda: run.ingest.stats.snapshot().accepted == 10, what="batch A stored")
            lock = sqlite3.connect(db, isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")  # another writer holds the database
            for message in held:
                await pa.send(message)
        await wait_for(lambda: run.ingest.stats.store_retries >= 1, what="the ingest to hold batch B")
        # leaving the block cancels the ingest while it holds B: the crash
    lock.execute("ROLLBACK")
    lock.close()

    async with running_ingest(settings) as run:
        await wait_for(lambda: count(run.sessions, Event) == 20, what="the broker to redeliver batch B")
        await wait_for(lambda: run.ingest.stats.snapshot().accepted == 10, what="B counted")
        assert run.ingest.stats.duplicates == 0, "batch A was acknowledged, so not redelivered"
        with run.sessions() as s:
            ids = sorted(s.scalars(select(Event.message_id)))
        assert ids == sorted(m.id for m in [*stored_first, *held])


async def test_a_new_routing_rule_applies_from_the_next_batch(broker: BrokerProcess, database: str) -> None:
    async with running_ingest(settings_for(broker, database)) as run, pole(broker) as pa:
        before = detection(label="car", event_id="before")
        await pa.send(before)
        await wait_for(lambda: count(run.sessions, Alert) == 1, what="the first alert")
        now = datetime.now(timezone.utc)
        with run.sessions.begin() as s:  # as the API's POST /api/routing-rules would, on any replica
            agency = Agency(name="traffic police", webhook_url=None, format="json", secret="s" * 32, created_at=now)
            s.add(agency)
            s.flush()
            s.add(RoutingRule(position=1, agency_id=agency.id, event_type="detection:car", created_at=now))
            agency_id = agency.id
        after = detection(label="car", event_id="after")
        await pa.send(after)
        await wait_for(lambda: count(run.sessions, Alert) == 2, what="the second alert")
        with run.sessions() as s:
            routed = {m: a for m, a in s.execute(select(Alert.message_id, Alert.routed_agency_id))}
        assert routed == {before.id: None, after.id: agency_id}
        assert json.loads(json.dumps(run.ingest.stats.snapshot().rejected_by_reason)) == {}
