"""How many cameras at which detect rate a box can carry: measured on the box, not guessed.

`polewatch agent bench` measures, per execution provider, the detector's latency and the CPU time
one detection costs (process CPU time, so the threads onnxruntime runs on count, and a GPU provider
that leaves the CPU idle is credited for it), plus what decoding one camera frame costs. Capacity is
then the smaller of two limits:

- CPU: per camera, `rate x detect CPU + camera fps x decode CPU` must fit in the cores with a
  quarter left for the uplink, the outbox and the system;
- throughput: the detector runs one frame at a time for all cameras, so cameras x rate must stay
  below 90 % of the frames per second it manages.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

HEADROOM = 0.75  # share of the cores the cameras may use
THROUGHPUT_SHARE = 0.9  # share of the detector's frames per second the cameras may use
RATES = (10.0, 5.0, 3.0, 2.0, 1.0)


@dataclass(frozen=True)
class ProviderResult:
    provider: str
    frames: int
    latency_ms_p50: float
    latency_ms_p95: float
    cpu_ms_per_frame: float  # process CPU time per detect(), all threads

    @property
    def fps(self) -> float:
        return 1000.0 / self.latency_ms_p50 if self.latency_ms_p50 > 0 else 0.0


@dataclass(frozen=True)
class Capacity:
    rate: float
    cameras: int
    limited_by: str  # "cpu" or "throughput"


def measure(
    detect: Callable[[npt.NDArray[Any]], object],
    frames: Sequence[npt.NDArray[Any]],
    provider: str,
    progress: Callable[[], None] | None = None,
) -> ProviderResult:
    """Run `detect` once per frame; latency percentiles and CPU time per frame."""
    latencies: list[float] = []
    cpu_start = time.process_time()
    for frame in frames:
        started = time.perf_counter()
        detect(frame)
        latencies.append((time.perf_counter() - started) * 1000.0)
        if progress is not None:
            progress()
    cpu_ms = (time.process_time() - cpu_start) * 1000.0 / max(1, len(frames))
    return ProviderResult(
        provider,
        len(frames),
        float(np.percentile(latencies, 50)),
        float(np.percentile(latencies, 95)),
        cpu_ms,
    )


def capacity(result: ProviderResult, rate: float, *, cores: int, camera_fps: float, decode_cpu_ms: float) -> Capacity:
    """Cameras this box carries at `rate` detections per second each."""
    budget_ms = cores * 1000.0 * HEADROOM  # CPU milliseconds per second
    per_camera_ms = rate * result.cpu_ms_per_frame + camera_fps * decode_cpu_ms
    by_cpu = math.floor(budget_ms / per_camera_ms) if per_camera_ms > 0 else 10_000
    by_throughput = math.floor(result.fps * THROUGHPUT_SHARE / rate) if rate > 0 else 10_000
    if by_cpu <= by_throughput:
        return Capacity(rate, max(0, by_cpu), "cpu")
    return Capacity(rate, max(0, by_throughput), "throughput")


def recommend_rate(
    result: ProviderResult, cameras: int, *, cores: int, camera_fps: float, decode_cpu_ms: float
) -> float | None:
    """The highest of RATES at which `cameras` cameras fit, or None when not even 1 fps does."""
    for rate in RATES:
        if capacity(result, rate, cores=cores, camera_fps=camera_fps, decode_cpu_ms=decode_cpu_ms).cameras >= cameras:
            return rate
    return None
