"""The live feed (GET /api/stream) end to end: MQTT in, server-sent events out, resumable."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from support.brokers import BrokerProcess
from support.server import (
    add_token,
    bearer,
    detection,
    live_server,
    pole,
    presence,
    settings_for,
    sse_events,
    wait_for,
)

pytestmark = pytest.mark.mqtt


async def next_of(events: AsyncIterator[dict[str, str]], kind: str, timeout: float = 10) -> dict[str, Any]:
    """The next event of `kind`, with its data decoded; other kinds are skipped."""

    async def find() -> dict[str, Any]:
        async for event in events:
            if event.get("event") == kind:
                return {**event, "data": json.loads(event["data"])}
        raise AssertionError("stream ended")

    return await asyncio.wait_for(find(), timeout)


async def test_stream_pushes_what_arrives_and_replays_what_a_reconnecting_client_missed(
    broker: BrokerProcess, database: str
) -> None:
    settings = settings_for(broker, database)
    timeout = httpx.Timeout(10, read=30)
    headers = bearer(add_token(database, "operator"))
    async with (
        live_server(settings) as base,
        httpx.AsyncClient(base_url=base, timeout=timeout, headers=headers) as http,
    ):
        await wait_for(lambda: _connected(http), what="the ingest to connect")
        async with pole(broker) as pa:
            # 1. A connected console gets the device snapshot, then changes and detections as pushed.
            async with http.stream("GET", "api/stream") as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                events = sse_events(response.aiter_lines())
                assert (await next_of(events, "devices"))["data"] == []

                await pa.send(presence(state="online"))
                device = await next_of(events, "device")
                assert device["data"]["device_id"] == "pole-a" and device["data"]["online"] is True

                first = detection(label="person")
                await pa.send(first)
                got = await next_of(events, "detection")
                assert got["data"]["message_id"] == first.id
                assert got["id"] == str(got["data"]["id"])
                last_seen_id = got["id"]

            # 2. While it is away, two more arrive.
            missed = [detection(label="car", event_id="m1"), detection(label="truck", event_id="m2")]
            for message in missed:
                await pa.send(message)
            await wait_for(lambda: _event_count(http, 3), what="the missed events to be stored")

            # 3. It comes back with Last-Event-ID (what EventSource sends): the missed ones first, in
            #    order, then live ones, each exactly once.
            async with http.stream("GET", "api/stream", headers={"Last-Event-ID": last_seen_id}) as response:
                events = sse_events(response.aiter_lines())
                snapshot = (await next_of(events, "devices"))["data"]
                assert [(d["device_id"], d["online"]) for d in snapshot] == [("pole-a", True)]
                replayed = [await next_of(events, "detection"), await next_of(events, "detection")]
                assert [r["data"]["message_id"] for r in replayed] == [m.id for m in missed]
                assert int(replayed[0]["id"]) > int(last_seen_id)

                live = detection(label="bicycle", event_id="l1")
                await pa.send(live)
                assert (await next_of(events, "detection"))["data"]["message_id"] == live.id

                await pa.send(presence(state="offline", reason="connection lost"))
                gone = await next_of(events, "device")
                assert gone["data"]["online"] is False and gone["data"]["presence_reason"] == "connection lost"

            # 4. A fresh console asks for a backlog: the newest N, oldest first.
            async with http.stream("GET", "api/stream", params={"backlog": 2}) as response:
                events = sse_events(response.aiter_lines())
                backlog = [await next_of(events, "detection"), await next_of(events, "detection")]
                assert [b["data"]["message_id"] for b in backlog] == [missed[1].id, live.id]


async def _connected(http: httpx.AsyncClient) -> bool:
    return bool((await http.get("healthz")).json()["mqtt_connected"])


async def _event_count(http: httpx.AsyncClient, n: int) -> bool:
    return len((await http.get("api/events")).json()["items"]) == n
