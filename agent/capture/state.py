"""A camera's connection state as the command centre sees it, and the grade of its connection.

The frame rate alone cannot tell an operator whether a camera is worth a visit: a camera that drops
its stream every few minutes may still average 9 fps. So each source keeps a log of its
interruptions (reconnects and stalls) for the last hour, and the grade weighs them with the frame
rate it delivers against the rate it should.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Literal

State = Literal["connecting", "connected", "reconnecting", "failed", "ended"]
Quality = Literal["good", "fair", "poor", "down"]

HOUR_S = 3600.0

# Why a source could not be opened or was lost; the first four are not fixed by waiting, so the
# camera is `failed` at once (someone has to act), the rest only after `failed_after_s`.
PERMANENT_REASONS = ("unauthorized", "not_found", "no_such_file", "no_such_device")


@dataclass(frozen=True)
class Grade:
    """Thresholds of the connection grade: a camera is `good` when it meets both, `fair` when it
    meets the looser pair, `poor` when connected but worse."""

    good_fps_ratio: float = 0.9
    good_interruptions: int = 1
    fair_fps_ratio: float = 0.6
    fair_interruptions: int = 6


def grade(
    state: State,
    fps: float,
    expected_fps: float | None,
    interruptions_1h: int,
    thresholds: Grade = Grade(),  # frozen dataclass: a safe default
) -> Quality:
    """The connection quality: `down` unless connected, then by frame rate and interruptions.

    Without an expected rate (nothing configured, the stream does not say) the rate cannot count
    against the camera; interruptions still do.
    """
    if state != "connected":
        return "down"
    ratio = 1.0 if not expected_fps else fps / expected_fps
    if ratio >= thresholds.good_fps_ratio and interruptions_1h <= thresholds.good_interruptions:
        return "good"
    if ratio >= thresholds.fair_fps_ratio and interruptions_1h <= thresholds.fair_interruptions:
        return "fair"
    return "poor"


class EventLog:
    """Monotonic times of one kind of event, kept for an hour; thread-safe (reader thread writes,
    health report reads)."""

    def __init__(self, window_s: float = HOUR_S) -> None:
        self.window_s = window_s
        self.total = 0
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def add(self, now: float) -> None:
        with self._lock:
            self.total += 1
            self._times.append(now)
            self._trim(now)

    def count(self, now: float) -> int:
        with self._lock:
            self._trim(now)
            return len(self._times)

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()
