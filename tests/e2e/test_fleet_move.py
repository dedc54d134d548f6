"""Moving the fleet from the server's side: the real API and CLI, the real ingest on broker A, the real agent
runtime trusting the server's own key, and broker B where it must end up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path

import aiomqtt
import httpx
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from polewatch.agent.config import parse_config
from polewatch.agent.runtime import Agent
from polewatch.fleet_server import create_app
from polewatch.fleet_server.cli import app as server_cli
from polewatch.fleet_server.db import make_engine
from polewatch.fleet_server.models import AuditEntry
from polewatch.fleet_server.settings import Settings
from polewatch.fleet_server.signing_key import public_key_pem
from polewatch.protocol import MoveServerMessage, decode, topics
from polewatch.protocol.move import check_directive
from polewatch.protocol.signing import load_public_key
from support.brokers import USERS, BrokerProcess
from support.fleet import eventually
from support.footage import SAMPLE_CLIP
from support.server import add_token, bearer, settings_for

pytestmark = [pytest.mark.e2e, pytest.mark.mqtt, pytest.mark.server]


@contextlib.asynccontextmanager
async def server(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await app.state.services.ingest.wait_connected(timeout=15)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fleet", timeout=30) as client:
            yield client


async def test_ops_move_the_fleet_and_see_each_box_answer(
    two_brokers: tuple[BrokerProcess, BrokerProcess], tmp_path: Path
) -> None:
    a, b = two_brokers
    database = f"sqlite:///{tmp_path / 'fleet.db'}"
    settings = settings_for(a, database, signing_key_file=str(tmp_path / "server" / "signing.pem"))
    pem, kid = public_key_pem(settings)  # what enrolment hands a box
    assert stat.S_IMODE(os.stat(tmp_path / "server" / "signing.pem").st_mode) == 0o600
    (tmp_path / "command-key.pem").write_text(pem)
    config = parse_config({
        "device_id": "pole-a", "state_dir": str(tmp_path / "state"),
        "mqtt": {"host": a.host, "port": a.port, "username": "pole-a", "password": USERS["pole-a"],
                 "keepalive_s": 5, "reconnect_max_s": 0.5},
        "cameras": [{"id": "cam1", "url": str(SAMPLE_CLIP), "loop": True}], "detect": {"fps": 1},
        "health_interval_s": 1, "trust": {"command_key": str(tmp_path / "command-key.pem")},
    })  # fmt: skip
    ops, viewer = add_token(database, "ops"), add_token(database, "viewer")
    agent = Agent(config)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        async with server(settings) as api:
            await eventually(lambda: agent.uplink.connected or task.done(), 30, "the agent on A")
            assert not task.done()
            # Heard from by the ingest, so part of the fleet.
            for _ in range(100):
                if (await api.get("/api/devices/pole-a", headers=bearer(ops))).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            refused = await api.post("/api/fleet/move", headers=bearer(viewer), json={"mqtt_host": "x"})
            assert refused.status_code == 403
            bad = await api.post("/api/fleet/move", headers=bearer(ops),
                                 json={"mqtt_host": "127.0.0.1", "tls": False, "ca_pem": "-----BEGIN"})  # fmt: skip
            assert bad.status_code == 422 and "tls is false" in bad.json()["detail"]
            none = await api.post("/api/fleet/move", headers=bearer(ops),
                                  json={"mqtt_host": "127.0.0.1", "devices": []})  # fmt: skip
            assert none.status_code == 409 and "no devices" in none.json()["detail"]

            issued = await api.post("/api/fleet/move", headers=bearer(ops),
                                    json={"mqtt_host": "127.0.0.1", "mqtt_port": b.port, "tls": False})  # fmt: skip
            assert issued.status_code == 200, issued.text
            move = issued.json()
            assert move["serial"] == 1 and move["target"] == "*" and move["key_id"] == kid
            assert [(d["device_id"], d["status"]) for d in move["devices"]] == [("pole-a", "sent")]
            await eventually(lambda: agent.uplink.connected and agent.uplink.config.port == b.port, 20, "B")

            async def answered() -> dict[str, object]:
                for _ in range(200):
                    got = (await api.get("/api/fleet/moves/1", headers=bearer(viewer))).json()
                    if got["devices"][0]["status"] != "sent":
                        return dict(got["devices"][0])
                    await asyncio.sleep(0.1)
                raise AssertionError("no answer from pole-a")

            device = await answered()
            assert device["status"] == "done" and device["command_id"] == "move-1-pole-a"
            assert (await api.get("/api/fleet/moves/2", headers=bearer(viewer))).status_code == 404
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)
    engine = make_engine(database)
    with engine.connect() as conn:
        actions = list(conn.execute(sa.select(AuditEntry.action, AuditEntry.actor).where(
            AuditEntry.action == "fleet.move")))  # fmt: skip
    engine.dispose()
    assert len(actions) == 1 and actions[0].actor.startswith("token:")

    # The CLI issues the next serial, retained per box, signed with the same key.
    env = {"POLEWATCH_MQTT_PASSWORD": USERS["fleet-server"]}
    result = await asyncio.to_thread(CliRunner().invoke, server_cli, [
        "move-fleet", "--mqtt-host", "mqtt.balikpapan.example", "--mqtt-port", "8883", "--device", "pole-q",
        "--database-url", database, "--signing-key-file", str(tmp_path / "server" / "signing.pem"),
        "--broker-host", a.host, "--broker-port", str(a.port), "--broker-username", "fleet-server",
    ], env=env)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "move 2 to mqtt.balikpapan.example:8883" in result.output and "pole-q" in result.output
    async with aiomqtt.Client(a.host, a.port, username="tester", password=USERS["tester"]) as client:
        await client.subscribe(topics.down("pole-q", "move_server"), qos=1)
        message = await asyncio.wait_for(anext(aiter(client.messages)), 10)
    assert message.retain, "kept by the broker for a box that is off"
    received = decode(bytes(message.payload), kinds=("move_server",))
    assert isinstance(received, MoveServerMessage)
    directive = check_directive(received.body.directive, received.body.signature, received.body.key_id,
                                load_public_key(pem), device_id="pole-q", last_serial=1,
                                now=datetime.now(timezone.utc))  # fmt: skip
    assert directive.serial == 2 and directive.target == "pole-q" and directive.mqtt.tls


def test_move_fleet_with_an_unreadable_ca_file_says_so_and_records_nothing(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'fleet.db'}"
    result = CliRunner().invoke(server_cli, [
        "move-fleet", "--mqtt-host", "new.example", "--ca-file", str(tmp_path / "missing.pem"),
        "--database-url", database,
    ])  # fmt: skip
    assert result.exit_code == 2
    assert "missing.pem" in result.output
    assert not (tmp_path / "fleet.db").exists()
