"""The periodic health report: what the outbox gave up, then the box's health, and the clock watch."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from ..capture.source import FrameSource
from ..clock import ClockWatch
from ..config import AgentConfig
from ..health import HealthProbe
from ..inference.detector import Detector
from ..remote_config import RemoteConfigStore
from ..uplink.outbox import Outbox, OutboxError
from .camera_worker import CameraWorker

log = logging.getLogger("polewatch.agent")


class RateMeter:
    """Events per second over a sliding window, for the health report."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()

    def tick(self, now: float) -> None:
        self._times.append(now)
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()

    def rate(self, now: float) -> float:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()
        return len(self._times) / self.window_s


# How often the wall clock is compared with the monotonic clock (steps are seen within this).
CLOCK_SAMPLE_S = 2.0


class _HealthReporting:
    """The agent's health loop and clock watch (a part of `Agent`)."""

    # Set by Agent.__init__; declared here for the report that reads them.
    config: AgentConfig
    cameras: dict[str, CameraWorker]
    outbox: Outbox
    health: HealthProbe
    clock: ClockWatch
    detector: Detector
    detect_rate: RateMeter
    remote: RemoteConfigStore

    @property
    def sources(self) -> list[FrameSource]:
        return [worker.source for worker in self.cameras.values()]

    async def _report_health(self) -> None:
        while True:
            # What the outbox gave up since the last report goes first, so the server can tell the
            # gaps it leaves from messages still on their way (docs/outbox.md, "Gap accounting").
            try:
                report = await self.outbox.report_given_up_async()
            except OutboxError as exc:
                log.warning("could not queue the report of given-up messages", extra={"error": str(exc)})
            else:
                if report is not None:
                    log.info("given-up report queued", extra={"seq": report.seq, "status": report.status})
            now = time.monotonic()
            body = self.health.snapshot(
                self.sources,
                inference_ms=self.detector.mean_inference_ms,
                detect_fps=self.detect_rate.rate(now),
                outbox=await asyncio.to_thread(self.outbox.status),
                provider=self.detector.provider,
                clock=await asyncio.to_thread(self.clock.status),
                config_version=self.remote.applied_version,
            )
            await self.outbox.put(body)
            await asyncio.sleep(self.config.health_interval_s)

    async def _watch_clock(self) -> None:
        while True:
            await asyncio.sleep(CLOCK_SAMPLE_S)
            self.clock.sample()
