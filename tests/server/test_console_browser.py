"""The operators' console in a real headless Chromium: devices and detections appear, pushed."""

from __future__ import annotations

import pytest

from support.brokers import BrokerProcess
from support.required import require_binary
from support.server import (
    PASSWORD,
    add_token,
    add_user,
    bearer,
    detection,
    health,
    live_server,
    pole,
    presence,
    settings_for,
    wait_for,
)

pytestmark = [pytest.mark.browser, pytest.mark.mqtt, pytest.mark.e2e]

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


async def test_console_shows_devices_and_pushes_new_detections_without_reload(
    mosquitto_broker: BrokerProcess, database: str
) -> None:
    chromium = require_binary("chromium", "apt-get install chromium", candidates=("/usr/bin/chromium",))
    playwright_api = pytest.importorskip("playwright.async_api", reason="needs the dev extra (playwright)")
    broker = mosquitto_broker
    add_user(database, "olga", "operator")
    token = add_token(database, "viewer")

    async with (
        live_server(settings_for(broker, database)) as base,
        pole(broker, "pole-a") as pa,
        pole(broker, "pole-b") as pb,
    ):
        await pa.send(presence("pole-a"))
        await pa.send(health("pole-a", cpu=23.0, memory=47.0, fps=14.5))
        await pb.send(presence("pole-b"))
        await pb.send(health("pole-b", cpu=91.0, memory=35.0, fps=9.0))
        before = detection("pole-a", label="person", camera="cam1", score=0.91)
        await pa.send(before)
        await wait_for(lambda: _stored(base, token, before.id), what="the first detection to be stored")

        async with playwright_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
                expect = playwright_api.expect
                # Not signed in: the console sends the browser to the sign-in page.
                await page.goto(base)
                await expect(page).to_have_url(f"{base}login")
                await page.fill("#username", "olga")
                await page.fill("#password", "not-the-password")
                await page.click("#sign-in")
                await expect(page.locator("#login-error")).to_have_text(
                    "wrong username or password, or the account is disabled"
                )
                await page.fill("#password", PASSWORD)
                await page.click("#sign-in")
                await expect(page).to_have_url(base)
                await expect(page.locator("#whoami")).to_have_text("olga (operator)")

                rows = page.locator("#device-rows tr")
                await expect(rows).to_have_count(2)
                for device in ("pole-a", "pole-b"):
                    row = page.locator(f'#device-rows tr[data-device-id="{device}"]')
                    await expect(row.locator(".badge")).to_have_text("online")
                row_a = page.locator('#device-rows tr[data-device-id="pole-a"]')
                await expect(row_a.locator(".cpu")).to_have_text("23%")
                await expect(row_a.locator(".mem")).to_have_text("47%")
                await expect(row_a.locator(".cam")).to_have_text("cam1 14.5 fps")
                await expect(page.locator("#device-count")).to_have_text("2 of 2 online")
                await expect(page.locator("#link")).to_have_text("live")

                feed = page.locator("#feed-rows tr")
                await expect(feed).to_have_count(1)
                await expect(feed.first.locator(".device")).to_have_text("pole-a")
                await expect(feed.first.locator(".label")).to_have_text("person")
                await expect(feed.first.locator(".score")).to_have_text("91%")

                # Pushed after the page loaded: it appears on top, no reload.
                navigations: list[str] = []
                page.on("framenavigated", lambda frame: navigations.append(frame.url))
                after = detection("pole-b", label="car", camera="cam2", score=0.66)
                await pb.send(after)
                await expect(feed).to_have_count(2)
                top = feed.first
                await expect(top.locator(".device")).to_have_text("pole-b")
                await expect(top.locator(".camera")).to_have_text("cam2")
                await expect(top.locator(".label")).to_have_text("car")
                await expect(top.locator(".score")).to_have_text("66%")

                # A device dropping off (its last will) turns its badge offline, also pushed.
                await pb.send(presence("pole-b", "offline", reason="connection lost"))
                row_b = page.locator('#device-rows tr[data-device-id="pole-b"]')
                await expect(row_b.locator(".badge")).to_have_text("offline")
                await expect(page.locator("#device-count")).to_have_text("1 of 2 online")

                assert navigations == []
                # The one console error allowed: the browser logging the refused first sign-in.
                assert [e for e in errors if "401" not in e] == []

                # Signing out ends the session and returns to the sign-in page.
                await page.click("#sign-out")
                await expect(page).to_have_url(f"{base}login")
                await page.goto(base)
                await expect(page).to_have_url(f"{base}login")
            finally:
                await browser.close()


async def _stored(base: str, token: str, message_id: str) -> bool:
    import httpx

    async with httpx.AsyncClient(base_url=base, headers=bearer(token)) as http:
        items = (await http.get("api/events")).json()["items"]
    return any(item["message_id"] == message_id for item in items)
