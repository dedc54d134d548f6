"""The console's pages in a real headless Chromium against a real server, Mosquitto and SQLite.

Each browser test is one whole flow: the operator's alerts (live, acknowledged, assigned, through a
server restart), the ops configuration change (preview, apply, rollback) with the fleet page, and a
viewer who sees no action. The last test reads every API call the pages' scripts make and checks
it against the server's OpenAPI schema, so a page never calls a route that does not exist.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from polewatch.fleet_server import create_app
from polewatch.fleet_server.app import STATIC_DIR
from polewatch.fleet_server.models import Alert
from support.brokers import BrokerProcess
from support.ports import free_port
from support.required import require_binary
from support.server import (
    PASSWORD,
    add_token,
    add_user,
    bearer,
    count,
    detection,
    health,
    live_server,
    pole,
    presence,
    running_ingest,
    settings_for,
    wait_for,
)

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip


def browser(test: Any) -> Any:
    """The marks of a test that drives Chromium against a live server and Mosquitto."""
    return pytest.mark.browser(pytest.mark.mqtt(pytest.mark.e2e(test)))


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A headless Chromium (playwright's Browser) that fails the test on any page error."""
    executable = require_binary("chromium", "apt-get install chromium", candidates=("/usr/bin/chromium",))
    playwright_api = pytest.importorskip("playwright.async_api", reason="needs the dev extra (playwright)")
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def signed_in(browser: Any, base: str, username: str, errors: list[str]) -> Any:
    """A page of a new browser context signed in as `username` (through the real sign-in API)."""
    context = await browser.new_context(base_url=base)
    answer = await context.request.post("api/auth/login", data={"username": username, "password": PASSWORD})
    assert answer.ok, await answer.text()
    page = await context.new_page()
    page.on("pageerror", lambda exc: errors.append(f"{username}: {exc}"))
    return page


def expect() -> Any:
    return pytest.importorskip("playwright.async_api").expect


