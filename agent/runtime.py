"""The agent's main loop: cameras in, detections and health out through the outbox.

Each camera has its own reader thread and its own detect loop, so one broken camera never stalls
another; the detector and the outbox run in worker threads, so the event loop (and with it the MQTT
keepalive) never waits on a model or a disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from polewatch import __version__
from polewatch.protocol import Box, Detection

from .capture.source import Frame, FrameSource
from .config import AgentConfig
from .health import HealthProbe
from .inference.detector import Detector, load_detector
from .inference.tracker import IouTracker, Track, TrackUpdate
from .uplink.outbox import Outbox
from .uplink.session import Uplink

log = logging.getLogger("polewatch.agent")


def _box(track: Track, width: int, height: int) -> Box:
    x1, y1, x2, y2 = track.box
    return Box(
        x1=min(max(x1 / width, 0.0), 1.0),
        y1=min(max(y1 / height, 0.0), 1.0),
        x2=min(max(x2 / width, 0.0), 1.0),
        y2=min(max(y2 / height, 0.0), 1.0),
    )


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


class Agent:
    def __init__(self, config: AgentConfig, *, detector: Detector | None = None) -> None:
        self.config = config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(config.state_dir / "outbox.db", config.device_id, config=config.outbox)
        self.detector = detector or load_detector(
            config.detect.model,
            score_threshold=config.detect.score_threshold,
            labels=config.detect.labels,
            threads=config.detect.threads,
        )
        self.sources = [FrameSource(cam.id, cam.url, loop=cam.loop) for cam in config.cameras]
        self.uplink = Uplink(
            config.mqtt,
            self.outbox,
            device_id=config.device_id,
            agent_version=__version__,
            replay_rate=config.outbox.replay_rate,
        )
        self.health = HealthProbe(__version__, config.state_dir)
        self.detect_rate = RateMeter()
        self.events_accepted = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then say goodbye to the broker and release the cameras."""
        loop = asyncio.get_running_loop()
        # Each camera may hold a worker waiting for its next frame and another running the model.
        loop.set_default_executor(ThreadPoolExecutor(max_workers=2 * len(self.sources) + 4))
        for source in self.sources:
            source.start()
        log.info(
            "agent started",
            extra={
                "device": self.config.device_id,
                "cameras": len(self.sources),
                "provider": self.detector.provider,
                "outbox_pending": self.outbox.pending_count(),
            },
        )
        tasks = [asyncio.create_task(self.uplink.run(), name="uplink")]
        tasks += [asyncio.create_task(self._watch(s), name=f"detect-{s.camera_id}") for s in self.sources]
        tasks.append(asyncio.create_task(self._report_health(), name="health"))
        try:
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]  # checked not None above
        finally:
            await self.uplink.say_goodbye()
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)
            for source in self.sources:
                source.stop()
            self.outbox.close()
            log.info("agent stopped", extra={"device": self.config.device_id})

    async def _watch(self, source: FrameSource) -> None:
        interval = 1.0 / self.config.detect.fps
        tracker = IouTracker()
        last_index = 0
        next_due = time.monotonic()
        while True:
            frame = await asyncio.to_thread(source.latest, last_index, 1.0)
            if frame is None:
                # No picture: let tracks of a dead camera end instead of hanging open.
                await self._emit(source, tracker.update([], time.monotonic()), None)
                continue
            last_index = frame.index
            detections = await asyncio.to_thread(self.detector.detect, frame.image)
            self.detect_rate.tick(time.monotonic())
            await self._emit(source, tracker.update(detections, frame.mono_time), frame)
            next_due = max(next_due + interval, time.monotonic() - interval)
            await asyncio.sleep(max(0.0, next_due - time.monotonic()))

    async def _emit(self, source: FrameSource, update: TrackUpdate, frame: Frame | None) -> None:
        started, ended = update.started, update.ended
        if not started and not ended:
            return
        width, height = source.width or 1, source.height or 1
        frame_time = datetime.fromtimestamp(frame.wall_time if frame else time.time(), timezone.utc)
        bodies = [
            Detection(
                event_id=track.id,
                phase="start" if phase == "start" else "end",
                camera_id=source.camera_id,
                label=track.label,
                score=round(track.best_score, 4),
                box=_box(track, width, height),
                frame_time=frame_time,
                frame_width=width,
                frame_height=height,
            )
            for phase, tracks in (("start", started), ("end", ended))
            for track in tracks
        ]
        # One call, one commit for everything this frame produced.
        for accepted, body in zip(await self.outbox.put_many(bodies), bodies, strict=True):
            self.events_accepted += 1
            fields = {"message_id": accepted.id, "seq": accepted.seq, "event_id": body.event_id,
                      "phase": body.phase, "label": body.label}
            if accepted.durable:
                # Logged after the commit: a test's ledger of what the agent promised to deliver.
                log.debug("detection accepted", extra=fields)
            else:
                log.warning("detection not on disk", extra={**fields, "status": accepted.status,
                                                            "storage": self.outbox.storage_state})

    async def _report_health(self) -> None:
        while True:
            now = time.monotonic()
            body = self.health.snapshot(
                self.sources,
                inference_ms=self.detector.mean_inference_ms,
                detect_fps=self.detect_rate.rate(now),
                outbox=await asyncio.to_thread(self.outbox.status),
            )
            await self.outbox.put(body)
            await asyncio.sleep(self.config.health_interval_s)
