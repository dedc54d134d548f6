"""Check that a box can carry the agent before it is bolted to a pole.

A full SD card, a clock years off (TLS fails, timestamps lie) or a box without a working inference
provider are found at the pole in a minute, instead of by the command centre weeks later.
"""

from __future__ import annotations

import importlib.util
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

MIN_FREE_DISK = 2 * 1024**3
MIN_MEMORY = 1024**3
# A clock before this build's date is certainly wrong (no RTC battery, no NTP yet).
EARLIEST_PLAUSIBLE_TIME = 1_790_000_000  # 2026-09


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def check_box(state_dir: Path) -> list[Check]:
    checks: list[Check] = []
    probe_dir = state_dir if state_dir.exists() else Path(state_dir.anchor or "/")
    free = shutil.disk_usage(probe_dir).free
    checks.append(
        Check(
            "disk",
            free >= MIN_FREE_DISK,
            f"{free / 1024**3:.1f} GiB free at {probe_dir}",
            "free space or use a larger SD card (2 GiB is the minimum for the outbox)",
        )
    )
    total = psutil.virtual_memory().total
    checks.append(
        Check("memory", total >= MIN_MEMORY, f"{total / 1024**3:.1f} GiB", "the agent needs at least 1 GiB of RAM")
    )
    now = time.time()
    checks.append(
        Check(
            "clock",
            now >= EARLIEST_PLAUSIBLE_TIME,
            time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now)),
            "set the clock or enable NTP (timedatectl set-ntp true)",
        )
    )
    temps: dict[str, list[Any]] = getattr(psutil, "sensors_temperatures", dict)()
    readings = [t.current for entries in temps.values() for t in entries if t.current]
    hottest = max(readings) if readings else None
    checks.append(
        Check(
            "temperature",
            hottest is None or hottest < 80,
            "no sensor" if hottest is None else f"{hottest:.0f} °C",
            "the box is too hot: check the enclosure's ventilation and the heat sink",
        )
    )
    if importlib.util.find_spec("onnxruntime") is None:
        checks.append(
            Check(
                "inference", False, "onnxruntime is not installed", "install the agent: pip install 'polewatch[agent]'"
            )
        )
    else:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
        checks.append(
            Check(
                "inference",
                bool(providers),
                ", ".join(providers) or "no provider",
                "reinstall onnxruntime for this platform",
            )
        )
    return checks