@browser
async def test_operator_sees_alerts_live_handles_them_and_misses_none_across_a_server_restart(
    mosquitto_broker: BrokerProcess, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    add_user(db, "olga", "operator", display_name="Olga")
    admin = bearer(add_token(db, "admin"))
    # A fixed port, so that the restarted server is where the browser reconnects to.
    settings = settings_for(mosquitto_broker, db, http_port=free_port())
    errors: list[str] = []
    see = expect()

    async with chromium() as browser, pole(mosquitto_broker, "pole-a") as pa:
        async with live_server(settings) as base:
            async with httpx.AsyncClient(base_url=base, headers=admin) as http:
                agency = await http.post("api/agencies", json={"name": "Satpol PP", "secret": "s" * 20})
                assert agency.status_code == 201, agency.text
            page = await signed_in(browser, base, "olga", errors)
            await page.goto(f"{base}#alerts")
            await see(page.locator("#whoami")).to_have_text("olga (operator)")
            await see(page.locator("#alert-link")).to_have_text("live")
            await see(page.locator("#no-alerts")).to_be_visible()

            # An event from the edge becomes an alert on screen, pushed, without a reload.
            person = detection("pole-a", label="person", event_id="walker")
            await pa.send(person)
            rows = page.locator("#alert-rows tr")
            await see(rows).to_have_count(1)
            first = rows.first
            await see(first.locator(".event .label")).to_have_text("detection:person")
            await see(first.locator(".badge")).to_have_text("new")
            await see(page.locator("#alerts-new")).to_have_text("1 new")

            # Acknowledge, then assign: each step is on the timeline with who did it.
            await first.click()
            await see(page.locator("#alert-title")).to_contain_text("detection:person")
            await see(page.locator("#alert-actions button[data-step=resolve]")).to_be_hidden()
            await page.fill("#alert-note", "camera 1 checked")
            await page.click("#alert-actions button[data-step=acknowledge]")
            timeline = page.locator("#alert-timeline li")
            await see(timeline).to_have_count(2)
            await see(timeline.nth(0).locator(".what")).to_have_text("raised")
            await see(timeline.nth(0).locator(".who")).to_have_text("edge:pole-a")
            await see(timeline.nth(1).locator(".what")).to_have_text("acknowledged")
            await see(timeline.nth(1).locator(".who")).to_have_text("olga")
            await see(timeline.nth(1).locator(".note")).to_have_text("“camera 1 checked”")
            await see(first.locator(".badge")).to_have_text("acknowledged")
            await see(page.locator("#alerts-new")).to_be_hidden()
            await see(page.locator("#alert-actions button[data-step=acknowledge]")).to_be_hidden()

            # No routing rule matched: assigning without naming an agency is refused, in the server's words.
            await page.click("#alert-actions button[data-step=assign]")
            await see(page.locator("#alert-action-error")).to_have_text(
                re.compile(r"matched no routing rule: name the agency")
            )
            await page.select_option("#assign-agency", label="Satpol PP")
            await page.click("#alert-actions button[data-step=assign]")
            await see(timeline).to_have_count(3)
            await see(timeline.nth(2).locator(".agency")).to_have_text("→ Satpol PP")
            await see(page.locator("#alert-action-error")).to_have_text("")
            await see(first.locator(".agency")).to_have_text("Satpol PP")
            await see(page.locator("#alert-evidence")).to_have_attribute("href", re.compile(r"/api/alerts/\d+/evidence$"))
            # The agency filter: this alert is assigned, so "not assigned" hides it.
            await page.select_option("#alert-agency", "none")
            await see(rows).to_have_count(0)
            await page.select_option("#alert-agency", "")
            await see(rows).to_have_count(1)

        # The server is gone (its streams ended): the page says so instead of going quiet.
        await see(page.locator("#alert-link")).to_have_text("reconnecting…")
        await see(page.locator("#alert-notice")).to_contain_text("Connection to the server lost")

        # While the console is cut off, the edge raises another alert (stored by an ingest alone).
        async with running_ingest(settings) as ingest:
            await pa.send(detection("pole-a", label="car", event_id="parked"))
            await wait_for(lambda: count(ingest.sessions, Alert) == 2, what="the second alert to be stored")

        async with live_server(settings):
            # Back: the browser resumed from its last event id and shows the missed alert, marked.
            await see(page.locator("#alert-link")).to_have_text("live", timeout=20_000)
            await see(page.locator("#alert-notice")).to_contain_text("caught up 1 missed alert.")
            await see(rows).to_have_count(2)
            missed = rows.first
            await see(missed.locator(".event .label")).to_have_text("detection:car")
            await see(missed.locator(".missed-tag")).to_have_text("missed while disconnected")
            await see(rows.nth(1).locator(".missed-tag")).to_have_count(0)
            # And it goes on live after the catch-up.
            await pa.send(detection("pole-a", label="truck", event_id="lorry"))
            await see(rows).to_have_count(3)
            await see(rows.first.locator(".event .label")).to_have_text("detection:truck")
            await see(rows.first.locator(".missed-tag")).to_have_count(0)

    assert errors == []


async def test_every_api_call_of_the_pages_is_a_route_of_the_server(tmp_path: Path) -> None:
    spec = create_app(settings_for(None, tmp_path / "fleet.db"), run_ingest=False, migrate=False).openapi()
    routes = {(method.upper(), _shape(path)) for path, ops in spec["paths"].items() for method in ops}
    scripts = {p.name: p.read_text() for p in sorted(STATIC_DIR.glob("*.js"))}
    calls = [(name, method, path) for name, text in scripts.items() for method, path in _calls(text)]
    assert {name for name, _, _ in calls} >= {"alerts.js", "fleet.js", "config.js", "common.js", "app.js"}
    unknown = [(name, method, path) for name, method, path in calls if (method, _shape(path)) not in routes]
    assert unknown == [], "the console calls routes the server does not have"
    # Each page's API calls, at least: a page whose calls the parser stops seeing fails here.
    assert len(calls) >= 20, calls


# A URL in a script: "/api/..." or `/api/...${x}...` up to the query string or the closing quote.
_URL = r"[\"`](/api/[^\"`?]*)"


def _calls(script: str) -> list[tuple[str, str]]:
    """(method, path) of every API URL in a script: api("POST", `...`) or, anywhere else, a GET."""
    found: list[tuple[str, str]] = []
    with_method = re.compile(r"api\(\"(GET|POST|PUT|PATCH|DELETE)\",\s*(?:url\()?" + _URL)
    spans = []
    for m in with_method.finditer(script):
        found.append((m.group(1), m.group(2)))
        spans.append(m.start(2))
    for m in re.finditer(_URL, script):
        if m.start(1) not in spans:
            found.append(("GET", m.group(1)))
    return found


def _shape(path: str) -> str:
    """A path with every parameter ({alert_id} in the schema, ${id} in a script) as {}."""
    return re.sub(r"\$?\{[^}]*\}", "{}", path)
