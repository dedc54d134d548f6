"""Health history downsampling on both databases: a month of samples inserted directly, compacted,
checked against a direct computation, read back through the API; compaction run twice, run by two
replicas at once, and fed a late sample changes nothing it should not."""

from __future__ import annotations

import contextlib
import statistics
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import uuid4

import httpx
import pytest
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from polewatch.fleet_server import create_app
from polewatch.fleet_server.cli import app as cli
from polewatch.fleet_server.db import make_engine, make_sessionmaker, upgrade
from polewatch.fleet_server.health_compaction import Report, compact
from polewatch.fleet_server.health_rollup import Policy
from polewatch.fleet_server.models import Device, HealthRollup, HealthSample, MaintenanceLease
from support.server import add_token, bearer, settings_for, wait_for

pytestmark = pytest.mark.server

POLICY = Policy(raw_hours=48, five_minute_days=30)
# Checked by a direct computation: one box's load, its temperature (not every box has a sensor,
# so some samples lack it), and how many of its two cameras were up.
CHECKED = ("cpu_percent", "temperature_c", "cameras_up")


@dataclass(frozen=True)
class Sample:
    device: str
    at: datetime
    cpu: float
    temperature: float | None
    cameras_up: int


def _samples(device: str, now: datetime, days: float, every_s: int) -> list[Sample]:
    count = int(days * 86_400 / every_s)
    return [
        Sample(
            device,
            now - timedelta(seconds=every_s * (count - i) - every_s / 2),
            cpu=float((i * 37) % 101),
            temperature=None if i % 11 == 0 else 40 + (i * 13) % 29 / 2,
            cameras_up=0 if i % 17 == 0 else 1 if i % 5 == 0 else 2,
        )
        for i in range(count)
    ]


def _body(s: Sample) -> dict[str, Any]:
    cameras = [
        {"camera_id": f"cam{n}", "connected": n < s.cameras_up, "fps": 12.5 if n < s.cameras_up else 0}
        for n in range(2)
    ]
    return {
        "agent_version": "0.1.0", "uptime_s": 100, "cpu_percent": s.cpu, "memory_percent": 41.0,
        "memory_rss_bytes": 1, "disk_percent": 30.0, "disk_free_bytes": 1, "temperature_c": s.temperature,
        "cameras": cameras, "detect_fps": 5.0,
    }  # fmt: skip


def _insert(engine: Engine, samples: list[Sample]) -> None:
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        for device in sorted({s.device for s in samples}):
            if conn.scalar(select(func.count()).select_from(Device).where(Device.device_id == device)) == 0:
                conn.execute(insert(Device).values(device_id=device, first_seen=now, last_seen=now, online=True))
        conn.execute(
            insert(HealthSample),
            [
                {
                    "message_id": str(uuid4()),
                    "device_id": s.device,
                    "seq": i,
                    "sent_at": s.at,
                    "received_at": s.at,
                    "body": _body(s),
                }
                for i, s in enumerate(samples)
            ],
        )


def _bucket(at: datetime, size: int) -> datetime:
    epoch = int(at.timestamp())
    return datetime.fromtimestamp(epoch - epoch % size, timezone.utc)


Expected = dict[tuple[str, int, datetime], tuple[int, dict[str, tuple[float, float, float]]]]


def _expected(samples: list[Sample], now: datetime, policy: Policy) -> tuple[int, Expected]:
    """(raw rows left, {(device, bucket_s, start): (samples, {metric: (min, max, avg)})}), computed
    straight from the samples, without the server's code."""
    raw_cut = now - timedelta(hours=policy.raw_hours)
    raw_cut = _bucket(raw_cut, 300)
    hour_cut = _bucket(now - timedelta(days=policy.five_minute_days), 3600)
    groups: dict[tuple[str, int, datetime], list[Sample]] = defaultdict(list)
    raw_left = 0
    for s in samples:
        if s.at >= raw_cut:
            raw_left += 1
        elif s.at >= hour_cut:
            groups[(s.device, 300, _bucket(s.at, 300))].append(s)
        else:
            groups[(s.device, 3600, _bucket(s.at, 3600))].append(s)
    expected: Expected = {}
    for key, members in groups.items():
        values = {
            "cpu_percent": [m.cpu for m in members],
            "temperature_c": [m.temperature for m in members if m.temperature is not None],
            "cameras_up": [float(m.cameras_up) for m in members],
        }
        expected[key] = (
            len(members),
            {name: (min(v), max(v), statistics.fmean(v)) for name, v in values.items() if v},
        )
    return raw_left, expected


