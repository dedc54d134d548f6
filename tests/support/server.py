"""Helpers for the fleet-server tests (no tests here): real messages, a real ingest, a live server.

Kept in a test_server_* module because the server's tests own that name space; the other
The tests under tests/server import it as `support.server` (tests/ is on the path).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiomqtt
from pydantic import SecretStr
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from polewatch.fleet_server import people
from polewatch.fleet_server.audit import Actor
from polewatch.fleet_server.db import make_engine, make_sessionmaker, upgrade
from polewatch.fleet_server.feed import Feed
from polewatch.fleet_server.ingest import Ingest
from polewatch.fleet_server.settings import Settings
from polewatch.fleet_server.store import Store
from polewatch.protocol import (
    AnyMessage,
    Box,
    CameraHealth,
    CameraStatus,
    Detection,
    Health,
    Presence,
    V1Message,
    build,
    encode,
    topics,
)
from support.brokers import USERS, BrokerProcess


def database_url(db: Path | str) -> str:
    """A SQLite file path, or a URL as it is (the `database` fixture's)."""
    return db if isinstance(db, str) else f"sqlite:///{db}"


def settings_for(broker: BrokerProcess | None, db: Path | str, **overrides: Any) -> Settings:
    """Server settings for a test: its own database (a SQLite file or a URL), fast reconnects."""
    values: dict[str, Any] = {
        "database_url": database_url(db),
        "mqtt_host": broker.host if broker else "127.0.0.1",
        "mqtt_port": broker.port if broker else 1,
        "mqtt_username": "fleet-server",
        "mqtt_password": SecretStr(USERS["fleet-server"]),
        # Mosquitto has shared subscriptions: the tests run the replica-ready path on it.
        "mqtt_shared_group": "polewatch" if broker is not None and broker.kind == "mosquitto" else None,
        "mqtt_keepalive_s": 5,
        "mqtt_reconnect_min_s": 0.1,
        "mqtt_reconnect_max_s": 0.5,
        "http_host": "127.0.0.1",
        "http_port": 0,
    }
    values.update(overrides)
    return Settings(**values)


# --- people ---------------------------------------------------------------------------------------

PASSWORD = "a-long-test-password"
SETUP = Actor("test:setup")


def _people(db: Path | str, change: Callable[[Session], Any]) -> Any:
    engine = make_engine(database_url(db))
    try:
        upgrade(engine)
        with make_sessionmaker(engine).begin() as session:
            return change(session)
    finally:
        engine.dispose()


def add_user(db: Path | str, username: str, role: str = "admin", *, password: str = PASSWORD, **more: Any) -> int:
    """A person in the database (migrating it first); returns the user id."""
    return int(
        _people(db, lambda s: people.create_user(s, SETUP, username=username, password=password, role=role, **more).id)
    )


def add_token(db: Path | str, role: str = "admin", name: str | None = None) -> str:
    """An API token's secret, made directly in the database (migrating it first)."""
    return str(_people(db, lambda s: people.create_token(s, SETUP, name=name or f"test-{role}", role=role)[1]))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- messages -------------------------------------------------------------------------------------

_seq: dict[str, int] = {}


def _next_seq(device: str) -> int:
    _seq[device] = _seq.get(device, 0) + 1
    return _seq[device]


def detection(
    device: str = "pole-a",
    *,
    label: str = "person",
    camera: str = "cam1",
    score: float = 0.87,
    event_id: str = "trk-1",
    phase: str = "start",
) -> AnyMessage:
    body = Detection(
        event_id=event_id,
        phase=phase,
        camera_id=camera,
        label=label,
        score=score,
        box=Box(x1=0.1, y1=0.2, x2=0.3, y2=0.6),
        frame_time=datetime.now(timezone.utc),
        frame_width=1280,
        frame_height=720,
    )
    return build(body, device_id=device, seq=_next_seq(device))


def health(device: str = "pole-a", *, cpu: float = 37.5, memory: float = 41.0, fps: float = 12.5) -> AnyMessage:
    body = Health(
        agent_version="0.1.0",
        uptime_s=120,
        cpu_percent=cpu,
        memory_percent=memory,
        memory_rss_bytes=200_000_000,
        disk_percent=30,
        disk_free_bytes=10_000_000_000,
        cameras=[CameraStatus(camera_id="cam1", connected=True, fps=fps)],
        detect_fps=5.0,
    )
    return build(body, device_id=device, seq=_next_seq(device))


def camera_health(
    device: str = "pole-a",
    *,
    camera: str = "cam1",
    condition: str = "covered",
    phase: str = "start",
    since: datetime | None = None,
    until: datetime | None = None,
    variant: str | None = "black",
) -> AnyMessage:
    body = CameraHealth.model_validate(
        {
            "camera_id": camera,
            "condition": condition,
            "phase": phase,
            "since": since or datetime.now(timezone.utc),
            "until": until,
            "variant": variant if condition == "covered" else None,
            "value": 5.5,
            "threshold": 20.0,
            "detail": f"{condition} {phase}",
        }
    )
    return build(body, device_id=device, seq=_next_seq(device))


def presence(device: str = "pole-a", state: str = "online", reason: str = "connected") -> AnyMessage:
    body = Presence(state=state, agent_version="0.1.0", reason=reason)
    return build(body, device_id=device, seq=_next_seq(device))


@contextlib.asynccontextmanager
async def pole(broker: BrokerProcess, device: str = "pole-a") -> AsyncIterator[Pole]:
    """An MQTT client logged in as a pole's account, as the agent would be."""
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        username=device,
        password=USERS[device],
        identifier=f"test-{device}-{time.monotonic_ns()}",
        protocol=aiomqtt.ProtocolVersion.V311,
    ) as client:
        yield Pole(client, device)


