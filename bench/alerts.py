"""Alert latency: from a pole publishing an event to the alert reaching a connected console.

One run starts a private Mosquitto and the whole fleet server (ingest + HTTP, SQLite in a temporary
folder), opens the alert stream (GET /api/alerts/stream, server-sent events) as a console would,
and publishes detection starts from a pole's account one at a time. For each it measures the time
from the publish call to the SSE event carrying that message's id. The baseline, measured in the
same run against the same broker: the time from the same publish call to a plain aiomqtt
subscriber receiving the message (the broker hop every alert pays before the server sees it).

    python bench/alerts.py [--events N] [--interval-ms MS]

Goal: p99 under 250 ms on loopback. The last line is machine-readable:
    RESULT alerts p50_ms=... p99_ms=... raw_p50_ms=... raw_p99_ms=... events=... goal_p99_ms=250
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt
import httpx
from rich.console import Console
from rich.progress import track
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from polewatch.protocol import encode, topics
from support import brokers
from support.server import add_token, bearer, detection, live_server, settings_for, sse_events

GOAL_P99_MS = 250.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(
    broker: brokers.BrokerProcess, db: Path, events: int, interval_s: float
) -> tuple[list[float], list[float]]:
    token = add_token(db, "operator", "bench")
    sse_ms: list[float] = []
    raw_ms: list[float] = []
    async with (
        live_server(settings_for(broker, db, mqtt_client_id="bench-alerts")) as base,
        httpx.AsyncClient(base_url=base, headers=bearer(token), timeout=httpx.Timeout(10, read=60)) as http,
        aiomqtt.Client(broker.host, broker.port, username="pole-a", password=brokers.USERS["pole-a"],
                       identifier="bench-pole") as pole,
        aiomqtt.Client(broker.host, broker.port, username="tester", password=brokers.USERS["tester"],
                       identifier="bench-raw") as raw,
    ):  # fmt: skip
        while not (await http.get("healthz")).json()["mqtt_connected"]:  # noqa: ASYNC110 - an HTTP poll
            await asyncio.sleep(0.05)
        await raw.subscribe(topics.up("pole-a", "detection"), qos=1)
        raw_seen: dict[str, float] = {}
        arrived = asyncio.Event()

        async def read_raw() -> None:
            async for message in raw.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                raw_seen[json.loads(payload)["id"]] = time.perf_counter()
                arrived.set()

        async def wait_seen(message_id: str) -> None:
            while message_id not in raw_seen:
                arrived.clear()
                await arrived.wait()

        reader = asyncio.create_task(read_raw())
        async with http.stream("GET", "api/alerts/stream") as response:
            stream = sse_events(response.aiter_lines())
            for i in track(range(events), description="alerts", transient=True):
                message = detection(label="person", event_id=f"bench-{i}")
                sent = time.perf_counter()
                await pole.publish(topics.up("pole-a", "detection"), encode(message), qos=1)
                while True:
                    event = await asyncio.wait_for(anext(stream), 30)
                    if event.get("event") == "alert" and json.loads(event["data"])["alert"]["message_id"] == message.id:
                        sse_ms.append((time.perf_counter() - sent) * 1000)
                        break
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wait_seen(message.id), 5)
                if message.id in raw_seen:
                    raw_ms.append((raw_seen[message.id] - sent) * 1000)
                await asyncio.sleep(interval_s)
        reader.cancel()
    return sse_ms, raw_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300, help="detections to publish (default 300)")
    parser.add_argument("--interval-ms", type=float, default=20, help="pause between events (default 20 ms)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-alerts-") as tmp:
        broker = brokers.mosquitto(Path(tmp) / "broker")
        try:
            sse_ms, raw_ms = asyncio.run(measure(broker, Path(tmp) / "fleet.db", args.events, args.interval_ms / 1000))
        finally:
            broker.stop()
    table = Table(title=f"Publish -> client latency, {len(sse_ms)} events, loopback")
    for column in ("path", "p50 ms", "p90 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="right" if column != "path" else "left")
    for name, values in (("raw MQTT subscriber (baseline)", raw_ms), ("alert on the SSE stream", sse_ms)):
        table.add_row(name, *(f"{percentile(values, q):.1f}" for q in (0.5, 0.9, 0.99)), f"{max(values):.1f}")
    Console().print(table)
    p50, p99 = percentile(sse_ms, 0.5), percentile(sse_ms, 0.99)
    raw50, raw99 = percentile(raw_ms, 0.5), percentile(raw_ms, 0.99)
    print(f"server's share of p50: {p50 - raw50:.1f} ms; mean {statistics.fmean(sse_ms):.1f} ms; "
          f"goal p99 < {GOAL_P99_MS:.0f} ms: {'met' if p99 < GOAL_P99_MS else 'NOT met'}")  # fmt: skip
    print(
        f"RESULT alerts p50_ms={p50:.1f} p99_ms={p99:.1f} raw_p50_ms={raw50:.1f} raw_p99_ms={raw99:.1f} "
        f"events={len(sse_ms)} goal_p99_ms={GOAL_P99_MS:.0f}"
    )


if __name__ == "__main__":
    main()
