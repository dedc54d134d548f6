"""The metrics of a health message, and their exact, mergeable summary over a time bucket.

A bucket keeps per metric the count, sum, min and max of the samples that carried it. All four
merge exactly (counts and sums add, min of mins, max of maxes), so folding raw samples into a
5-minute bucket, 5-minute buckets into an hour, or a late sample into a bucket already written all
give the same numbers as a direct computation over the raw samples; the average is sum / count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

# What the history shows of a health message (protocol/messages.py Health): the box's own load,
# the detector's pace, and its cameras. Camera fps is the mean of the cameras that deliver frames.
METRICS: tuple[str, ...] = (
    "cpu_percent",
    "memory_percent",
    "disk_percent",
    "temperature_c",
    "detect_fps",
    "inference_ms",
    "camera_fps",
    "cameras_up",
    "cameras_down",
)
FIVE_MINUTES = 300
ONE_HOUR = 3600

Stat = dict[str, float]  # {"n", "sum", "min", "max"}
Stats = dict[str, Stat]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def metrics_of(body: Mapping[str, Any]) -> dict[str, float]:
    """The metric values of one stored health body; a metric the box did not send is left out."""
    values: dict[str, float] = {}
    for key in ("cpu_percent", "memory_percent", "disk_percent", "temperature_c", "detect_fps", "inference_ms"):
        number = _number(body.get(key))
        if number is not None:
            values[key] = number
    cameras = [c for c in body.get("cameras") or [] if isinstance(c, Mapping)]
    if cameras:
        up = [c for c in cameras if c.get("connected") is True]
        values["cameras_up"] = float(len(up))
        values["cameras_down"] = float(len(cameras) - len(up))
        fps = [f for f in (_number(c.get("fps")) for c in up) if f is not None]
        if fps:
            values["camera_fps"] = sum(fps) / len(fps)
    return values


def stats_of(values: Iterable[Mapping[str, float]]) -> tuple[int, Stats]:
    """Sample count and per-metric statistics of some samples' metric values."""
    samples = 0
    stats: Stats = {}
    for one in values:
        samples += 1
        for name, value in one.items():
            stat = stats.get(name)
            if stat is None:
                stats[name] = {"n": 1.0, "sum": value, "min": value, "max": value}
            else:
                stat["n"] += 1
                stat["sum"] += value
                stat["min"] = min(stat["min"], value)
                stat["max"] = max(stat["max"], value)
    return samples, stats


def merge(into: Stats, other: Mapping[str, Mapping[str, float]]) -> Stats:
    """`into` with `other` folded in (a new dict; neither argument is changed)."""
    merged: Stats = {name: dict(stat) for name, stat in into.items()}
    for name, stat in other.items():
        mine = merged.get(name)
        if mine is None:
            merged[name] = {k: float(stat[k]) for k in ("n", "sum", "min", "max")}
        else:
            mine["n"] += stat["n"]
            mine["sum"] += stat["sum"]
            mine["min"] = min(mine["min"], stat["min"])
            mine["max"] = max(mine["max"], stat["max"])
    return merged


def bucket_start(at: datetime, bucket_s: int) -> datetime:
    """The start of the UTC bucket of length `bucket_s` that holds `at`."""
    epoch = int(at.timestamp())
    return datetime.fromtimestamp(epoch - epoch % bucket_s, timezone.utc)


@dataclass(frozen=True)
class Policy:
    """How long each tier keeps its resolution."""

    raw_hours: float = 48.0
    five_minute_days: float = 30.0

    def __post_init__(self) -> None:
        if self.raw_hours <= 0 or self.five_minute_days <= 0:
            raise ValueError("raw_hours and five_minute_days must be positive")
        if self.five_minute_days * 24 < self.raw_hours:
            raise ValueError(
                f"five_minute_days ({self.five_minute_days}) must cover at least raw_hours ({self.raw_hours} h): "
                "samples are rolled into 5-minute buckets before hourly ones"
            )

    def raw_cutoff(self, now: datetime) -> datetime:
        """Raw samples sent before this are folded; aligned so no 5-minute bucket is split."""
        return bucket_start(now - timedelta(hours=self.raw_hours), FIVE_MINUTES)

    def five_minute_cutoff(self, now: datetime) -> datetime:
        return bucket_start(now - timedelta(days=self.five_minute_days), ONE_HOUR)
