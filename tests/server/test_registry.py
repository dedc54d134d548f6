"""The registry over the real API and database (both engines): sites, poles, devices, moves and
replacements with their history, groups, tags, the health roll-up and the access rules."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import sqlalchemy as sa

from polewatch.fleet_server import create_app
from polewatch.fleet_server.db import make_engine, make_sessionmaker
from polewatch.fleet_server.models import AuditEntry, CameraHealthEvent, Device
from polewatch.fleet_server.store import Received, Store
from polewatch.protocol import CameraStatus, Health, build
from support.server import add_token, bearer, settings_for


@contextlib.asynccontextmanager
async def client_as(database: str, role: str = "ops") -> AsyncIterator[httpx.AsyncClient]:
    token = add_token(database, role, f"registry-{role}")
    app = create_app(settings_for(None, database), run_ingest=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fleet", headers=bearer(token)) as client:
            yield client


async def seed(client: httpx.AsyncClient) -> None:
    site = {"site_id": "bontang-selatan", "name": "Bontang Selatan", "district": "Bontang Selatan",
            "kelurahan": "Tanjung Laut", "latitude": 0.12, "longitude": 117.48}  # fmt: skip
    assert (await client.post("/api/sites", json=site)).status_code == 201
    for n in (1, 2, 3):
        pole = {"pole_id": f"bts-{n:03}", "site_id": "bontang-selatan", "name": f"Jl. Ahmad Yani {n}",
                "latitude": 0.12 + n / 1000, "longitude": 117.48}  # fmt: skip
        assert (await client.post("/api/poles", json=pole)).status_code == 201


def run_sql(database: str, change: Any) -> None:
    engine = make_engine(database)
    try:
        with make_sessionmaker(engine).begin() as session:
            change(session)
    finally:
        engine.dispose()


def audit_actions(database: str) -> list[str]:
    engine = make_engine(database)
    try:
        with sa.orm.Session(engine) as s:
            return [a for (a,) in s.execute(sa.select(AuditEntry.action).order_by(AuditEntry.id))]
    finally:
        engine.dispose()


async def test_sites_poles_and_devices_with_moves_replacements_and_history(database: str) -> None:
    async with client_as(database) as client:
        await seed(client)
        body = {
            "device_id": "box-a", "pole_id": "bts-001", "hardware": "Raspberry Pi 5", "agent_version": "0.4.0",
            "model_version": "yolo-n-2026.10", "cameras": ["cam1", "cam2"], "tags": ["night-ir", "pilot"],
        }  # fmt: skip
        created = await client.post("/api/registry/devices", json=body)
        assert created.status_code == 201, created.text
        device = created.json()
        assert device["pole_id"] == "bts-001" and device["tags"] == ["night-ir", "pilot"]
        assert device["health"] == {"state": "never_seen", "online": False, "last_seen": None,
                                    "cameras": {"cam1": "down", "cam2": "down"}}  # fmt: skip

        # A pole carries one box: a second one is refused and nothing is stored for it.
        taken = await client.post("/api/registry/devices", json={"device_id": "box-b", "pole_id": "bts-001"})
        assert taken.status_code == 409 and "carries device 'box-a'" in taken.json()["detail"]
        assert (await client.get("/api/registry/devices/box-b")).status_code == 404

        assert (await client.post("/api/registry/devices", json={"device_id": "box-b"})).status_code == 201
        moved = await client.post("/api/registry/devices/box-a/move", json={"pole_id": "bts-002"})
        assert moved.status_code == 200 and moved.json()["pole_id"] == "bts-002"
        assert (await client.post("/api/registry/devices/box-b/move", json={"pole_id": "bts-001"})).status_code == 200
        down = await client.post("/api/registry/devices/box-b/move", json={"pole_id": None})
        assert down.json()["pole_id"] is None

        history = (await client.get("/api/poles/bts-001/history")).json()["items"]
        assert [(h["action"], h["device_id"]) for h in history] == [
            ("removed", "box-b"), ("moved", "box-b"), ("moved", "box-a"), ("installed", "box-a"),
        ]  # fmt: skip
        assert history[2]["from_pole_id"] == "bts-001" and history[2]["pole_id"] == "bts-002"

        by_site = (await client.get("/api/registry/devices", params={"site_id": "bontang-selatan"})).json()
        assert [d["device_id"] for d in by_site["items"]] == ["box-a"]
        tagged = (await client.get("/api/registry/devices", params={"tag": "pilot"})).json()
        assert [d["device_id"] for d in tagged["items"]] == ["box-a"]
        retag = await client.put("/api/registry/devices/box-a/tags", json={"tags": ["pilot", "pilot", "river"]})
        assert retag.json()["tags"] == ["pilot", "river"]

        # Pages: keyset by device id, `next` until null.
        first = (await client.get("/api/registry/devices", params={"limit": 1})).json()
        second = (await client.get("/api/registry/devices", params={"limit": 1, "cursor": first["next"]})).json()
        assert [first["items"][0]["device_id"], second["items"][0]["device_id"]] == ["box-a", "box-b"]
        assert second["next"] is None

        patched = await client.patch("/api/poles/bts-003", json={"address": "Jl. Ahmad Yani 3, RT 12"})
        assert patched.json()["address"] == "Jl. Ahmad Yani 3, RT 12" and patched.json()["name"] == "Jl. Ahmad Yani 3"

    actions = audit_actions(database)
    assert actions.count("device.move") == 3 and actions.count("device.register") == 2
    assert "site.create" in actions and actions.count("pole.create") == 3 and actions[-1] == "pole.update"


async def test_groups_and_membership(database: str) -> None:
    async with client_as(database) as client:
        await seed(client)
        for n in (1, 2):
            await client.post("/api/registry/devices", json={"device_id": f"box-{n}", "pole_id": f"bts-00{n}"})
        group = {"group_id": "riverside", "name": "Riverside"}
        assert (await client.post("/api/groups", json=group)).status_code == 201
        assert (await client.post("/api/groups", json={"group_id": "riverside", "name": "Again"})).status_code == 409
        assert (await client.put("/api/groups/riverside/members/box-2")).status_code == 200
        assert (await client.put("/api/groups/riverside/members/box-2")).status_code == 200  # repeat: no-op
        members = (await client.get("/api/registry/devices", params={"group_id": "riverside"})).json()["items"]
        assert [d["device_id"] for d in members] == ["box-2"]
        missing = await client.put("/api/groups/riverside/members/box-9")
        assert missing.status_code == 404 and "box-9" in missing.json()["detail"]
        assert (await client.delete("/api/groups/riverside/members/box-2")).status_code == 200
        assert (await client.get("/api/registry/devices", params={"group_id": "riverside"})).json()["items"] == []
    assert audit_actions(database).count("group.add") == 1


async def test_the_roll_up_follows_the_newest_health_report_the_ingest_stores(database: str) -> None:
    """The roll-up reads a device's cameras from the signature stored with its newest report
    (camera_signature.py), not from the report: the two must change together, and a report that
    arrives late (older by the device's clock) must change neither."""
    now = datetime.now(timezone.utc)

    def report(seq: int, cam2_up: bool, sent_ago_s: float) -> Received:
        cameras = [CameraStatus(camera_id="cam1", connected=True, fps=12.0),
                   CameraStatus(camera_id="cam2", connected=cam2_up, fps=12.0 if cam2_up else 0.0)]  # fmt: skip
        body = Health(agent_version="0.4.0", uptime_s=60, cpu_percent=20, memory_percent=30, memory_rss_bytes=1,
                      disk_percent=10, disk_free_bytes=1, cameras=cameras, detect_fps=5.0)  # fmt: skip
        message = build(body, device_id="box-1", seq=seq)
        return Received(message.model_copy(update={"sent_at": now - timedelta(seconds=sent_ago_s)}), now)

    async def fleet(client: httpx.AsyncClient) -> tuple[dict[str, int], list[tuple[str, str]]]:
        answer = (await client.get("/api/fleet/health")).json()
        return answer["cameras"], [(b["device_id"], b["camera_id"]) for b in answer["blind_spots"]]

    engine = make_engine(database)
    try:
        store = Store(make_sessionmaker(engine))
        async with client_as(database) as client:
            await seed(client)
            body = {"device_id": "box-1", "pole_id": "bts-001", "cameras": ["cam1", "cam2"]}
            assert (await client.post("/api/registry/devices", json=body)).status_code == 201

            assert not any(o.error or o.duplicate for o in store.apply_batch([report(1, False, sent_ago_s=10)]))
            assert await fleet(client) == ({"up": 1, "degraded": 0, "down": 1}, [("box-1", "cam2")])
            store.apply_batch([report(2, True, sent_ago_s=60)])  # older than the one stored: history only
            assert await fleet(client) == ({"up": 1, "degraded": 0, "down": 1}, [("box-1", "cam2")])
            store.apply_batch([report(3, True, sent_ago_s=1)])
            assert await fleet(client) == ({"up": 2, "degraded": 0, "down": 0}, [])
    finally:
        engine.dispose()


async def test_health_roll_up_per_device_site_and_fleet(database: str) -> None:
    now = datetime.now(timezone.utc)
    async with client_as(database) as client:
        await seed(client)
        for n, cams in ((1, ["cam1", "cam2"]), (2, ["cam1"]), (3, ["cam1"])):
            body = {"device_id": f"box-{n}", "pole_id": f"bts-00{n}", "cameras": cams}
            assert (await client.post("/api/registry/devices", json=body)).status_code == 201
        await client.post("/api/registry/devices", json={"device_id": "box-4", "cameras": ["cam1"]})

        def heard(session: sa.orm.Session) -> None:
            def device(device_id: str, online: bool, cameras: list[dict[str, Any]], ago_s: float = 5) -> Device:
                seen = now - timedelta(seconds=ago_s)
                return Device(device_id=device_id, first_seen=seen, last_seen=seen, online=online,
                              last_health={"cameras": cameras}, last_health_at=seen)  # fmt: skip

            up = {"camera_id": "cam1", "connected": True, "fps": 12.0}
            session.add(device("box-1", True, [up, {"camera_id": "cam2", "connected": False, "fps": 0.0}]))
            session.add(device("box-2", True, [up]))
            session.add(device("box-3", True, [up], ago_s=3600))  # silent for an hour: offline
            session.add(device("box-4", True, [up]))
            session.flush()
            session.add(CameraHealthEvent(
                message_id="m-covered", device_id="box-2", seq=1, camera_id="cam1", condition="covered",
                phase="start", since=now - timedelta(minutes=3), sent_at=now, received_at=now,
            ))  # fmt: skip

        run_sql(database, heard)
        one = (await client.get("/api/registry/devices/box-1")).json()["health"]
        assert one["state"] == "degraded" and one["online"] is True
        assert one["cameras"] == {"cam1": "up", "cam2": "down"}
        two = (await client.get("/api/registry/devices/box-2")).json()["health"]
        assert two == {**two, "state": "degraded", "cameras": {"cam1": "degraded"}}
        three = (await client.get("/api/registry/devices/box-3")).json()["health"]
        assert three["state"] == "offline" and three["cameras"] == {"cam1": "down"}

        site = (await client.get("/api/sites/bontang-selatan/health")).json()
        assert site["devices"] == {"ok": 0, "degraded": 2, "offline": 1, "never_seen": 0}
        assert site["cameras"] == {"up": 1, "degraded": 1, "down": 2}
        assert site["blind_spots_total"] == 3
        assert {(b["device_id"], b["camera_id"]) for b in site["blind_spots"]} == {
            ("box-1", "cam2"), ("box-2", "cam1"), ("box-3", "cam1"),
        }  # fmt: skip
        fleet = (await client.get("/api/fleet/health")).json()
        assert fleet["devices"] == {"ok": 1, "degraded": 2, "offline": 1, "never_seen": 0}
        assert fleet["cameras"]["up"] == 2

        # The condition ends: the camera is up again.
        def ended(session: sa.orm.Session) -> None:
            session.add(CameraHealthEvent(
                message_id="m-covered-end", device_id="box-2", seq=2, camera_id="cam1", condition="covered",
                phase="end", since=now - timedelta(minutes=3), until=now, sent_at=now, received_at=now,
            ))  # fmt: skip

        run_sql(database, ended)
        assert (await client.get("/api/registry/devices/box-2")).json()["health"]["state"] == "ok"


async def test_bad_input_is_refused_and_changes_nothing(database: str) -> None:
    async with client_as(database) as client:
        await seed(client)
        before = (await client.get("/api/poles")).json()
        cases = [
            ("post", "/api/poles", {"pole_id": "bts-009", "site_id": "nowhere", "name": "x"}, 404, "unknown site"),
            ("post", "/api/poles", {"pole_id": "bts-001", "site_id": "bontang-selatan", "name": "x"}, 409, "exists"),
            ("post", "/api/poles", {"pole_id": "bad id!", "site_id": "bontang-selatan", "name": "x"}, 422, "pole_id"),
            ("post", "/api/poles", {"pole_id": "p", "site_id": "bontang-selatan", "name": "x", "latitude": 91}, 422,
             "latitude"),
            ("patch", "/api/poles/bts-001", {"name": None}, 422, "cannot be removed"),
            ("patch", "/api/poles/bts-001", {"colour": "green"}, 422, "colour"),
            ("post", "/api/registry/devices", {"device_id": "b", "pole_id": "bts-404"}, 404, "unknown pole"),
            ("post", "/api/registry/devices/ghost/move", {"pole_id": "bts-001"}, 404, "not in the registry"),
        ]  # fmt: skip
        for method, path, body, status, words in cases:
            response = await client.request(method.upper(), path, json=body)
            assert response.status_code == status, (path, body, response.text)
            assert words in response.json()["detail"], response.json()
        assert (await client.get("/api/poles")).json() == before
        assert (await client.get("/api/registry/devices")).json()["items"] == []
        bad_cursor = await client.get("/api/registry/devices", params={"cursor": "../x"})
        assert bad_cursor.status_code == 422
    assert audit_actions(database).count("device.register") == 0


async def test_only_ops_and_admin_change_the_registry(database: str) -> None:
    for role in ("viewer", "operator", "technician"):
        async with client_as(database, role) as client:
            assert (await client.get("/api/sites")).status_code == 200
            refused = await client.post("/api/sites", json={"site_id": f"s-{role}", "name": "x"})
            assert refused.status_code == 403 and "registry:manage" in refused.json()["detail"]
    async with client_as(database, "admin") as client:
        assert (await client.get("/api/sites")).json()["items"] == []