def _stored(sessions: sessionmaker[Session]) -> tuple[int, Expected]:
    with sessions() as s:
        raw = int(s.scalar(select(func.count()).select_from(HealthSample)) or 0)
        stored: Expected = {}
        for row in s.scalars(select(HealthRollup)):
            stats = {
                name: (st["min"], st["max"], st["sum"] / st["n"]) for name, st in row.stats.items() if name in CHECKED
            }
            stored[(row.device_id, row.bucket_s, row.bucket_start)] = (row.samples, stats)
    return raw, stored


def _assert_matches(stored: Expected, expected: Expected) -> None:
    assert stored.keys() == expected.keys()
    for key, (samples, stats) in expected.items():
        got_samples, got_stats = stored[key]
        assert got_samples == samples, key
        assert got_stats.keys() == stats.keys(), key
        for name, (low, high, avg) in stats.items():
            assert got_stats[name][0] == low and got_stats[name][1] == high, (key, name)
            assert got_stats[name][2] == pytest.approx(avg, rel=1e-12), (key, name)


@pytest.fixture
def engine(database: str) -> Iterator[Engine]:
    engine = make_engine(database)
    upgrade(engine)
    yield engine
    engine.dispose()


def test_a_month_of_samples_shrinks_to_the_tiers_with_exact_aggregates(engine: Engine) -> None:
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    samples = _samples("pole-a", now, 31, 1200) + _samples("pole-b", now, 31, 3600)
    _insert(engine, samples)
    sessions = make_sessionmaker(engine)
    raw_left, expected = _expected(samples, now, POLICY)

    report = compact(sessions, POLICY, now=now, chunk=700)  # several passes, like a first run over months
    raw, stored = _stored(sessions)
    assert raw == raw_left
    _assert_matches(stored, expected)
    tiers: dict[int, int] = defaultdict(int)
    for _device, size, _start in stored:
        tiers[size] += 1
    # 31 days every 20 min (pole-a) and every hour (pole-b): the 5-minute tier keeps one row per
    # sample, the hourly tier one per 3 and 1 samples; only the last 48 h stay raw.
    assert report.raw_folded == len(samples) - raw_left
    assert report.five_minute_folded > 0 and report.passes >= 4
    hour_cut = POLICY.five_minute_cutoff(now)
    assert raw == 144 + 48
    assert tiers[300] == sum(1 for s in samples if hour_cut <= s.at < POLICY.raw_cutoff(now))
    assert 3 * tiers[3600] < 2 * sum(1 for s in samples if s.at < hour_cut)
    assert tiers[300] == report.five_minute_written - report.five_minute_folded
    assert tiers[3600] == report.hourly_written

    again = compact(sessions, POLICY, now=now)
    assert again.raw_folded == again.five_minute_folded == again.five_minute_written == 0
    assert _stored(sessions) == (raw, stored)
    with sessions() as s:
        lease = s.get(MaintenanceLease, "health-compaction")
        assert lease is not None and lease.last_result == {**Report(passes=2).__dict__}


