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
            evidence = page.locator("#alert-evidence")
            await see(evidence).to_have_attribute("href", re.compile(r"/api/alerts/\d+/evidence$"))
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


@browser
async def test_ops_previews_applies_and_rolls_back_configuration_and_a_viewer_sees_no_action(
    mosquitto_broker: BrokerProcess, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    add_user(db, "otto", "ops")
    add_user(db, "vera", "viewer")
    add_user(db, "olga", "operator")
    admin = bearer(add_token(db, "admin"))
    # An agency nobody answers for (a closed port) and one attempt: its delivery is dead at once.
    settings = settings_for(mosquitto_broker, db, webhook_attempts=1, webhook_timeout_s=2)
    errors: list[str] = []
    see = expect()

    async with (
        chromium() as browser,
        pole(mosquitto_broker, "pole-a") as pa,
        live_server(settings) as base,
        httpx.AsyncClient(base_url=base, headers=admin) as http,
    ):
        for path, body in [
            ("api/sites", {"site_id": "bontang-utara", "name": "Bontang Utara", "district": "Bontang Utara"}),
            ("api/poles", {"pole_id": "p-17", "site_id": "bontang-utara", "name": "Jl. Ahmad Yani 17"}),
            ("api/registry/devices", {"device_id": "pole-a", "pole_id": "p-17", "cameras": ["cam1", "cam2"]}),
            ("api/agencies", {"name": "Dishub", "secret": "s" * 20,
                              "webhook_url": f"http://127.0.0.1:{free_port()}/hook"}),
        ]:  # fmt: skip
            made = await http.post(path, json=body)
            assert made.status_code == 201, made.text
        await pa.send(presence("pole-a"))
        await pa.send(health("pole-a"))
        await wait_for(lambda: _health(http, "pole-a"), what="pole-a's health to be stored")

        ops = await signed_in(browser, base, "otto", errors)
        await ops.goto(f"{base}#config")
        await see(ops.locator("#whoami")).to_have_text("otto (ops)")
        editor = ops.locator("#config-document")
        await see(editor).to_have_value("{}")
        await see(ops.locator("#config-apply")).to_be_disabled()

        # Not JSON, and a document the agent would refuse: both said, nothing can be applied.
        await editor.fill("{detect: 2}")
        await ops.click("#config-preview")
        await see(ops.locator("#config-error")).to_contain_text("the document is not JSON")
        await editor.fill('{"detect": {"fps": -1}}')
        await ops.click("#config-preview")
        await see(ops.locator("#config-error")).to_contain_text("detect.fps")
        await see(ops.locator("#config-apply")).to_be_disabled()

        # Preview: which device changes and how; then apply (version 1), and a second change (2).
        preview = ops.locator("#preview-rows tr")
        for version, fps, path, before, after in [
            (1, 2, "detect", "not set", '{"fps":2}'),
            (2, 3, "detect.fps", "2", "3"),
        ]:
            await editor.fill(f'{{"detect": {{"fps": {fps}}}}}')
            await ops.click("#config-preview")
            await see(ops.locator("#preview-summary")).to_have_text("1 device would change, 0 unchanged")
            await see(preview).to_have_count(1)
            await see(preview.first.locator(".device-id")).to_have_text("pole-a")
            await see(preview.first.locator(".path")).to_have_text(path)
            await see(preview.first.locator(".before")).to_have_text(before)
            await see(preview.first.locator(".after")).to_have_text(after)
            await ops.fill("#config-comment", f"fps {fps}")
            await ops.click("#config-apply")
            await see(ops.locator("#config-result")).to_have_text(
                f"Version {version} of the fleet layer stored. "
                f"New desired configuration: pole-a → version {version} (pending)."
            )
            await see(ops.locator("#version-rows tr")).to_have_count(version)
            await see(ops.locator("#config-apply")).to_be_disabled()
        # Editing after a preview takes the right to apply away until the next preview.
        await ops.click("#config-preview")
        await see(ops.locator("#config-apply")).to_be_enabled()
        await editor.fill('{"detect": {"fps": 4}}')
        await see(ops.locator("#config-apply")).to_be_disabled()

        # Roll back to version 1: previewed first (3 -> 2), then applied as version 3.
        await ops.locator('#version-rows tr[data-version="1"] button').click()
        await see(ops.locator("#config-mode")).to_have_text("rolling back to version 1: check the preview, then apply")
        await see(preview.first.locator(".before")).to_have_text("3")
        await see(preview.first.locator(".after")).to_have_text("2")
        await ops.click("#config-apply")
        await see(ops.locator("#config-result")).to_contain_text(
            "Version 3 of the fleet layer stored (rollback to version 1)."
        )
        top = ops.locator("#version-rows tr").first
        await see(top).to_contain_text("(rollback to version 1)")
        await see(editor).to_have_value('{\n  "detect": {\n    "fps": 2\n  }\n}')
        device_row = ops.locator('#config-device-rows tr[data-device-id="pole-a"]')
        await see(device_row.locator(".desired")).to_have_text("3")
        state = (await http.get("api/config/devices/pole-a")).json()
        assert state["desired_version"] == 3 and state["document"] == {"detect": {"fps": 2}}

        # The fleet page: roll-ups, the site, the device and its configuration drift.
        await ops.click('.nav a[data-page="fleet"]')
        await see(ops.locator('#fleet-rollup .card[data-name="devices online"] .value')).to_have_text("1")
        # The registry expects cam2 and the box does not report it: a blind spot.
        await see(ops.locator('#fleet-rollup .card[data-name="cameras down"] .value')).to_have_text("1")
        await see(ops.locator("#blind-spots li")).to_have_text(["pole-a / cam2"])
        site = ops.locator('#site-rows tr[data-site-id="bontang-utara"]')
        # ok, degraded, offline, never seen; cameras up, degraded, down
        counts = ["0", "1", "0", "0", "1", "0", "1"]
        await see(site.locator("td")).to_have_text(["Bontang Utara", "Bontang Utara", *counts])
        await ops.locator('#registry-rows tr[data-device-id="pole-a"]').click()
        await see(ops.locator('#device-config dd[data-fact="drift"]')).to_have_text("pending")
        await see(ops.locator('#device-config dd[data-fact="desired version"]')).to_have_text("3")
        await see(ops.locator('#device-delivery dd[data-fact="received"]')).to_have_text("2")
        await see(ops.locator('#device-health dd[data-fact="cameras"]')).to_have_text("cam1: up, cam2: down")
        # Ops reads alerts but does not handle them: no Alerts actions, yet the page is there.
        await see(ops.locator('.nav a[data-page="alerts"]')).to_be_visible()

        # An alert, assigned to the agency nobody answers: its delivery is a dead letter.
        await pa.send(detection("pole-a", label="person", event_id="walker"))
        alert_id = await wait_for(lambda: _first_alert(http), what="the alert")
        agencies = (await http.get("api/agencies")).json()["items"]
        assigned = await http.post(f"api/alerts/{alert_id}/assign", json={"agency_id": agencies[0]["id"]})
        assert assigned.status_code == 200, assigned.text
        await wait_for(lambda: _dead(http), what="the delivery to be dead")

        # A viewer: everything to read, no button that changes anything.
        viewer = await signed_in(browser, base, "vera", errors)
        await viewer.goto(f"{base}#alerts")
        await see(viewer.locator("#whoami")).to_have_text("vera (viewer)")
        await viewer.locator("#alert-rows tr").first.click()
        await see(viewer.locator("#alert-timeline li")).to_have_count(2)
        await see(viewer.locator("#alert-actions")).to_be_hidden()
        await see(viewer.locator("#alert-evidence")).to_be_hidden()
        dead = viewer.locator("#dead-rows tr")
        await see(dead).to_have_count(1)
        await see(dead.locator("td").nth(2)).to_have_text("Dishub")
        await see(dead.locator("button")).to_be_hidden()
        await viewer.click('.nav a[data-page="config"]')
        await see(viewer.locator("#version-rows tr")).to_have_count(3)
        await see(viewer.locator("#config-preview")).to_be_hidden()
        await see(viewer.locator("#config-apply")).to_be_hidden()
        await see(viewer.locator("#version-rows button:visible")).to_have_count(0)

        # The operator retries the dead letter: the button works (the retry is on the record).
        operator = await signed_in(browser, base, "olga", errors)
        await operator.goto(f"{base}#alerts")
        await operator.locator("#dead-rows tr button").click()
        await see(operator.locator("#alert-notice")).to_contain_text("is being sent again")
        audit = (await http.get("api/audit", params={"action": "delivery.retry"})).json()["items"]
        assert [e["actor"] for e in audit] == ["user:olga"]
        await see(operator.locator("#alert-evidence")).to_be_hidden()  # nothing selected yet
        await operator.locator("#alert-rows tr").first.click()
        await see(operator.locator("#alert-evidence")).to_be_visible()

    assert errors == []


async def _health(http: httpx.AsyncClient, device: str) -> bool:
    answer = await http.get(f"api/devices/{device}")
    return answer.status_code == 200 and answer.json()["last_health"] is not None


async def _first_alert(http: httpx.AsyncClient) -> int | None:
    items = (await http.get("api/alerts")).json()["items"]
    return int(items[0]["id"]) if items else None


async def _dead(http: httpx.AsyncClient) -> bool:
    return bool((await http.get("api/alert-deliveries", params={"state": "dead"})).json()["items"])


async def test_every_api_call_of_the_pages_is_a_route_of_the_server(tmp_path: Path) -> None:
    spec = create_app(settings_for(None, tmp_path / "fleet.db"), run_ingest=False, migrate=False).openapi()
    routes = {(method.upper(), _shape(path)) for path, ops in spec["paths"].items() for method in ops}
    scripts = {p.name: p.read_text() for p in sorted(STATIC_DIR.glob("*.js"))}
    calls = [(name, method, path) for name, text in scripts.items() for method, path in _calls(text)]
    assert {name for name, _, _ in calls} >= {"alerts.js", "fleet.js", "config.js", "common.js", "app.js"}
    unknown = [(name, method, path) for name, method, path in calls if (method, _shape(path)) not in routes]
    assert unknown == [], "the console calls routes the server does not have"
    # The parser sees the methods (a page whose calls it stops seeing fails here).
    assert ("login.js", "POST", "/api/auth/login") in calls
    assert ("alerts.js", "POST", "/api/alerts/${id}/false-alarm") in calls
    assert ("config.js", "POST", "/api/config/rollback") in calls
    assert len(calls) >= 20, calls


# A URL in a script: "/api/..." or `/api/...${x}...` up to the query string or the closing quote.
_URL = r"[\"`](/api/[^\"`?]*)"


def _calls(script: str) -> list[tuple[str, str]]:
    """(method, path) of every API URL in a script: with the method of the call it is in
    (`api("POST", ...)`, `fetch(..., {method: "POST"})`), else GET (EventSource, links, fetch)."""
    found: list[tuple[str, str]] = []
    for m in re.finditer(_URL, script):
        call = re.search(r"api\(\"(\w+)\",\s*(?:url\()?$", script[max(0, m.start() - 40) : m.start()])
        method = re.match(r"[^;]*?method:\s*\"(\w+)\"", script[m.end() : m.end() + 120])
        found.append((call.group(1) if call else method.group(1) if method else "GET", m.group(1)))
    return found


def _shape(path: str) -> str:
    """A path with every parameter ({alert_id} in the schema, ${id} in a script) as {}."""
    return re.sub(r"\$?\{[^}]*\}", "{}", path)
