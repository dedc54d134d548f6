"""Technicians work on their assigned sites only: an admin assigns them (audited), and every route
a technician may use shows and changes only what is on those sites. Both databases, real HTTP app."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest

from polewatch.fleet_server import create_app
from polewatch.fleet_server.db import make_engine, make_sessionmaker
from polewatch.fleet_server.store import Received, Store
from support.server import (
    PASSWORD,
    add_token,
    add_user,
    bearer,
    camera_health,
    database_url,
    detection,
    health,
    live_server,
    presence,
    settings_for,
    sse_events,
)

pytestmark = pytest.mark.server


@contextlib.asynccontextmanager
async def _clients(database: str) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient, int]]:
    """(admin, the technician tess signed in, tess's user id), over a registry of two sites."""
    tess = add_user(database, "tess", "technician")
    app = create_app(settings_for(None, database, health_compact_interval_s=0), run_ingest=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with (
            httpx.AsyncClient(
                transport=transport, base_url="http://fleet", headers=bearer(add_token(database))
            ) as admin,
            httpx.AsyncClient(transport=transport, base_url="http://fleet") as tech,
        ):
            for site in ("site-a", "site-b"):
                assert (await admin.post("/api/sites", json={"site_id": site, "name": site})).status_code == 201
            for pole, site in (("pole-a1", "site-a"), ("pole-a2", "site-a"), ("pole-b1", "site-b")):
                made = await admin.post("/api/poles", json={"pole_id": pole, "site_id": site, "name": pole})
                assert made.status_code == 201
            for box, pole in (("box-a", "pole-a1"), ("box-b", "pole-b1")):
                made = await admin.post("/api/registry/devices", json={"device_id": box, "pole_id": pole})
                assert made.status_code == 201
            login = await tech.post("/api/auth/login", json={"username": "tess", "password": PASSWORD})
            assert login.status_code == 200
            yield admin, tech, tess


def _ids(response: httpx.Response, key: str) -> list[str]:
    assert response.status_code == 200, response.text
    return [item[key] for item in response.json()["items"]]


async def test_admin_assigns_sites_checked_and_audited(database: str) -> None:
    async with _clients(database) as (admin, _tech, tess):
        unknown = await admin.put(f"/api/users/{tess}/sites", json={"sites": ["site-a", "nowhere"]})
        assert unknown.status_code == 422 and "no such site: nowhere" in unknown.json()["detail"]
        assert (await admin.get(f"/api/users/{tess}")).json()["sites"] == []  # nothing half-applied

        done = await admin.put(f"/api/users/{tess}/sites", json={"sites": ["site-a", "site-a"]})
        assert done.status_code == 200 and done.json()["sites"] == ["site-a"]
        audit = (await admin.get("/api/audit", params={"action": "user.sites"})).json()["items"]
        assert [(a["target_id"], a["before"], a["after"]) for a in audit] == [
            (str(tess), {"sites": []}, {"sites": ["site-a"]})
        ]
        assert (await admin.put("/api/users/999999/sites", json={"sites": []})).status_code == 404


async def test_a_technician_sees_and_changes_only_their_sites(database: str) -> None:
    async with _clients(database) as (admin, tech, tess):
        assert (await admin.put(f"/api/users/{tess}/sites", json={"sites": ["site-a"]})).status_code == 200

        # Lists: only site A's entries. Ops still sees everything.
        assert _ids(await tech.get("/api/sites"), "site_id") == ["site-a"]
        assert _ids(await tech.get("/api/poles"), "pole_id") == ["pole-a1", "pole-a2"]
        assert _ids(await tech.get("/api/poles", params={"site_id": "site-b"}), "pole_id") == []
        assert _ids(await tech.get("/api/registry/devices"), "device_id") == ["box-a"]
        assert _ids(await admin.get("/api/registry/devices"), "device_id") == ["box-a", "box-b"]

        # Site B's things do not exist for her (404, like an id that really does not exist)...
        for path in ("/api/sites/site-b", "/api/sites/site-b/health", "/api/poles/pole-b1",
                     "/api/poles/pole-b1/history", "/api/registry/devices/box-b",
                     "/api/registry/devices/box-b/history", "/api/devices/box-b",
                     "/api/devices/box-b/credentials"):  # fmt: skip
            response = await tech.get(path)
            assert response.status_code == 404, path
            assert "your sites" in response.json()["detail"], path
        assert (await tech.get("/api/poles/pole-a1")).status_code == 200
        assert (await tech.get("/api/registry/devices/box-a")).status_code == 200
        fleet = (await tech.get("/api/fleet/health")).json()  # her fleet: site A's one box
        assert (
            sum(fleet["devices"].values()) == 1
            and sum((await admin.get("/api/fleet/health")).json()["devices"].values()) == 2
        )

        # ...and cannot be changed; nothing on site B moved.
        writes: list[tuple[str, str, dict[str, Any]]] = [
            ("PATCH", "/api/poles/pole-b1", {"name": "taken"}),
            ("PATCH", "/api/registry/devices/box-b", {"hardware": "pi5"}),
            ("PUT", "/api/registry/devices/box-b/tags", {"tags": ["mine"]}),
            ("POST", "/api/registry/devices/box-b/move", {"pole_id": "pole-a2"}),
        ]
        for method, path, body in writes:
            assert (await tech.request(method, path, json=body)).status_code == 404, path
        refused: list[tuple[str, str, dict[str, Any]]] = [
            ("POST", "/api/poles", {"pole_id": "pole-b2", "site_id": "site-b", "name": "b2"}),
            ("PATCH", "/api/poles/pole-a1", {"site_id": "site-b"}),
            ("POST", "/api/registry/devices/box-a/move", {"pole_id": "pole-b1"}),
            ("POST", "/api/registry/devices", {"device_id": "box-c", "pole_id": "pole-b1"}),
            ("POST", "/api/registry/devices", {"device_id": "box-c"}),
            ("POST", "/api/enrolment/codes", {"pole_id": "pole-b1"}),
        ]
        for method, path, body in refused:
            response = await tech.request(method, path, json=body)
            assert response.status_code == 403, (path, body, response.text)
            assert (
                "not one of your sites" in response.json()["detail"] or "no site of yours" in response.json()["detail"]
            )
        pole_b1 = (await admin.get("/api/poles/pole-b1")).json()
        box_b = (await admin.get("/api/registry/devices/box-b")).json()
        assert pole_b1["name"] == "pole-b1" and box_b["pole_id"] == "pole-b1" and box_b["tags"] == []
        assert (await admin.get("/api/poles/pole-a1")).json()["site_id"] == "site-a"

        # On site A she does her job: a new pole, the box moved there, a new box, a code.
        made = await tech.post("/api/poles", json={"pole_id": "pole-a3", "site_id": "site-a", "name": "a3"})
        assert made.status_code == 201
        moved = await tech.post("/api/registry/devices/box-a/move", json={"pole_id": "pole-a3"})
        assert moved.status_code == 200 and moved.json()["pole_id"] == "pole-a3"
        new = await tech.post("/api/registry/devices", json={"device_id": "box-c", "pole_id": "pole-a1"})
        assert new.status_code == 201
        assert (await tech.patch("/api/poles/pole-a2", json={"name": "by the market"})).status_code == 200
        assert (await tech.post("/api/enrolment/codes", json={"pole_id": "pole-a2"})).status_code == 201

        # Re-assigned to site B: her next request sees B, not A.
        assert (await admin.put(f"/api/users/{tess}/sites", json={"sites": ["site-b"]})).status_code == 200
        assert _ids(await tech.get("/api/poles"), "pole_id") == ["pole-b1"]
        assert (await tech.get("/api/poles/pole-a1")).status_code == 404


def _heard_from(database: str) -> None:
    """What the boxes on both sites sent, stored the way the ingest stores it."""
    engine = make_engine(database_url(database))
    try:
        now = datetime.now(timezone.utc)
        batch = [
            Received(message, now)
            for box in ("box-b", "box-a")  # B first: an unfiltered backlog would start with B's detection
            for message in (presence(box), health(box), detection(box, event_id=f"{box}-trk"), camera_health(box))
        ]
        outcomes = Store(make_sessionmaker(engine)).apply_batch(batch)
        assert all(o.error is None and not o.duplicate for o in outcomes), outcomes
    finally:
        engine.dispose()


async def test_a_technician_reads_only_what_the_boxes_on_their_sites_sent(database: str) -> None:
    async with _clients(database) as (admin, tech, tess):
        assert (await admin.put(f"/api/users/{tess}/sites", json={"sites": ["site-a"]})).status_code == 200
        _heard_from(database)

        for path, key in (("/api/devices", "device_id"), ("/api/events", "device_id"),
                          ("/api/camera-health", "device_id")):  # fmt: skip
            assert sorted(set(_ids(await tech.get(path), key))) == ["box-a"], path
            assert sorted(set(_ids(await admin.get(path), key))) == ["box-a", "box-b"], path
        # Asking for site B's box by name gives nothing rather than its data.
        assert _ids(await tech.get("/api/events", params={"device_id": "box-b"}), "device_id") == []
        assert (await tech.get("/api/devices/box-a/delivery")).status_code == 200
        refused = await tech.get("/api/devices/box-b/delivery")
        assert refused.status_code == 404 and "your sites" in refused.json()["detail"]
        assert (await admin.get("/api/devices/box-b/delivery")).status_code == 200

    # The live feed's first snapshot and backlog: site A's box only (a real server: the stream never ends).
    async with (
        live_server(settings_for(None, database, health_compact_interval_s=0)) as base,
        httpx.AsyncClient(base_url=base, timeout=20) as live,
    ):
        assert (await live.post("api/auth/login", json={"username": "tess", "password": PASSWORD})).status_code == 200
        seen: dict[str, list[str]] = {"devices": [], "detection": []}
        async with live.stream("GET", "api/stream", params={"backlog": 10}) as response:
            assert response.status_code == 200
            async for event in sse_events(response.aiter_lines()):
                data = json.loads(event["data"])
                if event.get("event") == "devices":
                    seen["devices"] = [d["device_id"] for d in data]
                elif event.get("event") == "detection":
                    seen["detection"].append(data["device_id"])
                    break
        assert seen == {"devices": ["box-a"], "detection": ["box-a"]}