def test_two_replicas_compacting_at_once_count_every_sample_once(engine: Engine, database: str) -> None:
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    policy = Policy(raw_hours=12, five_minute_days=1)
    samples = _samples("pole-a", now, 3, 120) + _samples("pole-b", now, 3, 300)
    _insert(engine, samples)
    raw_left, expected = _expected(samples, now, policy)

    other = make_engine(database)  # the second replica: its own engine and connection pool
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def replica(which: Engine, name: str) -> None:
        try:
            start.wait(timeout=10)
            compact(make_sessionmaker(which), policy, now=now, holder=name, chunk=500)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=replica, args=(e, n)) for e, n in ((engine, "one"), (other, "two"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    other.dispose()
    assert errors == []
    raw, stored = _stored(make_sessionmaker(engine))
    assert raw == raw_left
    _assert_matches(stored, expected)


def test_a_late_sample_is_added_to_its_bucket_not_replacing_it(engine: Engine) -> None:
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    samples = _samples("pole-a", now, 3, 100)
    _insert(engine, samples)
    sessions = make_sessionmaker(engine)
    compact(sessions, POLICY, now=now)
    # An outbox draining after an outage delivers a sample for a bucket already folded.
    late = Sample("pole-a", samples[0].at + timedelta(seconds=1), cpu=99.5, temperature=80.0, cameras_up=2)
    _insert(engine, [late])
    compact(sessions, POLICY, now=now)
    _raw, stored = _stored(sessions)
    _assert_matches(stored, _expected([*samples, late], now, POLICY)[1])


@contextlib.asynccontextmanager
async def _api(database: str, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings_for(None, database, **settings), run_ingest=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = bearer(add_token(database, "viewer"))
        async with httpx.AsyncClient(transport=transport, base_url="http://fleet", headers=headers) as client:
            yield client


async def test_the_history_endpoint_serves_each_span_from_the_right_tier(engine: Engine, database: str) -> None:
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    samples = _samples("pole-a", now, 31, 1800)
    _insert(engine, samples)
    compact(make_sessionmaker(engine), POLICY, now=now)

    async with _api(database, health_compact_interval_s=0) as http:

        async def page(**params: Any) -> dict[str, Any]:
            response = await http.get("/api/devices/pole-a/health/history", params=params)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        # The last 6 hours: raw samples, one per 30 min, min = max = avg.
        recent = await page(since=(now - timedelta(hours=6)).isoformat(), limit=500)
        assert recent["resolution"] == "raw" and len(recent["items"]) == 12
        first = recent["items"][0]
        assert first["samples"] == 1 and first["cpu_percent"]["min"] == first["cpu_percent"]["max"]

        # Three days: 5-minute buckets, from the 5-minute tier and, for the last 48 h, from raw
        # samples folded on the fly; walked page by page, no bucket twice and none missing.
        since = _bucket(now - timedelta(days=3), 300)
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            body = await page(
                since=since.isoformat(), until=now.isoformat(), limit=60, **({"cursor": cursor} if cursor else {})
            )
            assert body["resolution"] == "5m"
            items += body["items"]
            cursor = body["next"]
            if cursor is None:
                break
        assert (
            len({i["at"] for i in items}) == len(items) == len({_bucket(s.at, 300) for s in samples if s.at >= since})
        )
        assert sum(i["samples"] for i in items) == sum(1 for s in samples if s.at >= since)
        assert [i["at"] for i in items] == sorted(i["at"] for i in items)

        # The whole month: hourly buckets, every sample counted once across all three tiers.
        month = await page(since=(now - timedelta(days=32)).isoformat(), resolution="1h", limit=500)
        rest = await page(
            since=(now - timedelta(days=32)).isoformat(), resolution="1h", limit=500, cursor=month["next"]
        )
        hours = month["items"] + rest["items"]
        assert rest["next"] is None and sum(h["samples"] for h in hours) == len(samples)
        oldest = [s for s in samples if _bucket(s.at, 3600) == _bucket(samples[0].at, 3600)]
        assert hours[0]["cpu_percent"]["avg"] == pytest.approx(statistics.fmean(s.cpu for s in oldest))

        # Raw data for last week is gone: auto picks the tier that still holds it.
        week = _bucket(now - timedelta(days=7), 300)
        old = await page(since=week.isoformat(), until=(week + timedelta(hours=2)).isoformat())
        assert old["resolution"] == "5m" and len(old["items"]) == 4

        bad = await http.get(
            "/api/devices/pole-a/health/history", params={"since": now.isoformat(), "until": now.isoformat()}
        )
        assert bad.status_code == 422 and "until must be after since" in bad.json()["detail"]
        naive = await http.get("/api/devices/pole-a/health/history", params={"since": "2026-01-01T00:00:00"})
        assert naive.status_code == 422 and "time zone" in naive.json()["detail"]
        wrong = await http.get("/api/devices/pole-a/health/history", params={"cursor": "raw:1.1", "resolution": "1h"})
        assert wrong.status_code == 422 and "resolution=raw" in wrong.json()["detail"]
        missing = await http.get("/api/devices/pole-x/health/history")
        assert missing.status_code == 404


async def test_the_server_compacts_on_its_own(engine: Engine, database: str) -> None:
    now = datetime.now(timezone.utc)
    _insert(engine, _samples("pole-a", now, 3, 3600))
    async with _api(database, health_compact_interval_s=0.2):
        await wait_for(lambda: _stored(make_sessionmaker(engine))[0] == 48, what="the periodic compaction")


def test_compact_health_command(engine: Engine, database: str) -> None:
    now = datetime.now(timezone.utc)
    _insert(engine, _samples("pole-a", now, 2, 600))
    result = CliRunner().invoke(cli, ["compact-health", "--database-url", database, "--health-raw-hours", "24"])
    assert result.exit_code == 0, result.output
    assert "folded 144 raw samples into" in result.output
    assert _stored(make_sessionmaker(engine))[0] == 144
    refused = CliRunner().invoke(cli, ["compact-health", "--database-url", database, "--health-five-minute-days", "0"])
    assert refused.exit_code == 2 and "must be positive" in refused.output