@dataclass
class Pole:
    client: aiomqtt.Client
    device: str

    async def send(self, message: V1Message, *, retain: bool | None = None) -> None:
        if retain is None:
            retain = message.kind == "presence"
        await self.client.publish(topics.up(self.device, message.kind), encode(message), qos=1, retain=retain)

    async def raw(self, kind: str, payload: bytes, *, device: str | None = None) -> None:
        await self.client.publish(topics.up(device or self.device, kind), payload, qos=1)


# --- waiting --------------------------------------------------------------------------------------


async def wait_for(check: Callable[[], Any], timeout: float = 10, what: str = "condition") -> Any:
    """Poll `check` (plain or async) until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def count(sessions: sessionmaker[Session], model: Any, **where: Any) -> int:
    with sessions() as s:
        query = select(func.count()).select_from(model)
        for key, value in where.items():
            query = query.where(getattr(model, key) == value)
        return int(s.scalar(query) or 0)


# --- a running ingest (no HTTP) ---------------------------------------------------------------------


@dataclass
class RunningIngest:
    ingest: Ingest
    engine: Engine
    sessions: sessionmaker[Session]
    feed: Feed
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def running_ingest(
    settings: Settings, *, wait_connected: bool = True, busy_timeout_ms: int | None = None
) -> AsyncIterator[RunningIngest]:
    engine = (
        make_engine(settings.database_url)
        if busy_timeout_ms is None
        else make_engine(settings.database_url, sqlite_busy_timeout_ms=busy_timeout_ms)
    )
    await asyncio.to_thread(upgrade, engine)
    sessions = make_sessionmaker(engine)
    feed = Feed()
    ingest = Ingest(settings, Store(sessions), feed)
    task = asyncio.create_task(ingest.run())
    try:
        if wait_connected:
            await ingest.wait_connected(timeout=15)
        yield RunningIngest(ingest, engine, sessions, feed, task)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.to_thread(ingest.close)
        engine.dispose()


# --- a live server (uvicorn on a random loopback port, in this process) ---------------------------


@contextlib.asynccontextmanager
async def live_server(settings: Settings) -> AsyncIterator[str]:
    """Runs polewatch.fleet_server.serve; yields the base URL (ending in '/')."""
    from polewatch.fleet_server import serve

    stop = asyncio.Event()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_ready(url: str) -> None:
        if not ready.done():
            ready.set_result(url)

    task = asyncio.create_task(serve(settings, on_ready=on_ready, stop=stop))
    try:
        waiting: set[asyncio.Future[Any]] = {task, ready}
        done, _ = await asyncio.wait(waiting, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
            raise AssertionError("server exited during start")
        if ready not in done:
            raise AssertionError("server did not start within 20 s")
        yield ready.result()
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, str]]:
    """Parse a text/event-stream into {'event','data','id'} dicts (comments skipped)."""
    event: dict[str, str] = {}
    async for line in lines:
        if line == "":
            if "data" in event or "event" in event:
                yield event
            event = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data" and "data" in event:
            event["data"] += "\n" + value
        else:
            event[name] = value
