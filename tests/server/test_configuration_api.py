"""Configuration and commands over the real API, a real Mosquitto and the real ingest, on both databases:
layers and their versions, preview, the retained document a box receives, refusal with the field,
rollback, groups, reports and drift, commands and acks, access rules and audit entries."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import httpx
import pytest
import sqlalchemy as sa

from polewatch.fleet_server import configuration_service, create_app
from polewatch.fleet_server.audit import Actor
from polewatch.fleet_server.db import make_engine, make_sessionmaker
from polewatch.fleet_server.models import AuditEntry, ConfigLayer, DeviceConfig
from polewatch.protocol import CommandAck, CommandMessage, ConfigReport, build, decode, topics
from polewatch.protocol.messages import DOWN_KINDS
from support import postgres
from support.brokers import USERS, BrokerProcess
from support.server import add_token, bearer, pole, settings_for, wait_for

pytestmark = pytest.mark.mqtt


@contextlib.asynccontextmanager
async def server(broker: BrokerProcess | None, database: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings_for(broker, database), run_ingest=broker is not None)
    async with app.router.lifespan_context(app):
        if broker is not None:
            await app.state.services.ingest.wait_connected(timeout=15)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fleet", timeout=30) as client:
            yield client


async def retained_config(broker: BrokerProcess, device: str) -> dict[str, Any]:
    """The retained config message on a box's down branch, read as the box reads it."""
    async with aiomqtt.Client(broker.host, broker.port, username=device, password=USERS[device],
                              identifier=f"reader-{device}") as client:  # fmt: skip
        await client.subscribe(topics.down(device, "config"), qos=1)
        m = await asyncio.wait_for(anext(client.messages), 10)
        payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
        message = decode(payload, topics.parse(m.topic.value), kinds=DOWN_KINDS)
        assert m.retain
        return message.model_dump(mode="json")


def audit_actions(database: str) -> list[tuple[str, str, str | None]]:
    engine = make_engine(database)
    try:
        with sa.orm.Session(engine) as s:
            return [(e.actor, e.action, e.target_id) for e in s.scalars(sa.select(AuditEntry).order_by(AuditEntry.id))]
    finally:
        engine.dispose()


