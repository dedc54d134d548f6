"""Alert latency: from a pole publishing an event to the alert reaching a connected console.

One run starts a private Mosquitto and the whole fleet server (ingest + HTTP, SQLite in a temporary
folder), opens the alert stream (GET /api/alerts/stream, server-sent events) as a console would,
and publishes detection starts from a pole's account one at a time. For each it measures the time
from the publish call to the SSE event carrying that message's id. The baseline, measured in the
same run against the same broker: the time from the same publish call to a plain aiomqtt
subscriber receiving the message (the broker hop every alert pays before the server sees it).

    python bench/alerts.py [--events N] [--interval-ms MS] [--cross-replica]

--cross-replica: two servers on one private PostgreSQL; replica A ingests (B has no broker), and
the console is connected to B, so every alert crosses replicas (NOTIFY at A's commit, LISTEN on B,
then B reads the step from the database).

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
from support import brokers, postgres
from support.server import add_token, bearer, detection, live_server, settings_for, sse_events

GOAL_P99_MS = 250.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(
    broker: brokers.BrokerProcess, db: Path | str, events: int, interval_s: float, *, cross: bool = False
) -> tuple[list[float], list[float]]:
    token = add_token(db, "operator", "bench")
    sse_ms: list[float] = []
    raw_ms: list[float] = []
    async with (
        live_server(settings_for(broker, db, mqtt_client_id="bench-alerts")) as base,
        contextlib.AsyncExitStack() as more,
    ):
        console_base = (
            await more.enter_async_context(live_server(settings_for(None, db, mqtt_client_id="bench-b")))
            if cross
            else base
        )
        await _measure(broker, base, console_base, token, events, interval_s, sse_ms, raw_ms)
    return sse_ms, raw_ms


async def _measure(
    broker: brokers.BrokerProcess, base: str, console_base: str, token: str, events: int, interval_s: float,
    sse_ms: list[float], raw_ms: list[float],
) -> None:  # fmt: skip
    async with (
        httpx.AsyncClient(base_url=base, headers=bearer(token), timeout=httpx.Timeout(10, read=60)) as http,
        httpx.AsyncClient(base_url=console_base, headers=bearer(token), timeout=httpx.Timeout(10, read=60)) as console,
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
        async with console.stream("GET", "api/alerts/stream") as response:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300, help="detections to publish (default 300)")
    parser.add_argument("--interval-ms", type=float, default=20, help="pause between events (default 20 ms)")
    parser.add_argument(
        "--cross-replica", action="store_true", help="PostgreSQL, two replicas: A stores, the console is on B"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-alerts-") as tmp:
        broker = brokers.mosquitto(Path(tmp) / "broker")
        pg = postgres.start() if args.cross_replica else None
        try:
            db: Path | str = pg.create_database() if pg is not None else Path(tmp) / "fleet.db"
            sse_ms, raw_ms = asyncio.run(
                measure(broker, db, args.events, args.interval_ms / 1000, cross=args.cross_replica)
            )
        finally:
            broker.stop()
            if pg is not None:
                pg.destroy()
    where = "PostgreSQL, stored by replica A, streamed by replica B" if args.cross_replica else "SQLite, one server"
    table = Table(title=f"Publish -> client latency, {len(sse_ms)} events, loopback, {where}")
    for column in ("path", "p50 ms", "p90 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="right" if column != "path" else "left")
    for name, values in (("raw MQTT subscriber (baseline)", raw_ms), ("alert on the SSE stream", sse_ms)):
        table.add_row(name, *(f"{percentile(values, q):.1f}" for q in (0.5, 0.9, 0.99)), f"{max(values):.1f}")
    Console().print(table)
    name = "alerts_cross_replica" if args.cross_replica else "alerts"
    p50, p99 = percentile(sse_ms, 0.5), percentile(sse_ms, 0.99)
    raw50, raw99 = percentile(raw_ms, 0.5), percentile(raw_ms, 0.99)
    print(f"server's share of p50: {p50 - raw50:.1f} ms; mean {statistics.fmean(sse_ms):.1f} ms; "
          f"goal p99 < {GOAL_P99_MS:.0f} ms: {'met' if p99 < GOAL_P99_MS else 'NOT met'}")  # fmt: skip
    print(
        f"RESULT {name} p50_ms={p50:.1f} p99_ms={p99:.1f} raw_p50_ms={raw50:.1f} raw_p99_ms={raw99:.1f} "
        f"events={len(sse_ms)} goal_p99_ms={GOAL_P99_MS:.0f}"
    )


if __name__ == "__main__":
    main()
