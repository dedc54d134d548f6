"""Each camera's loops: detect, track, events and rules on every frame; camera health a few times
a second. Each runs on its own, so one broken camera never stalls another and a slow detector
never delays the news that a lens is covered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone

from polewatch.protocol import Body, Detection, Snapshot

from ..capture.camera_health import CameraHealthChange, CameraHealthChecker
from ..capture.source import Frame, FrameSource
from ..config import AgentConfig
from ..inference.detector import Detection as Found
from ..inference.events import EventLifecycle, EventMessage
from ..inference.motion import MotionGatedDetector
from ..inference.rules import RuleEngine
from ..inference.tracker import IouTracker, TrackUpdate
from ..uplink.outbox import Outbox, OutboxError
from ..uplink.session import Uplink
from .camera_worker import CameraWorker
from .health_report import RateMeter
from .wire import _box, camera_health_body, rule_event, snapshot_body, snapshot_jpeg_budget

log = logging.getLogger("polewatch.agent")


class _CameraLoops:
    """The per-camera loops and what they put into the outbox (a part of `Agent`)."""

    # Set by Agent.__init__; declared here for the loops that read them.
    config: AgentConfig
    cameras: dict[str, CameraWorker]
    outbox: Outbox
    uplink: Uplink
    detect_rate: RateMeter
    events_accepted: int
    rule_events_accepted: int
    snapshots_accepted: int
    snapshots_dropped: int
    _health_since: dict[tuple[str, str], datetime]  # (camera, condition) -> since sent

    async def _watch(self, source: FrameSource) -> None:
        tracker = IouTracker()
        worker = self.cameras[source.camera_id]
        camera = worker.config
        events = EventLifecycle(self.config.detect.update_every_s, snapshots=camera.snapshots.enabled)
        rules = RuleEngine(camera.rules)
        counts_since = datetime.now(timezone.utc)  # the line counters start now: say so in every count
        last_index = 0
        next_due = time.monotonic()
        while True:
            frame = await asyncio.to_thread(source.latest, last_index, 1.0)
            if frame is None:
                # No picture: let tracks of a dead camera end instead of hanging open.
                now = time.monotonic()
                update = tracker.update([], now)
                await self._emit(source, events.step(update, now), None)
                await self._run_rules(source, rules, update, None, None, now, counts_since)
                continue
            last_index = frame.index
            interval = 1.0 / self.config.detect.fps  # read per frame: a config document may change it
            detector = worker.detector  # read per frame: a config document may reload the model
            try:
                if isinstance(detector, MotionGatedDetector):
                    detections = await asyncio.to_thread(detector.detect, frame.image, frame.mono_time)
                else:
                    detections = await asyncio.to_thread(detector.detect, frame.image)
            except Exception:  # a frame the model cannot take costs that frame, never the camera or the agent
                log.exception("detection failed on a frame", extra={"camera": source.camera_id})
                continue
            self.detect_rate.tick(time.monotonic())
            update = tracker.update(detections, frame.mono_time)
            messages = events.step(update, frame.mono_time, frame.image, detections, frame.wall_time)
            await self._emit(source, messages, frame)
            await self._run_rules(source, rules, update, detections, frame, frame.mono_time, counts_since)
            next_due = max(next_due + interval, time.monotonic() - interval)
            await asyncio.sleep(max(0.0, next_due - time.monotonic()))

    async def _watch_health(self, source: FrameSource, checker: CameraHealthChecker) -> None:
        """Sample the camera for its health checks (a few frames a second) and report what changes.

        The picture analysis runs in a worker thread like the detector; the frame rate is judged on
        every round, also while no frame arrives (a silent camera is the lowest frame rate of all).
        """
        interval = 1.0 / checker.config.sample_fps
        last_index = 0
        next_due = time.monotonic()
        while True:
            frame = await asyncio.to_thread(source.latest, last_index, max(interval, 0.5))
            changes = checker.report_fps(source.fps(), time.monotonic())
            if frame is not None:
                last_index = frame.index
                try:
                    changes += await asyncio.to_thread(checker.observe, frame.image, frame.mono_time)
                except Exception:
                    # A picture the analysis cannot handle must cost a log line, never the detection.
                    log.exception("camera health analysis failed on a frame", extra={"camera": source.camera_id})
            if changes:
                await self._emit_camera_health(changes)
            next_due = max(next_due + interval, time.monotonic() - interval)
            await asyncio.sleep(max(0.0, next_due - time.monotonic()))

    async def _emit_camera_health(self, changes: list[CameraHealthChange]) -> None:
        for change in changes:
            key = (change.camera_id, change.condition)
            since = self._health_since.pop(key, None) if change.phase == "end" else None
            body = camera_health_body(change, since)
            if change.phase == "start":
                self._health_since[key] = body.since
            message = await self.outbox.put(body)
            log.debug(
                "camera health accepted",
                extra={"message_id": message.id, "seq": message.seq, "camera": change.camera_id,
                       "condition": change.condition, "phase": change.phase},
            )
        self.uplink.notify()

    async def _emit(self, source: FrameSource, messages: list[EventMessage], frame: Frame | None) -> None:
        """Detection messages of one frame, each followed by its snapshot when it brings a better one."""
        if not messages:
            return
        width, height = source.width or 1, source.height or 1
        frame_time = datetime.fromtimestamp(frame.wall_time if frame else time.time(), timezone.utc)
        camera = self.cameras[source.camera_id].config
        bodies: list[Body] = []
        for message in messages:
            track = message.track
            bodies.append(
                Detection(
                    event_id=track.id,
                    phase=message.phase,
                    camera_id=source.camera_id,
                    label=track.label,
                    score=round(track.best_score, 4),
                    box=_box(track.box, width, height),
                    frame_time=frame_time,
                    frame_width=width,
                    frame_height=height,
                )
            )
            if message.picture is not None:
                try:
                    # Redaction and JPEG encoding cost ~5-10 ms: off the event loop.
                    bodies.append(
                        await asyncio.to_thread(
                            snapshot_body, camera, track.id, message.phase, track.label, message.picture,
                            snapshot_jpeg_budget(self.outbox.limits.max_message),
                        )
                    )
                except Exception:  # a picture that cannot be made must not cost the event itself
                    log.exception("snapshot failed", extra={"camera": source.camera_id, "event_id": track.id})
        # One call, one commit for everything this frame produced.
        try:
            accepted_all = await self.outbox.put_many(bodies)
        except OutboxError as exc:
            # A picture the outbox will not take (larger than its per-message limit) must never cost the
            # detections beside it, nor the agent: send those alone, and say what was dropped.
            pictures = [b for b in bodies if isinstance(b, Snapshot)]
            if not pictures:
                raise
            self.snapshots_dropped += len(pictures)
            log.warning("snapshots not queued; their detections are", extra={"camera": source.camera_id,
                                                                              "error": str(exc)})
            bodies = [b for b in bodies if not isinstance(b, Snapshot)]
            accepted_all = await self.outbox.put_many(bodies) if bodies else []
        for accepted, body in zip(accepted_all, bodies, strict=True):
            if isinstance(body, Snapshot):
                self.snapshots_accepted += 1
                log.debug("snapshot accepted", extra={"message_id": accepted.id, "event_id": body.event_id,
                                                      "bytes": len(body.jpeg) * 3 // 4})
                continue
            assert isinstance(body, Detection)
            self.events_accepted += 1
            fields = {"message_id": accepted.id, "seq": accepted.seq, "event_id": body.event_id,
                      "phase": body.phase, "label": body.label}
            if accepted.durable:
                # Logged after the commit: a test's ledger of what the agent promised to deliver.
                log.debug("detection accepted", extra=fields)
            else:
                log.warning("detection not on disk", extra={**fields, "status": accepted.status,
                                                            "storage": self.outbox.storage_state})

    async def _run_rules(
        self,
        source: FrameSource,
        rules: RuleEngine,
        update: TrackUpdate,
        detections: list[Found] | None,
        frame: Frame | None,
        now: float,
        counts_since: datetime,
    ) -> None:
        if not rules.rules:
            return
        size = None if frame is None else (int(frame.image.shape[1]), int(frame.image.shape[0]))
        try:
            hits = rules.update(update, detections, now, size)
        except Exception:  # a bug in one rule must not stop the camera's detections
            log.exception("camera rules failed on a frame", extra={"camera": source.camera_id})
            return
        if not hits or rules.size is None:
            return
        width, height = rules.size
        frame_time = datetime.fromtimestamp(frame.wall_time if frame else time.time(), timezone.utc)
        for hit in hits:
            body = rule_event(source.camera_id, hit, width, height, frame_time, counts_since)
            message = await self.outbox.put(body)
            self.rule_events_accepted += 1
            log.debug(
                "rule event accepted",
                extra={"message_id": message.id, "seq": message.seq, "rule_id": hit.rule_id, "event": hit.event,
                       "event_id": hit.event_id, "label": hit.label},
            )
        self.uplink.notify()