async def test_layers_preview_publish_refuse_rollback_and_drift(mosquitto_broker: BrokerProcess, database: str) -> None:
    ops = bearer(add_token(database, "ops"))
    viewer = bearer(add_token(database, "viewer"))
    async with server(mosquitto_broker, database) as api:
        # Only ops (and admin) change configuration; everyone reads it.
        denied = await api.post("/api/config/layers", headers=viewer, json={"scope": "fleet", "document": {}})
        assert denied.status_code == 403 and "config:write" in denied.json()["detail"]

        # A device layer for pole-a and a fleet layer: pole-a gets both merged, version 1 then 2.
        first = await api.post("/api/config/layers", headers=ops, json={
            "scope": "device", "target": "pole-a", "document": {"health_interval_s": 7}})  # fmt: skip
        assert first.status_code == 200, first.text
        assert [(d["device_id"], d["desired_version"], d["drift"]) for d in first.json()["devices"]] == [
            ("pole-a", 1, "pending")
        ]
        preview = await api.post("/api/config/preview", headers=ops, json={
            "scope": "fleet", "document": {"detect": {"fps": 2}, "health_interval_s": 30}})  # fmt: skip
        assert preview.status_code == 200, preview.text
        assert preview.json() == {
            "devices": [
                {
                    "device_id": "pole-a",
                    "desired_version": 1,
                    "changes": [{"path": "detect", "before": None, "after": {"fps": 2}}],
                }
            ],
            "unchanged": 0,
        }  # fmt: skip  (health_interval_s stays 7: the device layer wins)
        slower = {"scope": "fleet", "document": {"detect": {"fps": 2}, "health_interval_s": 30}, "comment": "slower"}
        fleet = await api.post("/api/config/layers", headers=ops, json=slower)
        assert fleet.json()["layer"]["version"] == 1 and fleet.json()["layer"]["comment"] == "slower"
        retained = await retained_config(mosquitto_broker, "pole-a")
        assert retained["device_id"] == "pole-a" and retained["kind"] == "config"
        assert retained["body"] == {"version": 2, "config": {"detect": {"fps": 2.0}, "health_interval_s": 7.0}}

        # A document the agent would refuse is refused here, with the field, and nothing changes.
        bad = await api.post("/api/config/layers", headers=ops, json={
            "scope": "fleet", "document": {"detect": {"fps": 2, "labels": ["person"]},
            "cameras": [{"id": "cam1", "url": "rtsp://x/1", "rules": [
                {"id": "z", "type": "zone", "labels": ["dog"], "polygon": [[0, 0], [1, 0], [1, 1]]}]}]}})  # fmt: skip
        assert bad.status_code == 422
        assert "cameras.0.rules.0.labels: dog is not in detect.labels" in bad.json()["detail"]
        # ... also when only the merged result is wrong: the device layer's labels against the fleet's rule
        await api.post("/api/config/layers", headers=ops, json={"scope": "fleet", "document": {
            "detect": {"fps": 2}, "health_interval_s": 30, "cameras": [{"id": "cam1", "url": "rtsp://x/1", "rules": [
                {"id": "z", "type": "zone", "labels": ["car"], "polygon": [[0, 0], [1, 0], [1, 1]]}]}]}})  # fmt: skip
        merged_bad = await api.post("/api/config/layers", headers=ops, json={
            "scope": "device", "target": "pole-a", "document": {"health_interval_s": 7,
                                                                "detect": {"labels": ["person"]}}})  # fmt: skip
        assert merged_bad.status_code == 422
        assert merged_bad.json()["detail"].startswith("refused, nothing changed: device pole-a: cameras.0.rules.0")
        with_target = {"scope": "fleet", "target": "x", "document": {}}
        assert (await api.post("/api/config/layers", headers=ops, json=with_target)).status_code == 422
        layers = (await api.get("/api/config/layers", headers=viewer, params={"scope": "fleet"})).json()
        assert [item["version"] for item in layers["items"]] == [2, 1]

        # Rollback: fleet version 1's document becomes version 3; pole-a's document loses the cameras again.
        back = await api.post("/api/config/rollback", headers=ops, json={"scope": "fleet", "version": 1})
        assert back.status_code == 200, back.text
        assert back.json()["layer"]["version"] == 3 and back.json()["layer"]["rolled_back_from"] == 1
        state = (await api.get("/api/config/devices/pole-a", headers=viewer)).json()
        assert state["desired_version"] == 4 and state["document"] == {"detect": {"fps": 2}, "health_interval_s": 7}
        assert (await api.post("/api/config/rollback", headers=ops,
                               json={"scope": "fleet", "version": 99})).status_code == 404  # fmt: skip
        assert (await retained_config(mosquitto_broker, "pole-a"))["body"]["version"] == 4

        # The box refuses version 4 (a report through the broker and the ingest), then applies it.
        async with pole(mosquitto_broker, "pole-a") as box:
            await box.send(build(ConfigReport(version=4, status="refused", reason="outbox.max_bytes: too small",
                                              field="outbox.max_bytes", applied_version=2),
                                 device_id="pole-a", seq=1))  # fmt: skip

            async def drift() -> Any:
                d = (await api.get("/api/config/devices/pole-a", headers=viewer)).json()
                return d if d["report_status"] is not None else None

            refused = await wait_for(drift, what="the refusal stored")
            assert (refused["drift"], refused["applied_version"], refused["refusal_field"]) == (
                "refused",
                2,
                "outbox.max_bytes",
            )
            assert refused["refusal_reason"] == "outbox.max_bytes: too small"
            await box.send(build(ConfigReport(version=4, status="applied", applied_version=4, changed=["detect.fps"]),
                                 device_id="pole-a", seq=2))  # fmt: skip

            async def in_sync() -> Any:
                d = (await api.get("/api/config/devices/pole-a", headers=viewer)).json()
                return d if d["drift"] == "in_sync" else None

            synced = await wait_for(in_sync, what="in sync")
            assert synced["applied_version"] == 4 and synced["refusal_version"] == 4  # the last refusal is kept

        listed = (await api.get("/api/config/devices", headers=viewer, params={"limit": 1})).json()
        assert [d["device_id"] for d in listed["items"]] == ["pole-a"] and listed["next"] is None

    actions = [a for _, a, _ in audit_actions(database) if a.startswith("config.")]
    assert actions == ["config.change", "config.change", "config.change", "config.rollback"]


