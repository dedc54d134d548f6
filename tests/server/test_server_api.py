"""The REST API over a real SQLite database filled through the ingest's own write path."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from polewatch.fleet_server import create_app
from polewatch.fleet_server.store import Received
from polewatch.protocol import AnyMessage
from support.server import add_token, bearer, camera_health, detection, health, presence, settings_for


@contextlib.asynccontextmanager
async def api(database: str, messages: list[AnyMessage]) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings_for(None, database), run_ingest=False)
    async with app.router.lifespan_context(app):  # migrates the fresh database
        store = app.state.services.store
        now = datetime.now(timezone.utc)
        store.apply_batch([Received(m, now) for m in messages])
        transport = httpx.ASGITransport(app=app)
        headers = bearer(add_token(database, "admin"))
        async with httpx.AsyncClient(transport=transport, base_url="http://fleet", headers=headers) as client:
            yield client


@pytest.fixture
async def client(database: str) -> AsyncIterator[httpx.AsyncClient]:
    messages: list[AnyMessage] = [
        presence("pole-a", "online"),
        health("pole-a", cpu=12.0),
        presence("pole-b", "online"),
        presence("pole-b", "offline", reason="connection lost"),
    ]
    for i in range(7):
        messages.append(detection("pole-a", label="person" if i % 2 == 0 else "car", event_id=f"a{i}"))
    for i in range(3):
        messages.append(detection("pole-b", label="person", event_id=f"b{i}"))
    async with api(database, messages) as c:
        yield c


async def test_devices_show_presence_and_last_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/devices")
    assert response.status_code == 200
    assert response.json()["next"] is None
    devices = {d["device_id"]: d for d in response.json()["items"]}
    assert list(devices) == ["pole-a", "pole-b"]
    assert devices["pole-a"]["online"] is True
    assert devices["pole-a"]["last_health"]["cpu_percent"] == 12.0
    assert devices["pole-a"]["last_health"]["cameras"][0]["fps"] == 12.5
    assert devices["pole-b"]["online"] is False
    assert devices["pole-b"]["presence_reason"] == "connection lost"
    assert devices["pole-b"]["last_health"] is None
    assert devices["pole-a"]["last_seen"].endswith(("Z", "+00:00"))

    one = await client.get("/api/devices/pole-b")
    assert one.status_code == 200 and one.json() == devices["pole-b"]


async def test_unknown_device_and_bad_parameters_are_json_errors(client: httpx.AsyncClient) -> None:
    missing = await client.get("/api/devices/pole-zz")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/json"
    assert missing.json() == {"detail": "unknown device 'pole-zz'"}

    bad = await client.get("/api/events", params={"limit": 0})
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/json"
    assert bad.json()["detail"] == "invalid request: query.limit: Input should be greater than or equal to 1"
    assert bad.json()["errors"][0]["loc"] == ["query", "limit"]

    for path in ("/api/events", "/api/camera-health"):
        forged = await client.get(path, params={"cursor": "drop table"})
        assert forged.status_code == 422
        assert forged.json()["detail"].startswith("invalid request: query.cursor: String should match pattern")
        too_big = await client.get(path, params={"cursor": str(2**63)})
        assert too_big.json() == {"detail": f"cursor '{2**63}' is not one this list handed out"}

    nowhere = await client.get("/api/nothing-here")
    assert nowhere.status_code == 404 and nowhere.json() == {"detail": "no such path: /api/nothing-here"}
    wrong_method = await client.delete("/api/events")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "GET"
    assert wrong_method.json() == {"detail": "DELETE is not allowed on /api/events: use GET"}
    assert (await client.get("/api/stream", params={"after": 2**63})).status_code == 422
    # None of it changed anything.
    assert len((await client.get("/api/events", params={"limit": 500})).json()["items"]) == 10


async def test_events_filter_newest_first_and_paginate_by_id(client: httpx.AsyncClient) -> None:
    everything = (await client.get("/api/events", params={"limit": 500})).json()
    ids = [e["id"] for e in everything["items"]]
    assert len(ids) == 10 and ids == sorted(ids, reverse=True)
    assert everything["next"] is None

    mine = (await client.get("/api/events", params={"device_id": "pole-b"})).json()["items"]
    assert [e["event_id"] for e in mine] == ["b2", "b1", "b0"]

    people_a = (await client.get("/api/events", params={"device_id": "pole-a", "label": "person"})).json()
    assert [e["event_id"] for e in people_a["items"]] == ["a6", "a4", "a2", "a0"]
    first = people_a["items"][0]
    assert first["box"] == {"x1": 0.1, "y1": 0.2, "x2": 0.3, "y2": 0.6}
    assert first["camera_id"] == "cam1" and first["score"] == 0.87 and first["phase"] == "start"

    pages: list[list[int]] = []
    cursor: str | None = None
    while True:
        params: dict[str, int | str] = {"limit": 4}
        if cursor is not None:
            params["cursor"] = cursor
        page = (await client.get("/api/events", params=params)).json()
        pages.append([e["id"] for e in page["items"]])
        cursor = page["next"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [4, 4, 2]
    assert [i for p in pages for i in p] == ids


async def test_stats_health_console_and_openapi(client: httpx.AsyncClient) -> None:
    stats = (await client.get("/api/ingest/stats")).json()
    assert stats["connected"] is False and stats["accepted"] == 0 and stats["rejected_by_reason"] == {}

    healthz = await client.get("/healthz")
    assert healthz.status_code == 200
    assert healthz.json() == {"status": "ok", "database": "ok", "mqtt_connected": False}

    anonymous = await client.get("/", headers={"Authorization": ""})
    assert anonymous.status_code == 303 and anonymous.headers["location"] == "/login"
    page = await client.get("/login")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/static/login.js" in page.text and "/static/style.css" in page.text
    for asset in ("/static/app.js", "/static/login.js", "/static/style.css"):
        served = await client.get(asset)
        assert served.status_code == 200
        # The command centre's network is closed: the console must load nothing from elsewhere.
        assert "http://" not in served.text and "https://" not in served.text
    assert "http://" not in page.text and "https://" not in page.text

    spec = (await client.get("/openapi.json")).json()
    assert set(spec["paths"]) == {
        "/api/devices",
        "/api/devices/{device_id}",
        "/api/devices/{device_id}/delivery",
        "/api/events",
        "/api/camera-health",
        "/api/ingest/stats",
        "/api/stream",
        "/api/auth/login",
        "/api/auth/logout",
        "/api/auth/me",
        "/api/users",
        "/api/users/{user_id}",
        "/api/tokens",
        "/api/tokens/{token_id}",
        "/api/audit",
        # registry and enrolment
        "/api/sites",
        "/api/sites/{site_id}",
        "/api/sites/{site_id}/health",
        "/api/fleet/health",
        "/api/poles",
        "/api/poles/{pole_id}",
        "/api/poles/{pole_id}/history",
        "/api/registry/devices",
        "/api/registry/devices/{device_id}",
        "/api/registry/devices/{device_id}/move",
        "/api/registry/devices/{device_id}/tags",
        "/api/registry/devices/{device_id}/history",
        "/api/registry/devices/{device_id}/revoke",
        "/api/registry/devices/{device_id}/replace",
        "/api/groups",
        "/api/groups/{group_id}/members/{device_id}",
        "/api/enrolment",
        "/api/enrolment/status",
        "/api/enrolment/codes",
        "/api/enrolment/codes/{code_id}/revoke",
        # configuration and commands
        "/api/config/devices",
        "/api/config/devices/{device_id}",
        "/api/config/layers",
        "/api/config/members",
        "/api/config/members/{device_id}",
        "/api/config/members/{device_id}/preview",
        "/api/config/preview",
        "/api/config/publish",
        "/api/config/rollback",
        "/api/devices/{device_id}/commands",
        # alerts and their delivery
        "/api/alerts",
        "/api/alerts/stream",
        "/api/alerts/{alert_id}",
        "/api/alerts/{alert_id}/acknowledge",
        "/api/alerts/{alert_id}/assign",
        "/api/alerts/{alert_id}/resolve",
        "/api/alerts/{alert_id}/false-alarm",
        "/api/alerts/{alert_id}/evidence",
        "/api/alerts/{alert_id}/snapshots",
        "/api/agencies",
        "/api/routing-rules",
        "/api/alert-deliveries",
        "/api/alert-deliveries/{delivery_id}/retry",
        # people's sites, health history, moving the fleet, broker credentials
        "/api/users/{user_id}/sites",
        "/api/devices/{device_id}/health/history",
        "/api/fleet/move",
        "/api/fleet/moves/{serial}",
        "/api/devices/{device_id}/credentials",
        "/api/devices/{device_id}/credentials/rotate",
        "/healthz",
    }
    device_404 = spec["paths"]["/api/devices/{device_id}"]["get"]["responses"]["404"]
    assert device_404["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")
    events_params = {p["name"] for p in spec["paths"]["/api/events"]["get"]["parameters"]}
    assert events_params == {"device_id", "label", "limit", "cursor"}
    assert "text/event-stream" in spec["paths"]["/api/stream"]["get"]["responses"]["200"]["content"]
    for name in ("DevicePage", "EventPage", "CameraHealthPage"):
        assert set(spec["components"]["schemas"][name]["properties"]) == {"items", "next"}
    invalid = spec["paths"]["/api/events"]["get"]["responses"]["422"]
    assert invalid["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")


async def test_camera_health_lists_starts_and_ends_and_what_is_still_open(database: str) -> None:
    t0 = datetime(2026, 11, 23, 2, 14, tzinfo=timezone.utc)
    covered_start = camera_health("pole-a", condition="covered", since=t0)
    messages: list[AnyMessage] = [
        covered_start,
        camera_health("pole-a", condition="covered", phase="end", since=t0, until=t0 + timedelta(hours=1)),
        camera_health("pole-a", camera="cam2", condition="shifted", since=t0 + timedelta(minutes=5)),
        # pole-b restarted while frozen: its old start never got an end; the newer start supersedes it.
        camera_health("pole-b", condition="frozen", since=t0),
        camera_health("pole-b", condition="frozen", since=t0 + timedelta(minutes=30)),
        camera_health("pole-b", condition="low_fps", since=t0 + timedelta(minutes=40)),
    ]
    async with api(database, messages) as client:
        everything = (await client.get("/api/camera-health")).json()
        assert len(everything["items"]) == 6 and everything["next"] is None
        ids = [row["id"] for row in everything["items"]]
        assert ids == sorted(ids, reverse=True)
        oldest = everything["items"][-1]
        assert oldest["message_id"] == covered_start.id
        assert (oldest["camera_id"], oldest["condition"], oldest["phase"], oldest["variant"]) == (
            "cam1",
            "covered",
            "start",
            "black",
        )
        assert oldest["since"].startswith("2026-11-23T02:14:00") and oldest["until"] is None
        assert (oldest["value"], oldest["threshold"], oldest["detail"]) == (5.5, 20.0, "covered start")

        still_open = (await client.get("/api/camera-health", params={"open": "true"})).json()["items"]
        assert sorted((r["device_id"], r["camera_id"], r["condition"]) for r in still_open) == [
            ("pole-a", "cam2", "shifted"),
            ("pole-b", "cam1", "frozen"),
            ("pole-b", "cam1", "low_fps"),
        ]
        frozen = next(r for r in still_open if r["condition"] == "frozen")
        assert frozen["since"].startswith("2026-11-23T02:44:00")

        pole_b_frozen = (
            await client.get("/api/camera-health", params={"device_id": "pole-b", "condition": "frozen"})
        ).json()["items"]
        assert len(pole_b_frozen) == 2
        page = (await client.get("/api/camera-health", params={"limit": 4})).json()
        assert len(page["items"]) == 4 and page["next"] == str(page["items"][-1]["id"])
        rest = (await client.get("/api/camera-health", params={"cursor": page["next"]})).json()
        assert [r["id"] for r in page["items"] + rest["items"]] == ids
        bad = await client.get("/api/camera-health", params={"condition": "on_fire"})
        assert bad.status_code == 422

        devices = {d["device_id"] for d in (await client.get("/api/devices")).json()["items"]}
        assert devices == {"pole-a", "pole-b"}, "camera-health messages register their device"


async def test_devices_paginate_by_id_and_filter_by_presence(database: str) -> None:
    messages: list[AnyMessage] = [presence(f"pole-{c}", "online" if c in "ace" else "offline") for c in "abcde"]
    async with api(database, messages) as client:
        seen: list[str] = []
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/api/devices", params=params)).json()
            assert len(page["items"]) <= 2
            seen += [d["device_id"] for d in page["items"]]
            cursor = page["next"]
            if cursor is None:
                break
        assert seen == ["pole-a", "pole-b", "pole-c", "pole-d", "pole-e"]
        online = (await client.get("/api/devices", params={"online": "true"})).json()["items"]
        assert [d["device_id"] for d in online] == ["pole-a", "pole-c", "pole-e"]


async def test_a_failure_inside_the_server_is_a_json_500_and_the_server_carries_on(database: str) -> None:
    app = create_app(settings_for(None, database), run_ingest=False)
    async with app.router.lifespan_context(app):
        engine = app.state.services.engine
        with engine.begin() as conn:  # the table behind /api/camera-health vanishes under the server
            conn.exec_driver_sql("ALTER TABLE camera_health_events RENAME TO gone")
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        headers = bearer(add_token(database, "admin"))
        async with httpx.AsyncClient(transport=transport, base_url="http://fleet", headers=headers) as client:
            broken = await client.get("/api/camera-health")
            assert broken.status_code == 500 and broken.headers["content-type"] == "application/json"
            assert broken.json()["detail"].startswith("internal server error")
            assert "gone" not in broken.text and "camera_health_events" not in broken.text  # no internals
            assert (await client.get("/api/devices")).status_code == 200


async def test_a_value_the_database_refuses_is_the_clients_422_not_a_500(database: str) -> None:
    """The safety net behind the parameter patterns: a DataError (e.g. a number out of a column's
    range) raised while serving a request is answered as bad input."""
    from sqlalchemy.exc import DataError

    app = create_app(settings_for(None, database), run_ingest=False)

    def refuses() -> None:
        raise DataError("SELECT 1", {}, ValueError("integer out of range"))

    app.add_api_route("/api/refuses", refuses)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://fleet") as client:
            answer = await client.get("/api/refuses")
    assert answer.status_code == 422
    assert answer.json() == {"detail": "a value in the request cannot be stored or searched for (e.g. a NUL character)"}
