"""The MQTT ingest against real brokers (Mosquitto and the embedded amqtt): store, dedup, reject,
presence, persistent session, and surviving a broker crash."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest

from polewatch.fleet_server.models import Alert, CameraHealthEvent, Device, Event, HealthSample, PresenceChange
from polewatch.protocol import Box, RuleEvent, build, encode
from support.brokers import BrokerProcess
from support.server import (
    camera_health,
    count,
    detection,
    health,
    pole,
    presence,
    running_ingest,
    settings_for,
    wait_for,
)

pytestmark = pytest.mark.mqtt


async def test_messages_are_stored_once_and_presence_follows_the_last_will(
    broker: BrokerProcess, database: str
) -> None:
    async with running_ingest(settings_for(broker, database)) as run:
        first = detection(label="car")
        async with pole(broker) as pa:
            await pa.send(presence(state="online"))
            await pa.send(health(cpu=55.0))
            await pa.send(first)
            await pa.send(first)  # a redelivery: same message id
            await pa.send(detection(label="person"))
            await wait_for(lambda: run.ingest.stats.duplicates == 1, what="the duplicate to be counted")
            await wait_for(lambda: count(run.sessions, Event) == 2, what="two events")

            with run.sessions() as s:
                device = s.get(Device, "pole-a")
                assert device is not None and device.online
                assert device.last_health is not None and device.last_health["cpu_percent"] == 55.0
                assert device.agent_version == "0.1.0"
                assert {e.label for e in s.query(Event)} == {"car", "person"}
                stored = s.query(Event).filter_by(message_id=first.id).one()
                assert (stored.x1, stored.y2, stored.camera_id, stored.event_id) == (0.1, 0.6, "cam1", "trk-1")
                assert stored.received_at.tzinfo is not None
            assert count(run.sessions, HealthSample) == 1

            # The broker publishes the agent's retained last will when it vanishes: offline.
            await pa.send(presence(state="offline", reason="connection lost"))
            await wait_for(lambda: _online(run.sessions) is False, what="the device to go offline")

        stats = run.ingest.stats.snapshot()
        assert stats.accepted == 5 and stats.duplicates == 1 and stats.rejected == 0
        assert stats.accepted_by_kind == {"presence": 2, "health": 1, "detection": 2}
        assert count(run.sessions, PresenceChange, device_id="pole-a") == 2


async def test_camera_health_messages_are_stored_once(broker: BrokerProcess, database: str) -> None:
    async with running_ingest(settings_for(broker, database)) as run:
        start = camera_health(condition="covered", phase="start")
        async with pole(broker) as pa:
            await pa.send(start)
            await pa.send(start)  # a redelivery
            await pa.send(camera_health(condition="blurred", phase="start"))
            await wait_for(lambda: count(run.sessions, CameraHealthEvent) == 2, what="two camera-health rows")
            await wait_for(lambda: run.ingest.stats.duplicates == 1, what="the duplicate to be counted")
        stats = run.ingest.stats.snapshot()
        assert stats.accepted_by_kind == {"camera_health": 2} and stats.rejected == 0
        with run.sessions() as s:
            row = s.query(CameraHealthEvent).filter_by(message_id=start.id).one()
            assert (row.device_id, row.camera_id, row.condition, row.phase, row.variant) == (
                "pole-a",
                "cam1",
                "covered",
                "start",
                "black",
            )
            assert row.since.tzinfo is not None and row.until is None


def _online(sessions: object) -> bool | None:
    with sessions() as s:  # type: ignore[operator]
        device = s.get(Device, "pole-a")
        return None if device is None else bool(device.online)


async def test_malformed_messages_are_counted_by_reason_and_never_stop_the_ingest(
    broker: BrokerProcess, database: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="polewatch.fleet_server.ingest")
    async with running_ingest(settings_for(broker, database)) as run:
        async with pole(broker) as pa:
            await pa.raw("detection", b"{not json")
            await pa.raw("detection", b"[1, 2]")
            unknown = json.loads(encode(detection()))
            unknown["kind"] = "teleport"
            await pa.raw("detection", json.dumps(unknown).encode())
            # pole-a speaking for pole-b in the envelope, on its own topic
            await pa.raw("detection", encode(detection(device="pole-b")))
            bad_box = json.loads(encode(detection()))
            bad_box["body"]["box"] = {"x1": 0.8, "y1": 0.1, "x2": 0.2, "y2": 0.5}
            await pa.raw("detection", json.dumps(bad_box).encode())
            await pa.raw("health", encode(detection()))  # a detection on the health topic
            await pa.raw("firmware", b"{}")  # a kind this server does not know
            await pa.raw("presence", b"")  # clearing a retained presence
            good = detection(label="bicycle")
            await pa.send(good)
            await wait_for(lambda: count(run.sessions, Event) == 1, what="the valid message after the bad ones")

        stats = run.ingest.stats.snapshot()
        assert stats.rejected_by_reason == {
            "not_json": 1,
            "not_object": 1,
            "unknown_kind": 2,
            "device_mismatch": 1,
            "invalid_detection": 1,
            "kind_mismatch": 1,
            "empty_payload": 1,
        }
        assert stats.accepted == 1
        with run.sessions() as s:
            assert s.query(Event).one().message_id == good.id
            assert s.get(Device, "pole-b") is None  # a spoofed envelope creates nothing
        reasons = [r.__dict__.get("reason") for r in caplog.records if r.getMessage() == "rejected message"]
        assert sorted(r for r in reasons if r) == sorted(
            [
                "not_json",
                "not_object",
                "unknown_kind",
                "unknown_kind",
                "device_mismatch",
                "invalid_detection",
                "kind_mismatch",
                "empty_payload",
            ]
        )
        box_log = next(r for r in caplog.records if r.__dict__.get("reason") == "invalid_detection")
        assert "out of order" in box_log.__dict__["detail"]
        assert not run.task.done()


async def test_rule_events_are_stored_as_alerts(broker: BrokerProcess, database: str) -> None:
    """Agents with camera rules send `rule_event`; the starting ones (here a line crossed) raise an
    alert, like a detection's start does."""
    body = RuleEvent(
        camera_id="cam1",
        rule_id="walkway",
        rule_type="line",
        event="cross",
        event_id="trk-1",
        label="person",
        box=Box(x1=0.1, y1=0.2, x2=0.3, y2=0.6),
        frame_time=datetime.now(timezone.utc),
        frame_width=768,
        frame_height=576,
        direction="a_to_b",
    )
    async with running_ingest(settings_for(broker, database)) as run:
        async with pole(broker) as pa:
            await pa.send(build(body, device_id="pole-a", seq=1))
            await pa.send(detection(label="car"))
            await wait_for(lambda: count(run.sessions, Event) == 1, what="the detection after the rule event")
            await wait_for(lambda: sum(run.ingest.stats.accepted_by_kind.values()) == 2, what="both counted")
        stats = run.ingest.stats.snapshot()
        assert stats.rejected_by_reason == {}
        assert stats.accepted_by_kind == {"detection": 1, "rule_event": 1}
        with run.sessions() as s:
            got = sorted((a.source, a.event_type, a.rule_id) for a in s.query(Alert))
        assert got == [("detection", "detection:car", None), ("rule_event", "line:cross", "walkway")]
        assert not run.task.done()


