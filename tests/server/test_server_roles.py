"""The full matrix of routes × roles, generated from the app's own route table: every route has an
access rule, and each role gets exactly what roles.GRANTS says (a new route without a rule, or with
the wrong one, fails here). Runs over real HTTP, so the live stream is checked as a browser opens it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from polewatch.fleet_server import app as app_module
from polewatch.fleet_server import create_app
from polewatch.fleet_server.auth import rule_of, unruled_routes
from polewatch.fleet_server.roles import GRANTS, ROLES
from support.server import add_token, add_user, bearer, live_server, settings_for

ANONYMOUS = "anonymous"


def _routes(app: FastAPI) -> list[APIRoute]:
    routes: list[APIRoute] = app.state.api_routes
    return routes


def test_every_route_has_exactly_one_rule_and_the_table_is_complete(tmp_path: Path) -> None:
    app = create_app(settings_for(None, tmp_path / "fleet.db"), run_ingest=False)
    routes = _routes(app)
    assert unruled_routes(list(routes)) == []
    # The table the matrix walks holds every documented operation: no router was left out of it.
    documented = {(path, method.upper()) for path, ops in app.openapi()["paths"].items() for method in ops}
    walked = {(r.path, m) for r in routes for m in r.methods or ()}
    assert documented <= walked
    assert {("/", "GET"), ("/login", "GET")} <= walked


def test_a_route_without_a_rule_stops_the_server_from_starting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = APIRouter()

    @extra.get("/api/forgotten")
    def forgotten() -> dict[str, str]:
        return {"oops": "no rule"}

    monkeypatch.setattr(app_module, "ROUTERS", (*app_module.ROUTERS, extra))
    with pytest.raises(RuntimeError, match=r"routes without an access rule.*\/api\/forgotten"):
        create_app(settings_for(None, tmp_path / "fleet.db"), run_ingest=False)


def _request_for(route: APIRoute, samples: dict[str, str]) -> tuple[str, str, dict[str, Any]]:
    method = sorted(route.methods or ())[0]
    path = route.path
    for name, value in samples.items():
        path = path.replace("{" + name + "}", value)
    assert "{" not in path, f"no sample value for a parameter of {route.path}"
    kwargs: dict[str, Any] = {"json": {}} if method in ("POST", "PATCH", "PUT") else {}
    return method, path, kwargs


async def _status(http: httpx.AsyncClient, method: str, path: str, headers: dict[str, str], **kw: Any) -> int:
    # Stream the response: the live feed never ends, and the status line is all we need.
    async with http.stream(method, path.lstrip("/"), headers=headers, **kw) as response:
        return response.status_code


async def test_routes_by_roles(database: str) -> None:
    tokens = {role: add_token(database, role, f"matrix-{role}") for role in ROLES}
    user_id = add_user(database, "matrix-user", "viewer")
    app = create_app(settings_for(None, database), run_ingest=False)
    routes = _routes(app)
    samples = {
        "device_id": "pole-a", "user_id": str(user_id), "token_id": "999", "site_id": "site-a", "pole_id": "pole-a",
        "group_id": "group-a", "code_id": "999", "alert_id": "999", "delivery_id": "999",
        "serial": "999",
    }  # fmt: skip

    results: dict[tuple[str, str], dict[str, int]] = {}
    async with live_server(settings_for(None, database)) as base, httpx.AsyncClient(base_url=base, timeout=20) as http:
        for route in routes:
            rule = rule_of(route)
            assert rule is not None
            method, path, kwargs = _request_for(route, samples)
            row: dict[str, int] = {}
            for who in (ANONYMOUS, *ROLES):
                headers = {} if who == ANONYMOUS else bearer(tokens[who])  # type: ignore[index]
                status = await _status(http, method, path, headers, **kwargs)
                row[who] = status
                where = f"{method} {route.path} as {who}: {status}"
                assert status < 500, where
                if rule.permission is None:
                    assert status not in (401, 403), where
                elif who == ANONYMOUS:
                    assert status == 401, where
                elif rule.permission in GRANTS[who]:  # type: ignore[index]
                    assert status not in (401, 403), where
                else:
                    assert status == 403, where
            results[(method, route.path)] = row

    # The matrix says what the roles' descriptions say.
    assert all(results[("GET", "/api/devices")][r] == 200 for r in ROLES)
    assert [r for r in ROLES if results[("GET", "/api/users")][r] == 200] == ["admin"]
    assert [r for r in ROLES if results[("GET", "/api/ingest/stats")][r] == 200] == ["admin", "ops"]
    assert [r for r in ROLES if results[("GET", "/api/audit")][r] == 200] == ["admin"]
    assert results[("GET", "/healthz")][ANONYMOUS] == 200
    assert [r for r in ROLES if results[("POST", "/api/sites")][r] != 403] == ["admin", "ops"]
    assert [r for r in ROLES if results[("POST", "/api/enrolment/codes")][r] != 403] == ["admin", "ops", "technician"]
    # Technicians place poles and boxes (on their sites, scope.py), never sites, groups or people.
    assert [r for r in ROLES if results[("POST", "/api/poles")][r] != 403] == ["admin", "ops", "technician"]
    assert [r for r in ROLES if results[("POST", "/api/groups")][r] != 403] == ["admin", "ops"]
    assert [r for r in ROLES if results[("PUT", "/api/users/{user_id}/sites")][r] != 403] == ["admin"]
    # A technician without sites: things elsewhere do not exist for them.
    assert results[("GET", "/api/poles/{pole_id}")]["technician"] == 404
    assert all(results[("GET", "/api/devices/{device_id}/health/history")][r] == 404 for r in ROLES)
    assert [r for r in ROLES if results[("POST", "/api/fleet/move")][r] != 403] == ["admin", "ops"]
    # Rotating a box's broker credential is for the people who run the fleet; seeing where it stands is not.
    rotate = results[("POST", "/api/devices/{device_id}/credentials/rotate")]
    assert [r for r in ROLES if rotate[r] != 403] == ["admin", "ops"] and rotate[ANONYMOUS] == 401
    assert all(results[("GET", "/api/devices/{device_id}/credentials")][r] != 403 for r in ROLES)
    assert results[("POST", "/api/enrolment")][ANONYMOUS] == 422  # public: the code is the credential
    print(f"role matrix: {len(results)} routes x {len(ROLES) + 1} principals checked")
