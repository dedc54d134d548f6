"""Health history storage: what downsampling saves for a fleet, measured on SQLite.

Inserts real health bodies (the agent's Health model, two cameras, outbox and clock sections) for
a few devices at 1 sample / 10 s, measures the bytes per raw row (table + indexes, after VACUUM),
compacts everything into 5-minute buckets and measures the bytes per bucket row, then projects a
fleet: `--devices` x `--days` at 1 sample / 10 s, kept raw vs kept with the default policy (48 h
raw, 5-minute buckets to 30 days, hourly after).

    python bench/health_history.py [--devices 100] [--days 30] [--sample-hours 6]

The last line is machine-readable:
    RESULT health_history raw_rows=... raw_mb=... kept_rows=... kept_mb=... ratio=...
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from uuid import uuid4

from rich.console import Console
from rich.table import Table
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from polewatch.fleet_server.db import make_engine, make_sessionmaker, upgrade
from polewatch.fleet_server.health_compaction import compact
from polewatch.fleet_server.health_rollup import Policy
from polewatch.fleet_server.models import Device, HealthSample
from polewatch.protocol import CameraStatus, ClockStatus, Health, OutboxStatus

EVERY_S = 10


def body(i: int) -> dict[str, object]:
    health = Health(
        agent_version="0.4.2", uptime_s=3600 + i * EVERY_S, cpu_percent=20 + i % 50, memory_percent=40.5,
        memory_rss_bytes=310_000_000, disk_percent=33.3, disk_free_bytes=21_000_000_000, temperature_c=51.5 + i % 7,
        cameras=[CameraStatus(camera_id=f"cam{n}", connected=True, fps=12.4, width=1920, height=1080, source="rtsp",
                              state="connected", expected_fps=12.5, quality="good") for n in (1, 2)],
        inference_ms=38.2, detect_fps=5.1, provider="CPUExecutionProvider", outbox_pending=0,
        outbox=OutboxStatus(disk_bytes=1_200_000, max_bytes=500_000_000),
        clock=ClockStatus(synchronised=True, max_error_s=0.01, offset_s=1.7e9, boot_id=str(uuid4())),
        config_version=7,
    )  # fmt: skip
    return health.model_dump(mode="json")


def table_bytes(path: Path, tables: tuple[str, ...]) -> int:
    """Bytes of the tables and their indexes (dbstat), after VACUUM."""
    with sqlite3.connect(path) as conn:
        conn.execute("VACUUM")
        marks = ",".join("?" * len(tables))
        names = [r[0] for r in conn.execute(f"SELECT name FROM sqlite_master WHERE tbl_name IN ({marks})", tables)]
        marks = ",".join("?" * len(names))
        return int(
            conn.execute(f"SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name IN ({marks})", names).fetchone()[0]
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100, help="fleet size to project (default 100)")
    parser.add_argument("--days", type=float, default=30, help="days of history to project (default 30)")
    parser.add_argument("--sample-hours", type=float, default=6, help="hours per device measured (default 6)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-health-") as tmp:
        path = Path(tmp) / "fleet.db"
        engine = make_engine(f"sqlite:///{path}")
        upgrade(engine)
        now = datetime.now(timezone.utc)
        per_device = int(args.sample_hours * 3600 / EVERY_S)
        start = now - timedelta(days=3)  # all old enough to fold
        with engine.begin() as conn:
            for d in range(4):
                conn.execute(insert(Device).values(device_id=f"pole-{d}", first_seen=now, last_seen=now, online=True))
                conn.execute(insert(HealthSample), [
                    {"message_id": str(uuid4()), "device_id": f"pole-{d}", "seq": i,
                     "sent_at": start + timedelta(seconds=i * EVERY_S), "received_at": now, "body": body(i)}
                    for i in range(per_device)
                ])  # fmt: skip
        raw_rows = 4 * per_device
        raw_per_row = table_bytes(path, ("health_samples",)) / raw_rows
        began = time.perf_counter()
        report = compact(make_sessionmaker(engine), Policy(raw_hours=1, five_minute_days=30), now=now)
        seconds = time.perf_counter() - began
        engine.dispose()
        bucket_per_row = table_bytes(path, ("health_rollups",)) / report.five_minute_written

    policy = Policy()
    raw_total = int(args.devices * args.days * 86_400 / EVERY_S)
    raw_days = min(args.days, policy.raw_hours / 24)
    five_days = min(args.days, policy.five_minute_days) - raw_days
    hour_days = max(0.0, args.days - policy.five_minute_days)
    kept_raw = int(args.devices * raw_days * 86_400 / EVERY_S)
    kept_buckets = int(args.devices * (five_days * 288 + hour_days * 24))
    before_b = raw_total * raw_per_row
    after_b = kept_raw * raw_per_row + kept_buckets * bucket_per_row

    table = Table(title=f"{args.devices} devices x {args.days:g} days at 1 sample / {EVERY_S} s (SQLite)")
    for column in ("", "rows", "MB"):
        table.add_column(column, justify="right" if column else "left")
    table.add_row("all raw", f"{raw_total:,}", f"{before_b / 1e6:,.0f}")
    table.add_row(f"{policy.raw_hours:g} h raw + 5-min/hourly buckets", f"{kept_raw + kept_buckets:,}",
                  f"{after_b / 1e6:,.0f}")  # fmt: skip
    Console().print(table)
    rate = report.raw_folded / seconds
    print(f"measured: {raw_per_row:.0f} B per raw row, {bucket_per_row:.0f} B per bucket row; "
          f"compaction folded {report.raw_folded} samples in {seconds:.2f} s ({rate:,.0f}/s)")  # fmt: skip
    print(
        f"RESULT health_history raw_rows={raw_total} raw_mb={before_b / 1e6:.0f} kept_rows={kept_raw + kept_buckets} "
        f"kept_mb={after_b / 1e6:.0f} ratio={before_b / after_b:.1f}"
    )


if __name__ == "__main__":
    main()
