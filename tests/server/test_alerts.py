"""Alerts end to end: edge events in over MQTT, alerts with a lifecycle, routing, the resumable
alert stream, and the errors a bad request gets. Both databases, real Mosquitto, real HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from polewatch.fleet_server.db import make_engine
from polewatch.fleet_server.models import AuditEntry
from polewatch.protocol import Box, Detection, RuleEvent, build
from support.brokers import BrokerProcess
from support.server import (
    add_token,
    bearer,
    camera_health,
    detection,
    live_server,
    pole,
    settings_for,
    sse_events,
    wait_for,
)

pytestmark = [pytest.mark.mqtt, pytest.mark.server]
SECRET = "a-shared-secret-of-some-length"


async def next_alert(events: AsyncIterator[dict[str, str]], timeout: float = 15) -> dict[str, Any]:
    async def find() -> dict[str, Any]:
        async for event in events:
            if event.get("event") == "alert":
                return {**event, "data": json.loads(event["data"])}
        raise AssertionError("stream ended")

    return await asyncio.wait_for(find(), timeout)


def zone_enter(rule_id: str = "river-bank", event: str = "enter") -> RuleEvent:
    return RuleEvent(
        camera_id="cam1", rule_id=rule_id, rule_type="zone", event=event, event_id="trk-9", label="person",
        box=Box(x1=0.1, y1=0.2, x2=0.3, y2=0.6), frame_time=datetime.now(timezone.utc), frame_width=768,
        frame_height=576,
    )  # fmt: skip


async def _alerts(http: httpx.AsyncClient, n: int) -> list[dict[str, Any]] | None:
    items: list[dict[str, Any]] = (await http.get("api/alerts")).json()["items"]
    return items if len(items) >= n else None


async def _connected(http: httpx.AsyncClient) -> bool:
    return bool((await http.get("healthz")).json()["mqtt_connected"])


async def test_edge_events_become_routed_alerts_that_operators_take_through_their_lifecycle(
    mosquitto_broker: BrokerProcess, database: str
) -> None:
    broker = mosquitto_broker
    operator = bearer(add_token(database, "operator", "olga"))
    viewer = bearer(add_token(database, "viewer", "vic"))
    async with (
        live_server(settings_for(broker, database)) as base,
        httpx.AsyncClient(base_url=base, timeout=20, headers=operator) as http,
    ):
        await wait_for(lambda: _connected(http), what="the ingest to connect")
        police = (await http.post("api/agencies", json={"name": "Satpol PP", "secret": SECRET})).json()
        cleaning = (await http.post("api/agencies", json={"name": "DLH", "secret": SECRET})).json()
        # The zone rule goes to the police; every other detection to the cleaning service.
        for rule in ({"agency_id": police["id"], "rule_id": "river-bank", "position": 1},
                     {"agency_id": cleaning["id"], "event_type": "detection:*", "position": 2}):  # fmt: skip
            assert (await http.post("api/routing-rules", json=rule)).status_code == 201

        started = detection(label="person", event_id="d1")
        async with pole(broker) as pa:
            await pa.send(started)
            await pa.send(detection(label="person", event_id="d1", phase="update"))  # no second alert
            await pa.send(build(zone_enter(), device_id="pole-a", seq=900))
            await pa.send(build(zone_enter(event="exit"), device_id="pole-a", seq=901))  # an end: none
            await pa.send(camera_health(condition="covered", phase="start"))
            items = await wait_for(lambda: _alerts(http, 3), what="three alerts")
        assert [(a["event_type"], a["status"], a["routed_agency_id"]) for a in items] == [
            ("camera:covered", "new", None),
            ("zone:enter", "new", police["id"]),
            ("detection:person", "new", cleaning["id"]),
        ]
        covered, zone, person = items
        assert person["detail"] == started.body.model_dump(mode="json"), "the body, as received"
        assert isinstance(started.body, Detection)
        assert person["occurred_at"] == started.body.frame_time.isoformat().replace("+00:00", "Z")

        # The lifecycle, with who and when.
        assert (await http.post(f"api/alerts/{zone['id']}/acknowledge")).json()["alert"]["status"] == "acknowledged"
        assigned = await http.post(f"api/alerts/{zone['id']}/assign", json={"note": "patrol 3"})
        assert assigned.status_code == 200
        assert assigned.json()["alert"]["agency_id"] == police["id"], "the routed agency by default"
        resolved = await http.post(f"api/alerts/{zone['id']}/resolve", json={"note": "moved on"})
        assert resolved.json()["alert"]["status"] == "resolved"
        detail = (await http.get(f"api/alerts/{zone['id']}")).json()
        assert [(s["step"], s["status"], s["actor"]) for s in detail["steps"]] == [
            ("created", "new", "edge:pole-a"),
            ("acknowledge", "acknowledged", "token:olga"),
            ("assign", "assigned", "token:olga"),
            ("resolve", "resolved", "token:olga"),
        ]
        assert detail["steps"][2]["note"] == "patrol 3" and all(s["at"] for s in detail["steps"])

        false_alarm = await http.post(f"api/alerts/{person['id']}/false-alarm", json={"note": "a poster"})
        assert false_alarm.json()["alert"]["status"] == "false_alarm"

        # Wrong steps are refused with a reason, and change nothing.
        again = await http.post(f"api/alerts/{zone['id']}/acknowledge")
        assert again.status_code == 409 and "is resolved" in again.json()["detail"]
        unrouted = await http.post(f"api/alerts/{covered['id']}/assign")
        assert unrouted.status_code == 422 and "matched no routing rule" in unrouted.json()["detail"]
        no_agency = await http.post(f"api/alerts/{covered['id']}/assign", json={"agency_id": 999})
        assert no_agency.status_code == 422 and "no agency 999" in no_agency.json()["detail"]
        missing = await http.post("api/alerts/424242/acknowledge")
        assert missing.status_code == 404 and missing.json()["detail"] == "no alert 424242"
        bad = await http.post(f"api/alerts/{covered['id']}/acknowledge", json={"note": "x" * 501})
        assert bad.status_code == 422 and bad.json()["errors"]
        assert (await http.get(f"api/alerts/{covered['id']}")).json()["status"] == "new"
        dup = await http.post("api/agencies", json={"name": "DLH", "secret": SECRET})
        assert dup.status_code == 409 and "exists already" in dup.json()["detail"]
        half = await http.post("api/routing-rules", json={"agency_id": police["id"], "from_minute": 60})
        assert half.status_code == 422

        # Lists filter and paginate; a viewer reads but may not act.
        assert [a["id"] for a in (await http.get("api/alerts", params={"status": "new"})).json()["items"]] == [
            covered["id"]
        ]
        page1 = (await http.get("api/alerts", params={"limit": 2})).json()
        page2 = (await http.get("api/alerts", params={"limit": 2, "cursor": page1["next"]})).json()
        assert [a["id"] for a in page1["items"] + page2["items"]] == [covered["id"], zone["id"], person["id"]]
        assert page2["next"] is None
        assert (await http.get("api/alerts", headers=viewer)).status_code == 200
        assert (await http.post(f"api/alerts/{covered['id']}/acknowledge", headers=viewer)).status_code == 403

    engine = make_engine(database)
    try:
        with sa.orm.Session(engine) as s:
            rows = s.scalars(sa.select(AuditEntry).where(AuditEntry.target_type == "alert").order_by(AuditEntry.id))
            actions = [e.action for e in rows]
    finally:
        engine.dispose()
    assert actions == ["alert.acknowledge", "alert.assign", "alert.resolve", "alert.false_alarm"]


async def test_the_alert_stream_resumes_from_the_last_seen_id_after_a_disconnect(
    mosquitto_broker: BrokerProcess, database: str
) -> None:
    broker = mosquitto_broker
    operator = bearer(add_token(database, "operator", "olga"))
    async with (
        live_server(settings_for(broker, database)) as base,
        httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(10, read=30), headers=operator) as http,
    ):
        await wait_for(lambda: _connected(http), what="the ingest to connect")
        async with pole(broker) as pa:
            async with http.stream("GET", "api/alerts/stream") as response:
                assert response.status_code == 200
                events = sse_events(response.aiter_lines())
                first = detection(label="person", event_id="s1")
                await pa.send(first)
                got = await next_alert(events)
                assert got["data"]["alert"]["message_id"] == first.id
                assert got["data"]["step"]["step"] == "created" and got["id"] == str(got["data"]["step"]["id"])
                last_seen = got["id"]
                alert_id = got["data"]["alert"]["id"]

            # While the console is away: a colleague acknowledges, and two more alerts arrive.
            assert (await http.post(f"api/alerts/{alert_id}/acknowledge")).status_code == 200
            missed = [detection(label="car", event_id="s2"), camera_health(condition="frozen")]
            for message in missed:
                await pa.send(message)
            await wait_for(lambda: _alerts(http, 3), what="the missed alerts")

            async with http.stream("GET", "api/alerts/stream", headers={"Last-Event-ID": last_seen}) as response:
                events = sse_events(response.aiter_lines())
                replayed = [await next_alert(events) for _ in range(3)]
                assert [(r["data"]["step"]["step"], r["data"]["alert"]["message_id"]) for r in replayed] == [
                    ("acknowledge", first.id), ("created", missed[0].id), ("created", missed[1].id),
                ]  # fmt: skip
                ids = [int(r["id"]) for r in replayed]
                assert ids == sorted(ids) and ids[0] > int(last_seen)

                live = detection(label="truck", event_id="s3")
                await pa.send(live)
                got = await next_alert(events)
                assert got["data"]["alert"]["message_id"] == live.id, "live after the replay, nothing twice"

        # The detection feed does not carry alerts (they need alerts:read); a technician has no access.
        technician = bearer(add_token(database, "technician", "tess"))
        assert (await http.get("api/alerts", headers=technician)).status_code == 403
