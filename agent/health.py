"""What the box reports about itself every few seconds.

The command centre cannot walk to a pole to see why it is quiet; this snapshot is how it tells a
hot, full or overloaded box from a dead camera. psutil reads the numbers portably (Pi, Jetson, x86).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import psutil

from polewatch.protocol import CameraStatus, ClockStatus, Health, OutboxStatus

from .capture.source import FrameSource


def soc_temperature() -> float | None:
    """The hottest reading of the SoC sensors, or None where the box has none (most VMs)."""
    read = getattr(psutil, "sensors_temperatures", None)
    if read is None:
        return None
    try:
        sensors = read()
    except OSError:
        return None
    readings = [entry.current for entries in sensors.values() for entry in entries if entry.current]
    return max(readings) if readings else None


def waiting(outbox: OutboxStatus) -> int:
    """Messages waiting for the broker, on disk and in memory (the older `outbox_pending` field)."""
    p = outbox.pending
    return p.telemetry + p.snapshot + p.health_event + p.alert + outbox.held_in_memory


def camera_status(cam: FrameSource) -> CameraStatus:
    now = time.monotonic()
    expected = cam.expected_fps
    error = cam.last_error if cam.state != "connected" else None
    return CameraStatus(
        camera_id=cam.camera_id,
        connected=cam.connected,
        fps=round(cam.fps(), 2),
        frames_dropped=cam.frames_dropped,
        width=cam.width,
        height=cam.height,
        source=cam.kind,
        state=cam.state,
        expected_fps=None if expected is None else round(expected, 2),
        reconnects=cam.reconnects,
        reconnects_1h=cam.reconnect_log.count(now),
        stalls_1h=cam.stall_log.count(now),
        quality=cam.quality(),
        error=None if error is None else error.reason[:40],
        error_detail=None if error is None else error.detail[:300],
    )


class HealthProbe:
    def __init__(self, agent_version: str, state_dir: Path) -> None:
        self.agent_version = agent_version
        self.state_dir = state_dir
        self.started = time.monotonic()
        self._process = psutil.Process()
        psutil.cpu_percent(interval=None)  # prime: the first call has nothing to compare with

    def snapshot(
        self,
        cameras: Iterable[FrameSource],
        *,
        inference_ms: float | None,
        detect_fps: float | None,
        outbox: OutboxStatus,
        provider: str | None = None,
        clock: ClockStatus | None = None,
        config_version: int | None = None,
    ) -> Health:
        disk = psutil.disk_usage(str(self.state_dir))
        memory = psutil.virtual_memory()
        return Health(
            agent_version=self.agent_version,
            uptime_s=time.monotonic() - self.started,
            cpu_percent=psutil.cpu_percent(interval=None),
            memory_percent=memory.percent,
            memory_rss_bytes=self._process.memory_info().rss,
            disk_percent=disk.percent,
            disk_free_bytes=disk.free,
            temperature_c=soc_temperature(),
            cameras=[camera_status(cam) for cam in cameras],
            inference_ms=None if inference_ms is None else round(inference_ms, 2),
            detect_fps=None if detect_fps is None else round(detect_fps, 2),
            provider=provider,
            outbox_pending=waiting(outbox),
            outbox=outbox,
            clock=clock,
            config_version=config_version,
        )