async def test_groups_take_their_layer_and_only_their_members_change(
    mosquitto_broker: BrokerProcess, database: str
) -> None:
    ops = bearer(add_token(database, "ops"))
    async with server(mosquitto_broker, database) as api:
        for device in ("pole-a", "pole-b"):
            r = await api.put(f"/api/config/members/{device}", headers=ops, json={"group": "north"})
            assert r.status_code == 200 and r.json()["devices"] == []  # nothing to say to them yet
        await api.put("/api/config/members/pole-c", headers=ops, json={"group": "south"})
        north = await api.post("/api/config/layers", headers=ops, json={
            "scope": "group", "target": "north", "document": {"log_level": "DEBUG"}})  # fmt: skip
        assert sorted(d["device_id"] for d in north.json()["devices"]) == ["pole-a", "pole-b"]
        # pole-b moves to south: its document loses the north layer (a new version, {}: back to its file)
        previewed = await api.post("/api/config/members/pole-b/preview", headers=ops, json={"group": "south"})
        assert previewed.json() == {"devices": [{"device_id": "pole-b", "desired_version": 1, "changes": [
            {"path": "log_level", "before": "DEBUG", "after": None}]}], "unchanged": 0}  # fmt: skip
        moved = await api.put("/api/config/members/pole-b", headers=ops, json={"group": "south"})
        assert [(d["device_id"], d["desired_version"], d["group"]) for d in moved.json()["devices"]] == [
            ("pole-b", 2, "south")
        ]
        assert (await retained_config(mosquitto_broker, "pole-b"))["body"] == {"version": 2, "config": {}}
        members = (await api.get("/api/config/members", headers=ops, params={"group": "south"})).json()
        assert [m["device_id"] for m in members["items"]] == ["pole-b", "pole-c"]
        page1 = (await api.get("/api/config/members", headers=ops, params={"limit": 2})).json()
        page2 = (await api.get("/api/config/members", headers=ops, params={"limit": 2, "cursor": page1["next"]})).json()
        assert [m["device_id"] for m in page1["items"] + page2["items"]] == ["pole-a", "pole-b", "pole-c"]
        assert page2["next"] is None
        history = (await api.get("/api/config/layers", headers=ops, params={"limit": 1})).json()
        assert [(h["scope"], h["target"], h["version"]) for h in history["items"]] == [("group", "north", 1)]
        assert history["next"] is None
        cursor = await api.get("/api/config/layers", headers=ops, params={"cursor": "x"})
        assert cursor.status_code == 422
        bad_group = await api.put("/api/config/members/pole-a", headers=ops, json={"group": "no/slash"})
        assert bad_group.status_code == 422


async def test_a_broker_outage_keeps_the_change_and_publish_sends_it_later(
    mosquitto_broker: BrokerProcess, database: str
) -> None:
    ops = bearer(add_token(database, "ops"))
    async with server(None, database) as api:  # this server's broker address answers nothing
        r = await api.post("/api/config/layers", headers=ops, json={
            "scope": "device", "target": "pole-a", "document": {"log_level": "ERROR"}})  # fmt: skip
        assert r.status_code == 200
        (dev,) = r.json()["devices"]
        assert dev["drift"] == "unpublished" and dev["publish_error"]
    engine = make_engine(database)
    with sa.orm.Session(engine) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(ConfigLayer)) == 1
        assert s.get(DeviceConfig, "pole-a").published_at is None  # type: ignore[union-attr]
    engine.dispose()
    async with server(mosquitto_broker, database) as api:
        sent = await api.post("/api/config/publish", headers=ops)
        assert [(d["device_id"], d["drift"]) for d in sent.json()] == [("pole-a", "pending")]
        assert (await retained_config(mosquitto_broker, "pole-a"))["body"]["config"] == {"log_level": "ERROR"}