async def test_messages_sent_while_the_server_is_away_wait_in_its_persistent_session(
    broker: BrokerProcess, database: str
) -> None:
    settings = settings_for(broker, database)
    async with running_ingest(settings):
        pass  # first contact: the broker now keeps a session for the fixed client id
    missed = [detection(event_id=f"trk-{i}") for i in range(3)]
    async with pole(broker) as pa:
        for message in missed:
            await pa.send(message)
    async with running_ingest(settings) as run:
        await wait_for(lambda: count(run.sessions, Event) == 3, what="the queued messages")
        with run.sessions() as s:
            assert {e.message_id for e in s.query(Event)} == {m.id for m in missed}


async def test_a_message_is_acknowledged_only_once_it_is_stored(
    mosquitto_broker: BrokerProcess, tmp_path: Path
) -> None:
    """The database is locked when a detection arrives and the server dies before it could store
    it: the broker must still have it (no PUBACK was sent) and deliver it to the next run.

    Mosquitto only: amqtt gives up on an unacknowledged delivery after 5 s and drops it instead of
    redelivering it on the next session, so the embedded broker cannot keep this promise.
    """
    broker = mosquitto_broker
    db = tmp_path / "fleet.db"
    settings = settings_for(broker, db)
    message = detection(event_id="held")
    async with running_ingest(settings, busy_timeout_ms=200) as run:
        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # another writer holds the database
        async with pole(broker) as pa:
            await pa.send(message)
        await wait_for(lambda: run.ingest.stats.store_retries >= 2, what="the ingest to hold and retry")
        assert run.ingest.stats.accepted_by_kind == {}
        # leaving the block cancels the ingest mid-retry: the crash
    lock.execute("ROLLBACK")
    lock.close()
    assert count_rows(db) == 0

    async with running_ingest(settings) as run:
        await wait_for(lambda: count(run.sessions, Event) == 1, what="the broker to redeliver the message")
        with run.sessions() as s:
            assert s.query(Event).one().message_id == message.id
        # The counter follows the commit that made the row visible; give the ingest loop its turn.
        await wait_for(lambda: run.ingest.stats.snapshot().accepted == 1, what="the ingest to count the message")


def count_rows(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


@pytest.mark.slow
async def test_ingest_reconnects_after_the_broker_is_killed_and_restarted(broker: BrokerProcess, database: str) -> None:
    async with running_ingest(settings_for(broker, database)) as run:
        async with pole(broker) as pa:
            await pa.send(detection(event_id="before"))
        await wait_for(lambda: count(run.sessions, Event) == 1, what="the first event")

        broker.kill()
        await wait_for(lambda: not run.ingest.stats.connected, what="the ingest to notice the crash")
        await asyncio.sleep(1.0)  # a few failed reconnects against a dead port
        assert not run.task.done()
        broker.start()
        await asyncio.to_thread(_settle, broker)
        await wait_for(lambda: run.ingest.stats.connects >= 2, timeout=20, what="the ingest to reconnect")

        async with pole(broker) as pa:
            await pa.send(detection(event_id="after"))
        await wait_for(lambda: count(run.sessions, Event) == 2, what="the event sent after the restart")
        stats = run.ingest.stats.snapshot()
        assert stats.connected and stats.last_error


def _settle(broker: BrokerProcess) -> None:
    # amqtt accepts TCP a moment before it answers CONNECT (see support.brokers.embedded).
    if broker.kind == "amqtt":
        import time

        time.sleep(0.3)
