"""Device list and fleet health roll-up of the registry, with N registered devices, through the API.

Seeds a fresh database (SQLite in a temp dir by default, or `--database URL`) with N devices on N
poles of N/100 sites, each heard from (a health report with two cameras; some offline, some with a
camera down, some with an open camera-health condition), then times, through the whole ASGI app
(auth, validation, JSON) with an API token:

- list: `GET /api/registry/devices?limit=50` at random cursors (health of each row included);
- site: `GET /api/sites/{site}/health` (one site's roll-up);
- fleet: `GET /api/fleet/health` (every device and camera);

next to the baseline: a bare SQL query of the same rows in the same run (the registry row joined
to what the ingest last heard: for the fleet, the columns the roll-up reads; no Python on top).
Goal: p99 under 200 ms for list and fleet.

    python bench/registry.py [--devices 10000] [--repeat 50] [--database URL]

The last line is machine-readable:
    RESULT registry devices=... list_p99_ms=... list_sql_p99_ms=... fleet_p99_ms=... fleet_sql_p99_ms=...
           site_p99_ms=... list_ratio=... fleet_ratio=...   (ratio = API p99 / bare SQL p99)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import track
from rich.table import Table
from sqlalchemy import insert, select, text

from polewatch.fleet_server import camera_signature, create_app, startup_heap
from polewatch.fleet_server.audit import Actor
from polewatch.fleet_server.db import make_engine, make_sessionmaker, upgrade
from polewatch.fleet_server.models import CameraHealthEvent, Device, Pole, RegisteredDevice, Site
from polewatch.fleet_server.people import create_token
from polewatch.fleet_server.settings import Settings

BATCH = 1000


def seed(database: str, devices: int) -> str:
    """Fill the database; returns an admin API token."""
    engine = make_engine(database)
    upgrade(engine)
    now = datetime.now(timezone.utc)
    rng = random.Random(7)
    with make_sessionmaker(engine).begin() as session:
        token = create_token(session, Actor("bench:registry"), name="bench", role="viewer")[1]
        sites = max(1, devices // 100)
        session.execute(insert(Site), [{"site_id": f"site-{s:04}", "name": f"Site {s}", "created_at": now}
                                       for s in range(sites)])  # fmt: skip
    for start in track(range(0, devices, BATCH), description=f"seeding {devices} devices"):
        with make_sessionmaker(engine).begin() as session:
            ids = range(start, min(start + BATCH, devices))
            session.execute(insert(Pole), [
                {"pole_id": f"pole-{i:06}", "site_id": f"site-{i % sites:04}", "name": f"Pole {i}",
                 "latitude": 0.1 + i / 1e6, "longitude": 117.4, "created_at": now} for i in ids
            ])  # fmt: skip
            session.execute(insert(RegisteredDevice), [
                {"device_id": f"box-{i:06}", "pole_id": f"pole-{i:06}", "cameras": ["cam1", "cam2"],
                 "status": "active", "registered_at": now, "hardware": "Raspberry Pi 5", "agent_version": "0.4.0"}
                for i in ids
            ])  # fmt: skip
            heard = []
            for i in ids:
                seen = now - timedelta(seconds=rng.uniform(1, 60))
                cameras = [
                    {"camera_id": "cam1", "connected": True, "fps": rng.uniform(11, 13), "frames_dropped": 0},
                    {"camera_id": "cam2", "connected": rng.random() > 0.05, "fps": 12.0, "frames_dropped": 3},
                ]
                heard.append({
                    "device_id": f"box-{i:06}", "first_seen": seen, "last_seen": seen, "online": rng.random() > 0.03,
                    "agent_version": "0.4.0", "last_presence_at": seen, "last_health_at": seen,
                    "camera_signature": camera_signature.of(cameras),
                    "last_health": {"agent_version": "0.4.0", "uptime_s": 3600.0, "cpu_percent": 40.0,
                                    "memory_percent": 30.0, "disk_percent": 20.0, "cameras": cameras},
                })  # fmt: skip
            session.execute(insert(Device), heard)
            conditions = [
                {"message_id": f"ch-{i}", "device_id": f"box-{i:06}", "seq": 1, "camera_id": "cam1",
                 "condition": "covered", "phase": "start", "since": now, "sent_at": now, "received_at": now}
                for i in ids if rng.random() < 0.02
            ]  # fmt: skip
            if conditions:
                session.execute(insert(CameraHealthEvent), conditions)
    engine.dispose()
    return token


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))] * 1000


async def timed(fn: Callable[[], Awaitable[Any]], repeat: int) -> list[float]:
    await fn()  # warm up
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - started)
    return out


async def run(database: str, devices: int, repeat: int) -> dict[str, list[float]]:
    token = seed(database, devices)
    app = create_app(Settings(database_url=database, mqtt_password=None), run_ingest=False)
    engine = make_engine(database)
    rng = random.Random(11)
    cursors = [f"box-{rng.randrange(devices):06}" for _ in range(repeat + 1)]
    results: dict[str, list[float]] = {}
    async with app.router.lifespan_context(app):
        startup_heap.freeze()  # as `polewatch server run` does once it is up
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://fleet", headers=headers) as client:
            cursor_iter = iter(cursors * 2)

            async def api_list() -> None:
                response = await client.get("/api/registry/devices", params={"limit": 50, "cursor": next(cursor_iter)})
                assert response.status_code == 200 and len(response.json()["items"]) <= 50, response.text

            def sql_list() -> None:
                with engine.connect() as conn:
                    ids = [r[0] for r in conn.execute(
                        text("SELECT device_id FROM registry_devices WHERE device_id > :c ORDER BY device_id LIMIT 51"),
                        {"c": next(cursor_iter)},
                    )]  # fmt: skip
                    conn.execute(
                        select(RegisteredDevice.__table__, Device.__table__)
                        .outerjoin(Device.__table__, Device.device_id == RegisteredDevice.device_id)
                        .where(RegisteredDevice.device_id.in_(ids))
                    ).all()

            async def api_fleet() -> None:
                response = await client.get("/api/fleet/health")
                assert response.status_code == 200 and sum(response.json()["devices"].values()) == devices

            async def api_site() -> None:
                response = await client.get("/api/sites/site-0000/health")
                assert response.status_code == 200, response.text

            def sql_fleet() -> None:
                with engine.connect() as conn:
                    conn.execute(
                        select(RegisteredDevice.device_id, RegisteredDevice.cameras, Device.online, Device.last_seen,
                               Device.camera_signature)
                        .outerjoin(Device, Device.device_id == RegisteredDevice.device_id)
                        .where(RegisteredDevice.status == "active")
                    ).all()  # fmt: skip

            async def in_thread(fn: Callable[[], None]) -> None:
                await asyncio.to_thread(fn)

            results["list"] = await timed(api_list, repeat)
            results["list_sql"] = await timed(lambda: in_thread(sql_list), repeat)
            results["fleet"] = await timed(api_fleet, repeat)
            results["fleet_sql"] = await timed(lambda: in_thread(sql_fleet), repeat)
            results["site"] = await timed(api_site, repeat)
    engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--database", help="SQLAlchemy URL of an EMPTY database; default: SQLite in a temp dir")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        database = args.database or f"sqlite:///{Path(tmp) / 'registry.db'}"
        results = asyncio.run(run(database, args.devices, args.repeat))
    table = Table(title=f"registry with {args.devices} devices ({args.repeat} requests each)")
    for column in ("what", "p50 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="right" if column != "what" else "left")
    for name, samples in results.items():
        table.add_row(name, f"{percentile(samples, 0.5):.1f}", f"{percentile(samples, 0.99):.1f}",
                      f"{max(samples) * 1000:.1f}")  # fmt: skip
    Console().print(table)
    p99 = {name: percentile(samples, 0.99) for name, samples in results.items()}
    print(
        f"RESULT registry devices={args.devices} list_p99_ms={p99['list']:.1f} list_sql_p99_ms={p99['list_sql']:.1f} "
        f"fleet_p99_ms={p99['fleet']:.1f} fleet_sql_p99_ms={p99['fleet_sql']:.1f} site_p99_ms={p99['site']:.1f} "
        f"list_ratio={p99['list'] / p99['list_sql']:.2f} fleet_ratio={p99['fleet'] / p99['fleet_sql']:.2f}"
    )


if __name__ == "__main__":
    main()