async def test_commands_are_validated_sent_and_acked(mosquitto_broker: BrokerProcess, database: str) -> None:
    ops = bearer(add_token(database, "ops"))
    operator = bearer(add_token(database, "operator"))
    async with server(mosquitto_broker, database) as api, pole(mosquitto_broker, "pole-a") as box:
        await box.client.subscribe(topics.down("pole-a", "command"), qos=1)
        snapshot = {"name": "snapshot", "args": {"camera_id": "cam1"}}
        assert (await api.post("/api/devices/pole-a/commands", headers=operator, json=snapshot)).status_code == 403
        unknown = await api.post("/api/devices/pole-a/commands", headers=ops, json={"name": "reboot"})
        assert unknown.status_code == 422 and "unknown command 'reboot'" in unknown.json()["detail"]
        assert "rotate_credentials" not in unknown.json()["detail"]  # not offered among the known ones
        # Rotation has its own route (the server makes, seals and retires the credential): refused here,
        # pointing there, and nothing recorded or sent (the next message the box gets is the DEBUG one).
        rotate = {"name": "rotate_credentials", "args": {"kind": "certificate", "certificate_pem": "x"}}
        wrong = await api.post("/api/devices/pole-a/commands", headers=ops, json=rotate)
        assert wrong.status_code == 422, wrong.text
        assert "POST /api/devices/pole-a/credentials/rotate" in wrong.json()["detail"]
        assert (await api.get("/api/devices/pole-a/commands", headers=operator)).json()["items"] == []
        bad = await api.post("/api/devices/pole-a/commands", headers=ops,
                             json={"name": "set_log_level", "args": {"level": "LOUD"}})  # fmt: skip
        assert bad.status_code == 422 and bad.json()["detail"].startswith("args.level:")
        debug = {"name": "set_log_level", "args": {"level": "DEBUG"}, "expires_in_s": 60}
        sent = await api.post("/api/devices/pole-a/commands", headers=ops, json=debug)
        assert sent.status_code == 200, sent.text
        command = sent.json()
        assert command["status"] == "sent" and command["created_by"].startswith("token:")
        m = await asyncio.wait_for(anext(box.client.messages), 10)
        received = decode(m.payload if isinstance(m.payload, bytes) else b"", topics.parse(m.topic.value),
                          kinds=DOWN_KINDS)  # fmt: skip
        assert isinstance(received, CommandMessage) and received.body.command_id == command["command_id"]
        assert json.loads(bytes(m.payload))["body"]["args"] == {"level": "DEBUG"}
        ack = CommandAck(command_id=command["command_id"], name="set_log_level", status="done",
                         result={"level": "DEBUG", "previous": "INFO"})  # fmt: skip
        await box.send(build(ack, device_id="pole-a", seq=5))

        async def acked() -> Any:
            items = (await api.get("/api/devices/pole-a/commands", headers=operator)).json()["items"]
            return items[0] if items[0]["status"] == "done" else None

        done = await wait_for(acked, what="the ack stored")
        assert done["result"] == {"level": "DEBUG", "previous": "INFO"} and done["acked_at"]
    assert ("command.send", "pole-a") in [(a, t) for _, a, t in audit_actions(database)]


@pytest.mark.postgres
async def test_two_changes_to_one_layer_at_once_the_second_is_refused_whole(
    postgres_server: postgres.PostgresServer,
) -> None:
    # PostgreSQL only: its row locks hold the second change at its insert, where the test can see it
    # waiting; SQLite has one writer at a time and nothing to observe.
    database = postgres_server.create_database()
    ops = bearer(add_token(database, "ops"))
    engine = make_engine(database)
    sessions = make_sessionmaker(engine)
    try:
        async with server(None, database) as api:
            with sessions.begin() as first:  # the first change, not committed yet
                configuration_service.apply(first, Actor("test:first"), configuration_service.Proposal(
                    "fleet", "", {"log_level": "DEBUG"}))  # fmt: skip
                second = asyncio.create_task(api.post("/api/config/layers", headers=ops, json={
                    "scope": "fleet", "document": {"log_level": "ERROR"}}))  # fmt: skip

                def waiting_on_lock() -> bool:
                    with engine.connect() as conn:
                        n = conn.execute(sa.text(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                            "AND query LIKE 'INSERT INTO config_layers%'")).scalar()  # fmt: skip
                    return bool(n)

                await wait_for(lambda: asyncio.to_thread(waiting_on_lock), what="the second change waiting")
            response = await second
        assert response.status_code == 409 and "preview again" in response.json()["detail"]
        with sessions() as s:
            rows = s.execute(sa.select(ConfigLayer.version, ConfigLayer.document)).all()
            assert [(v, d) for v, d in rows] == [(1, {"log_level": "DEBUG"})]
            assert [a for _, a, _ in audit_actions(database) if a.startswith("config.")] == ["config.change"]
    finally:
        engine.dispose()
        postgres_server.drop_database(database)
