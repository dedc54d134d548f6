"""People and rights over the real API and database: sign-in, sessions, tokens, users, the audit
log, and the command that makes the first admin."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from polewatch.fleet_server import create_app
from polewatch.fleet_server.cli import app as cli
from polewatch.fleet_server.db import make_engine
from polewatch.fleet_server.models import AuditEntry, User
from support.server import PASSWORD, add_token, add_user, bearer, settings_for


@contextlib.asynccontextmanager
async def server(database: str, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app on `database`, no MQTT; a client without credentials."""
    app = create_app(settings_for(None, database, **settings), run_ingest=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fleet") as client:
            yield client


async def login(client: httpx.AsyncClient, username: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post("/api/auth/login", json={"username": username, "password": password})


def audit_rows(database: str) -> list[AuditEntry]:
    engine = make_engine(database)
    try:
        with sa.orm.Session(engine) as s:
            return list(s.scalars(sa.select(AuditEntry).order_by(AuditEntry.id)))
    finally:
        engine.dispose()


async def test_sign_in_sets_a_strict_http_only_cookie_and_sign_out_ends_it(database: str) -> None:
    add_user(database, "olga", "operator", display_name="Olga")
    async with server(database) as client:
        assert (await client.get("/api/auth/me")).status_code == 401
        signed_in = await login(client, "olga")
        assert signed_in.status_code == 200
        assert signed_in.json() == {
            "kind": "user", "name": "olga", "role": "operator", "sites": [],
            # what the console shows actions for (roles.py)
            "permissions": ["alerts:handle", "alerts:read", "fleet:read", "routing:manage", "self"],
        }  # fmt: skip
        cookie = signed_in.headers["set-cookie"]
        assert cookie.startswith("polewatch_session=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
        secret = client.cookies["polewatch_session"]

        assert (await client.get("/api/auth/me")).json()["name"] == "olga"
        assert (await client.get("/api/devices")).status_code == 200
        console = await client.get("/")
        assert console.status_code == 200 and "/static/app.js" in console.text

        out = await client.post("/api/auth/logout")
        assert out.status_code == 200 and out.json() == {"detail": "signed out"}
        # The old cookie is dead in the database, not only forgotten by this browser.
        client.cookies.set("polewatch_session", secret)
        after = await client.get("/api/auth/me")
        assert after.status_code == 401 and after.json()["detail"].startswith("your session has ended")
        assert (await client.get("/")).headers["location"] == "/login"

    actions = [(e.actor, e.action) for e in audit_rows(database)]
    assert actions[-2:] == [("user:olga", "session.login"), ("user:olga", "session.logout")]


async def test_a_session_ends_when_its_time_is_up_and_ended_sessions_are_cleared(database: str) -> None:
    add_user(database, "sam", "viewer")
    async with server(database, session_hours=1 / 3600) as client:  # one second
        assert (await login(client, "sam")).status_code == 200
        assert (await client.get("/api/auth/me")).status_code == 200
        secret = client.cookies["polewatch_session"]
        await asyncio.sleep(1.2)
        # The browser drops the cookie at its max-age; one that keeps it anyway is refused.
        client.cookies.set("polewatch_session", secret)
        late = await client.get("/api/auth/me")
        assert late.status_code == 401 and late.json()["detail"].startswith("your session has ended")
        assert (await login(client, "sam")).status_code == 200  # a new sign-in clears the dead one
    engine = make_engine(database)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM login_sessions").scalar() == 1
    finally:
        engine.dispose()


async def test_wrong_passwords_unknown_users_and_disabled_accounts_get_the_same_answer(database: str) -> None:
    add_user(database, "admin1", "admin")
    uid = add_user(database, "vera", "viewer")
    async with server(database) as client:
        wrong = await login(client, "vera", "not-her-password")
        nobody = await login(client, "nobody", "whatever-password")
        assert wrong.status_code == nobody.status_code == 401
        assert wrong.json() == nobody.json()
        assert "set-cookie" not in wrong.headers

        admin = bearer(add_token(database, "admin"))
        disabled = await client.patch(f"/api/users/{uid}", json={"disabled": True}, headers=admin)
        assert disabled.status_code == 200 and disabled.json()["disabled"] is True
        assert (await login(client, "vera")).json() == wrong.json()


async def test_sign_in_is_rate_limited_per_username_and_per_address(database: str) -> None:
    add_user(database, "tina", "technician")
    async with server(database, login_failures_per_user=3, login_per_minute_per_client=8) as client:
        for _ in range(3):
            assert (await login(client, "tina", "guess-guess-guess")).status_code == 401
        held = await login(client, "tina")  # even the right password, while held
        assert held.status_code == 429
        assert held.json()["detail"].startswith("too many sign-in attempts: try again in")
        assert 1 <= int(held.headers["retry-after"]) <= 15 * 60
        assert "set-cookie" not in held.headers

        # Other usernames from the same address: up to the address's budget (8 a minute, 3 used).
        codes = [(await login(client, f"someone{i}", "guess-guess-guess")).status_code for i in range(6)]
        assert codes == [401] * 5 + [429]


async def test_tokens_work_until_revoked_or_expired_and_bad_headers_are_explained(database: str) -> None:
    admin_token = add_token(database, "admin", "root-token")
    async with server(database) as client:
        admin = bearer(admin_token)
        made = await client.post("/api/tokens", json={"name": "grafana", "role": "viewer"}, headers=admin)
        assert made.status_code == 201
        body = made.json()
        assert body["token"].startswith("pwt_") and body["role"] == "viewer"
        assert body["created_by"] == "token:root-token"
        grafana = bearer(body["token"])
        assert (await client.get("/api/devices", headers=grafana)).status_code == 200
        assert (await client.get("/api/users", headers=grafana)).status_code == 403
        listed = (await client.get("/api/tokens", headers=admin)).json()["items"]
        assert {t["name"] for t in listed} == {"root-token", "grafana"}
        assert all("token" not in t and "token_hash" not in t for t in listed), "secrets never listed"

        revoked = await client.delete(f"/api/tokens/{body['id']}", headers=admin)
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        gone = await client.get("/api/devices", headers=grafana)
        assert gone.status_code == 401 and gone.json() == {"detail": "this API token is unknown or revoked"}
        assert gone.headers["www-authenticate"] == "Bearer"
        assert (await client.delete(f"/api/tokens/{body['id']}", headers=admin)).status_code == 200  # idempotent
        assert (await client.delete("/api/tokens/999999", headers=admin)).status_code == 404

        soon = datetime.now(timezone.utc) + timedelta(seconds=1)
        short = await client.post(
            "/api/tokens", json={"name": "short", "role": "ops", "expires_at": soon.isoformat()}, headers=admin
        )
        short_headers = bearer(short.json()["token"])
        naive = await client.post(
            "/api/tokens", json={"name": "naive", "role": "ops", "expires_at": "2030-01-01T00:00:00"}, headers=admin
        )
        assert naive.status_code == 422 and "timezone" in naive.json()["detail"]
        await asyncio.sleep((soon - datetime.now(timezone.utc)).total_seconds() + 0.1)
        expired = await client.get("/api/devices", headers=short_headers)
        assert expired.status_code == 401 and "expired" in expired.json()["detail"]

        basic = await client.get("/api/devices", headers={"Authorization": "Basic YWRtaW46YWRtaW4="})
        assert basic.status_code == 401 and "Bearer pwt_" in basic.json()["detail"]

    revokes = [e for e in audit_rows(database) if e.action == "token.revoke"]
    assert len(revokes) == 1, "revoking twice logs once"
    assert revokes[0].before is not None and revokes[0].before["revoked_at"] is None
    assert revokes[0].after is not None and revokes[0].after["revoked_at"]


async def test_admins_manage_people_with_clear_errors_and_every_change_audited(database: str) -> None:
    add_user(database, "ada", "admin")
    async with server(database) as client:
        assert (await login(client, "ada")).status_code == 200
        made = await client.post(
            "/api/users",
            json={"username": "tom", "password": "tom-password-1", "role": "technician", "sites": ["s-2", "s-1"]},
        )
        assert made.status_code == 201
        tom = made.json()
        assert tom["role"] == "technician" and tom["sites"] == ["s-1", "s-2"] and "password" not in str(tom)

        taken = await client.post("/api/users", json={"username": "tom", "password": "x" * 12, "role": "viewer"})
        assert taken.status_code == 409 and taken.json() == {"detail": "a user named 'tom' exists already"}
        bad_role = await client.post("/api/users", json={"username": "x", "password": "x" * 12, "role": "mayor"})
        assert bad_role.status_code == 422 and bad_role.json()["errors"][0]["loc"] == ["body", "role"]
        short = await client.post("/api/users", json={"username": "y", "password": "short", "role": "viewer"})
        assert short.status_code == 422 and "password" in short.json()["detail"]
        extra = await client.post(
            "/api/users", json={"username": "z", "password": "x" * 12, "role": "viewer", "is_root": 1}
        )
        assert extra.status_code == 422
        assert (await client.get("/api/users/424242")).json() == {"detail": "no user with id 424242"}

        promoted = await client.patch(f"/api/users/{tom['id']}", json={"role": "ops", "display_name": "Tom"})
        assert promoted.status_code == 200 and promoted.json()["role"] == "ops"
        me = (await client.get("/api/auth/me")).json()
        ada_id = next(u["id"] for u in (await client.get("/api/users")).json()["items"] if u["username"] == "ada")
        last = await client.patch(f"/api/users/{ada_id}", json={"role": "viewer"})
        assert last.status_code == 409 and "last active admin" in last.json()["detail"]
        assert me["role"] == "admin"

        # Only tom, tom's change and ada's sign-in were changes: the refused requests left no trace.
        users = (await client.get("/api/users")).json()["items"]
        assert [u["username"] for u in users] == ["ada", "tom"]
        log = (await client.get("/api/audit", params={"target_type": "user", "target_id": str(tom["id"])})).json()
        assert [e["action"] for e in log["items"]] == ["user.update", "user.create"]
        update = log["items"][0]
        assert update["actor"] == "user:ada" and update["actor_role"] == "admin"
        assert update["before"]["role"] == "technician" and update["after"]["role"] == "ops"
        assert update["after"]["display_name"] == "Tom" and update["client"]
        assert all("password_hash" not in str(e) and "tom-password-1" not in str(e) for e in log["items"])

    with sa.create_engine(database).connect() as conn:
        stored = conn.execute(sa.select(User.password_hash).where(User.username == "tom")).scalar_one()
        assert stored.startswith("$argon2id$")


async def test_the_audit_log_is_queryable_paginated_and_append_only(database: str) -> None:
    admin = bearer(add_token(database, "admin", "auditor"))
    async with server(database) as client:
        for i in range(5):
            r = await client.post(
                "/api/users", json={"username": f"u{i}", "password": "p" * 12, "role": "viewer"}, headers=admin
            )
            assert r.status_code == 201
        everything = (await client.get("/api/audit", headers=admin)).json()["items"]
        assert [e["action"] for e in everything[:5]] == ["user.create"] * 5
        assert everything[-1]["actor"] == "test:setup"  # the token itself was made by the test setup

        mine = (await client.get("/api/audit", params={"actor": "token:auditor", "limit": 2}, headers=admin)).json()
        page2 = (await client.get(
            "/api/audit", params={"actor": "token:auditor", "limit": 2, "cursor": mine["next"]}, headers=admin
        )).json()  # fmt: skip
        page3 = (await client.get(
            "/api/audit", params={"actor": "token:auditor", "limit": 2, "cursor": page2["next"]}, headers=admin
        )).json()  # fmt: skip
        names = [e["after"]["username"] for p in (mine, page2, page3) for e in p["items"]]
        assert names == ["u4", "u3", "u2", "u1", "u0"] and page3["next"] is None

        later = datetime.now(timezone.utc) + timedelta(minutes=1)
        none_yet = await client.get("/api/audit", params={"since": later.isoformat()}, headers=admin)
        assert none_yet.status_code == 200 and none_yet.json()["items"] == []
        naive = await client.get("/api/audit", params={"since": "2026-01-01T00:00:00"}, headers=admin)
        assert naive.status_code == 422 and "timezone" in naive.json()["detail"]
        unix = await client.get("/api/audit", params={"until": "1700000000"}, headers=admin)
        assert unix.status_code == 422 and "ISO 8601" in unix.json()["detail"]

    # The database itself refuses to rewrite history, whoever asks.
    engine = make_engine(database)
    try:
        for statement in ("UPDATE audit_log SET actor = 'nobody'", "DELETE FROM audit_log"):
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
                conn.exec_driver_sql(statement)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM audit_log WHERE actor = 'token:auditor'").scalar() == 5
    finally:
        engine.dispose()


def test_the_first_admin_comes_from_the_command_line(database: str) -> None:
    runner = CliRunner()
    added = runner.invoke(
        cli, ["user", "add", "root", "--role", "admin", "--database-url", database, "--password-stdin"],
        input="first-admin-password\n",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    assert "added admin 'root' (id " in added.output

    twice = runner.invoke(
        cli, ["user", "add", "root", "--database-url", database, "--password-stdin"], input="another-password\n"
    )
    assert twice.exit_code == 1 and "a user named 'root' exists already" in twice.output
    bad_role = runner.invoke(cli, ["user", "add", "x", "--role", "king", "--database-url", database])
    assert bad_role.exit_code == 2 and "unknown role 'king'" in bad_role.output
    short = runner.invoke(cli, ["user", "add", "y", "--database-url", database, "--password-stdin"], input="short\n")
    assert short.exit_code == 1 and "10 to 256 characters" in short.output

    # Without --password-stdin it asks twice, hidden, and asks again when the two differ.
    prompted = runner.invoke(
        cli, ["user", "add", "vic", "--database-url", database],
        input="viewer-password-1\nviewer-password-2\nviewer-password-1\nviewer-password-1\n",
    )  # fmt: skip
    assert prompted.exit_code == 0, prompted.output
    assert "do not match" in prompted.output and "added viewer 'vic'" in prompted.output
    assert "viewer-password-1" not in prompted.output

    token = runner.invoke(cli, ["token", "add", "backup-job", "--role", "ops", "--database-url", database])
    assert token.exit_code == 0 and token.output.startswith("pwt_")

    rows = audit_rows(database)
    assert [(r.action, r.actor.startswith("cli:")) for r in rows] == [
        ("user.create", True), ("user.create", True), ("token.create", True),
    ]  # fmt: skip
    assert rows[0].after is not None and rows[0].after["username"] == "root"


async def test_the_cli_admin_and_token_work_over_http(database: str) -> None:
    runner = CliRunner()
    runner.invoke(
        cli, ["user", "add", "root", "--role", "admin", "--database-url", database, "--password-stdin"],
        input="first-admin-password\n",
    )  # fmt: skip
    secret = runner.invoke(cli, ["token", "add", "job", "--role", "ops", "--database-url", database]).output.strip()
    async with server(database) as client:
        assert (await login(client, "root", "first-admin-password")).status_code == 200
        assert (await client.get("/api/users")).status_code == 200
        ops = bearer(secret)
        assert (await client.get("/api/ingest/stats", headers=ops)).status_code == 200
        assert (await client.get("/api/users", headers=ops)).status_code == 403


async def test_malformed_people_requests_are_clear_errors_and_change_nothing(database: str) -> None:
    admin = bearer(add_token(database, "admin"))
    async with server(database) as client:
        before = len(audit_rows(database))
        not_json = await client.post(
            "/api/users", content=b"\x04\xff{", headers={**admin, "Content-Type": "application/json"}
        )
        assert not_json.status_code == 400 and not_json.json() == {"detail": "the request body is not valid JSON"}
        huge = await client.get(f"/api/users/{2**64}", headers=admin)
        assert huge.status_code == 422 and huge.json()["errors"][0]["loc"] == ["path", "user_id"]
        assert (await client.delete("/api/tokens/0", headers=admin)).status_code == 422
        nul = await client.post(
            "/api/users", json={"username": "ok", "password": "p" * 12, "role": "viewer", "display_name": "a\x00b"},
            headers=admin,
        )  # fmt: skip
        # PostgreSQL cannot store a NUL character: refused on both engines, with the field named.
        assert nul.status_code == 422 and nul.json()["errors"][0]["loc"] == ["body", "display_name"]
        nul_query = await client.get("/api/audit", params={"actor": "x\x00y"}, headers=admin)
        assert nul_query.status_code == 422
        not_bool = await client.patch("/api/users/1", json={"disabled": 0}, headers=admin)
        assert not_bool.status_code == 422
        bad_site = await client.post(
            "/api/users", json={"username": "s", "password": "p" * 12, "role": "technician", "sites": ["a b"]},
            headers=admin,
        )  # fmt: skip
        assert bad_site.status_code == 422 and bad_site.json()["errors"][0]["loc"][:2] == ["body", "sites"]
        wrong = await client.put("/api/users", headers=admin)
        assert wrong.status_code == 405 and wrong.headers["allow"] == "GET, POST"
        assert wrong.json() == {"detail": "PUT is not allowed on /api/users: use GET, POST"}
        users = (await client.get("/api/users", headers=admin)).json()["items"]
        assert users == []
    assert len(audit_rows(database)) == before
