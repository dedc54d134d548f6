"""The agent's main loop: cameras in, detections, rule events, camera health and health out.

Each camera has its own reader thread, its own detect loop and its own camera-health loop, so one
broken camera never stalls another and a slow detector never delays the news that a lens is
covered; the detector, the camera-health analysis and the outbox run in worker threads, so the event
loop (and with it the MQTT keepalive) never waits on a model, a picture or a disk. A camera's
rules run right after its tracker, on the same frame.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
from pydantic import BaseModel

from polewatch import __version__
from polewatch.protocol import Body, Box, CameraHealth, Detection, LineCounts, RuleEvent, Snapshot
from polewatch.protocol.commands import RestartCameraArgs, SetLogLevelArgs, SnapshotArgs

from .capture.camera_health import CameraHealthChange, CameraHealthChecker
from .capture.frame_metrics import Image
from .capture.source import Frame, FrameSource
from .clock import ClockWatch
from .config import AgentConfig, CameraConfig
from .health import HealthProbe
from .inference.detector import Detection as Found
from .inference.detector import Detector, load_detector
from .inference.events import EventLifecycle, EventMessage, Phase, Picture
from .inference.motion import MotionGatedDetector, MotionSettings
from .inference.rules import RuleEngine, RuleHit
from .inference.snapshot import Redaction, redact, snapshot_jpeg
from .inference.tracker import IouTracker, TrackUpdate
from .remote_config import ConfigRefused, RemoteConfigStore, effective_config
from .snapshot import write_snapshot
from .uplink.downlink import CommandRefused, Downlink
from .uplink.outbox import Outbox, OutboxError
from .uplink.session import Uplink

log = logging.getLogger("polewatch.agent")


def _box(box: tuple[float, float, float, float], width: int, height: int) -> Box:
    x1, y1, x2, y2 = box
    return Box(
        x1=min(max(x1 / width, 0.0), 1.0),
        y1=min(max(y1 / height, 0.0), 1.0),
        x2=min(max(x2 / width, 0.0), 1.0),
        y2=min(max(y2 / height, 0.0), 1.0),
    )


def _wall(mono: float) -> datetime:
    """A time.monotonic() reading as a UTC datetime (the box's clock may be wrong; it is what we have)."""
    return datetime.fromtimestamp(time.time() - (time.monotonic() - mono), timezone.utc)


def camera_health_body(change: CameraHealthChange, since: datetime | None = None) -> CameraHealth:
    """The wire form of a checker's change; the checker works in monotonic time, the wire in UTC.

    `since`: the wall time its start was sent with, so that an end names its start exactly (a
    second conversion would differ by the time between two clock readings, or by an NTP step).
    """
    return CameraHealth(
        camera_id=change.camera_id,
        condition=change.condition,
        phase=change.phase,
        since=since or _wall(change.since),
        until=None if change.until is None else _wall(change.until),
        variant=change.variant,
        value=None if change.value is None else round(change.value, 4),
        threshold=None if change.threshold is None else round(change.threshold, 4),
        detail=change.detail[:300],
    )


def load_reference(camera: CameraConfig) -> Image | None:
    """The camera's reference view, or None (logged) when it is not configured or cannot be read.

    An unreadable reference must not keep the pole from detecting: the checker then takes its first
    clear frame as the reference, and the log says so.
    """
    if camera.reference is None:
        return None
    image: Image | None = cv2.imread(str(camera.reference)) if Path(camera.reference).is_file() else None
    if image is None:
        log.error(
            "camera reference view cannot be read; the first clear frame will be the reference",
            extra={"camera": camera.id, "path": str(camera.reference)},
        )
    return image


def rule_event(
    camera_id: str, hit: RuleHit, width: int, height: int, frame_time: datetime, counts_since: datetime
) -> RuleEvent:
    """The wire form of a rule's event: box normalised like a detection's, counts only on crossings."""
    return RuleEvent(
        camera_id=camera_id,
        rule_id=hit.rule_id,
        rule_type=hit.rule_type,
        event=hit.event,
        event_id=hit.event_id,
        label=hit.label,
        box=_box(hit.box, width, height),
        frame_time=frame_time,
        frame_width=width,
        frame_height=height,
        direction=hit.direction,
        counts=None
        if hit.counts is None
        else {label: LineCounts(a_to_b=a, b_to_a=b) for label, (a, b) in hit.counts.items()},
        counts_since=None if hit.counts is None else counts_since,
        dwell_s=None if hit.dwell_s is None else round(hit.dwell_s, 2),
    )


def redaction_for(camera: CameraConfig, width: int, height: int) -> Redaction:
    privacy = camera.privacy
    return Redaction.from_polygons(
        privacy.masks,
        (width, height),
        normalised=privacy.units == "normalised",
        blur_labels=privacy.blur_labels,
        blur_part=privacy.blur_part,
    )


def snapshot_body(camera: CameraConfig, event_id: str, phase: Phase, label: str, picture: Picture) -> Snapshot:
    """Redact and encode an event's picture: the one way a frame's pixels become a message."""
    height, width = picture.image.shape[:2]
    settings = camera.snapshots
    data, jpeg_width, jpeg_height, done = snapshot_jpeg(
        picture.image,
        picture.detections,
        redaction_for(camera, width, height),
        max_bytes=settings.max_bytes,
        max_width=settings.max_width,
        quality=settings.quality,
    )
    return Snapshot(
        camera_id=camera.id,
        event_id=event_id,
        phase=phase,
        label=label,
        score=round(min(max(picture.score, 0.0), 1.0), 4),
        box=_box(picture.box, width, height),
        frame_time=datetime.fromtimestamp(picture.wall_time, timezone.utc),
        width=jpeg_width,
        height=jpeg_height,
        jpeg=base64.b64encode(data).decode("ascii"),
        redactions=done,
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


# How often the wall clock is compared with the monotonic clock (steps are seen within this).
CLOCK_SAMPLE_S = 2.0
# How long a snapshot waits for a frame from a camera that has none yet.
SNAPSHOT_WAIT_S = 5.0


class CameraWorker:
    """One camera's source, health checker and the tasks that read them, started and stopped together.

    A changed camera (a new URL, new rules, new thresholds) is replaced as a whole, and only that
    camera: the others keep their tracks, their counters and their health state.
    """

    def __init__(self, config: CameraConfig, detector: Detector) -> None:
        self.config = config
        self.source = FrameSource(
            config.id,
            config.url,
            loop=config.loop,
            transport=config.transport,
            stall_timeout_s=config.stall_timeout_s,
            failed_after_s=config.failed_after_s,
            expected_fps=config.health.low_fps.expected_fps,
        )
        self.checker = (
            CameraHealthChecker(config.id, config.health, reference=load_reference(config))
            if config.health.enabled
            else None
        )
        self.detector: Detector | MotionGatedDetector = detector
        self.use_detector(detector)
        self.tasks: list[asyncio.Task[None]] = []

    def use_detector(self, detector: Detector) -> None:
        """The shared detector, behind this camera's own motion gate where it has one (the gate holds the
        camera's background, so it is never shared)."""
        motion = self.config.motion
        if not motion.enabled:
            self.detector = detector
        elif isinstance(self.detector, MotionGatedDetector):
            self.detector.detector = detector
        else:
            self.detector = MotionGatedDetector(
                detector,
                MotionSettings(width=motion.width, threshold=motion.threshold, min_area=motion.min_area,
                               recheck_s=motion.recheck_s, alpha=motion.alpha),
            )

    @property
    def camera_id(self) -> str:
        return self.config.id


class Agent:
    def __init__(self, config: AgentConfig, *, detector: Detector | None = None) -> None:
        # `config` is the box's own file; a remote document applied earlier is laid over it.
        self.local_config = config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.remote = RemoteConfigStore(config.state_dir)
        self.config = self._with_remote(config)
        config = self.config
        self.outbox = Outbox(config.state_dir / "outbox.db", config.device_id, config=config.outbox)
        self._fixed_detector = detector
        self.detector = detector or self._load_detector(config)
        self.cameras: dict[str, CameraWorker] = {cam.id: CameraWorker(cam, self.detector) for cam in config.cameras}
        self.downlink = Downlink(config.device_id, self.local_config, self, self.outbox, store=self.remote)
        self.snapshots_accepted = 0
        self.uplink = Uplink(
            config.mqtt,
            self.outbox,
            device_id=config.device_id,
            agent_version=__version__,
            replay_rate=config.outbox.replay_rate,
            on_down=self.downlink.submit,
        )
        self.health = HealthProbe(__version__, config.state_dir)
        self.clock = ClockWatch()
        self.detect_rate = RateMeter()
        self._health_since: dict[tuple[str, str], datetime] = {}  # (camera, condition) -> since sent
        self._failed: asyncio.Future[None] | None = None  # fails with the error of a camera loop
        self._workers = 0
        self.events_accepted = 0
        self.rule_events_accepted = 0
        self.camera_starts: dict[str, int] = {}  # camera id -> times started (restarts show here)

    @property
    def sources(self) -> list[FrameSource]:
        return [worker.source for worker in self.cameras.values()]

    @property
    def checkers(self) -> dict[str, CameraHealthChecker]:
        return {cid: w.checker for cid, w in self.cameras.items() if w.checker is not None}

    def _with_remote(self, local: AgentConfig) -> AgentConfig:
        """The local file with the saved remote document over it; the file alone if that no longer fits."""
        if self.remote.applied is None:
            return local
        try:
            config = effective_config(local, self.remote.applied)
        except ConfigRefused as exc:
            log.error(
                "the saved remote config does not fit the local config file; running the file alone",
                extra={"version": self.remote.applied_version, "problem": str(exc)},
            )
            return local
        log.info("running the saved remote config", extra={"version": self.remote.applied_version})
        return config

    def _load_detector(self, config: AgentConfig) -> Detector:
        return load_detector(
            config.detect.model,
            score_threshold=config.detect.score_threshold,
            labels=config.detect.labels,
            threads=config.detect.threads,
            class_agnostic=config.detect.nms == "agnostic",
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then say goodbye to the broker and release the cameras."""
        loop = asyncio.get_running_loop()
        self._failed = loop.create_future()
        self._ensure_workers(len(self.cameras))
        for worker in self.cameras.values():
            self._start_camera(worker)
        log.info(
            "agent started",
            extra={
                "device": self.config.device_id,
                "cameras": len(self.cameras),
                "provider": self.detector.provider,
                "outbox_pending": self.outbox.pending_count(),
                "config_version": self.remote.applied_version,
            },
        )
        tasks = [
            asyncio.create_task(self.uplink.run(), name="uplink"),
            asyncio.create_task(self.downlink.run(), name="downlink"),
            asyncio.create_task(self._report_health(), name="health"),
            asyncio.create_task(self._watch_clock(), name="clock"),
        ]
        try:
            stopper: asyncio.Future[Any] = asyncio.create_task(stop.wait())
            watched: list[asyncio.Future[Any]] = [stopper, self._failed, *tasks]
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                error = None if finished is stopper else finished.exception()
                if error is not None:
                    raise error
        finally:
            await self.uplink.say_goodbye()
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)
            for worker in list(self.cameras.values()):
                await self._stop_camera(worker)
            self.outbox.close()
            log.info("agent stopped", extra={"device": self.config.device_id})

    # --- cameras: start, stop, restart ------------------------------------------------------------

    def _ensure_workers(self, cameras: int) -> None:
        """Each camera may hold a worker waiting for its next frame and another running the model, and
        the same two for its camera-health loop; more cameras need a bigger pool."""
        needed = 4 * cameras + 4
        if needed > self._workers:
            asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=needed))
            self._workers = needed

    def _start_camera(self, worker: CameraWorker) -> None:
        worker.source.start()
        cid = worker.camera_id
        worker.tasks = [asyncio.create_task(self._watch(worker.source), name=f"detect-{cid}")]
        if worker.checker is not None:
            worker.tasks.append(
                asyncio.create_task(self._watch_health(worker.source, worker.checker), name=f"camhealth-{cid}")
            )
        for task in worker.tasks:
            task.add_done_callback(self._camera_task_done)
        self.camera_starts[cid] = self.camera_starts.get(cid, 0) + 1
        log.info("camera started", extra={"camera": cid, "starts": self.camera_starts[cid]})

    def _camera_task_done(self, task: asyncio.Task[None]) -> None:
        # A camera loop only ends by cancellation; an error in one is a bug that must not go unseen.
        if task.cancelled() or self._failed is None or self._failed.done():
            return
        error = task.exception()
        if error is not None:
            self._failed.set_exception(error)

    async def _stop_camera(self, worker: CameraWorker) -> None:
        for task in worker.tasks:
            task.cancel()
        await asyncio.gather(*worker.tasks, return_exceptions=True)
        worker.tasks = []
        await asyncio.to_thread(worker.source.stop)
        for key in [k for k in self._health_since if k[0] == worker.camera_id]:
            # Conditions open on the old stream get no end: a newer start supersedes them (protocol.md).
            del self._health_since[key]

    async def _restart_camera(self, config: CameraConfig) -> None:
        old = self.cameras.get(config.id)
        if old is not None:
            await self._stop_camera(old)
        worker = CameraWorker(config, self.detector)
        self.cameras[config.id] = worker
        self._start_camera(worker)

    # --- what the server may ask (downlink.Controls) ----------------------------------------------

    async def apply_config(self, config: AgentConfig) -> list[str]:
        """Switch to a validated effective config, restarting only what changed; returns what changed.

        The detector is loaded first: if that fails nothing has changed yet and the old config runs on.
        """
        old = self.config
        changed: list[str] = []
        loop_settings = {"fps", "update_every_s"}  # read by the camera loops, not the model
        if self._fixed_detector is None and old.detect.model_dump(exclude=loop_settings) != config.detect.model_dump(
            exclude=loop_settings
        ):
            self.detector = await asyncio.to_thread(self._load_detector, config)
            for worker in self.cameras.values():
                worker.use_detector(self.detector)
            changed.append("detector")
        if old.detect.fps != config.detect.fps:
            changed.append("detect.fps")  # the detect loops read it on every frame
        restart_all = old.detect.update_every_s != config.detect.update_every_s  # read when a camera starts
        if restart_all:
            changed.append("detect.update_every_s")
        self.config = config
        new_cameras = {cam.id: cam for cam in config.cameras}
        for cid in [c for c in self.cameras if c not in new_cameras]:
            await self._stop_camera(self.cameras.pop(cid))
            changed.append(f"camera {cid} removed")
        self._ensure_workers(len(new_cameras))
        for cid, cam in new_cameras.items():
            current = self.cameras.get(cid)
            if current is not None and current.config == cam and not restart_all:
                continue
            await self._restart_camera(cam)
            changed.append(f"camera {cid} {'added' if current is None else 'restarted'}")
        if old.outbox != config.outbox:
            await asyncio.to_thread(self.outbox.reconfigure, config.outbox)
            self.uplink.replay_rate = config.outbox.replay_rate
            changed.append("outbox")
        if old.health_interval_s != config.health_interval_s:
            changed.append("health_interval_s")
        if old.log_level != config.log_level:
            logging.getLogger().setLevel(config.log_level)
            changed.append("log_level")
        return changed

    async def run_command(self, name: str, args: BaseModel, command_id: str) -> dict[str, Any]:
        if isinstance(args, RestartCameraArgs):
            worker = self._camera(args.camera_id)
            await self._restart_camera(worker.config)
            return {"camera_id": args.camera_id, "starts": self.camera_starts[args.camera_id]}
        if isinstance(args, SnapshotArgs):
            worker = self._camera(args.camera_id)
            frame = await asyncio.to_thread(worker.source.latest, 0, SNAPSHOT_WAIT_S)
            if frame is None:
                raise RuntimeError(f"camera {args.camera_id} delivered no frame within {SNAPSHOT_WAIT_S:g} s")
            # The same privacy as an event's snapshot: masks black, people blurred, before the file exists.
            detections = await asyncio.to_thread(self.detector.detect, frame.image)
            height, width = frame.image.shape[:2]
            redacted, _ = redact(frame.image, detections, redaction_for(worker.config, width, height))
            return await asyncio.to_thread(
                write_snapshot, frame, args.camera_id, self.config.state_dir / "snapshots", command_id,
                max_width=args.max_width, quality=args.quality, image=redacted,
            )
        if isinstance(args, SetLogLevelArgs):
            root = logging.getLogger()
            previous = logging.getLevelName(root.level)
            root.setLevel(args.level)
            log.warning("log level set by command", extra={"level": args.level, "previous": previous})
            return {"level": args.level, "previous": previous}
        raise CommandRefused(f"command {name!r} is not implemented by this agent")

    def _camera(self, camera_id: str) -> CameraWorker:
        worker = self.cameras.get(camera_id)
        if worker is None:
            raise CommandRefused(f"unknown camera {camera_id!r}; this box has {', '.join(self.cameras) or 'none'}")
        return worker

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
                            snapshot_body, camera, track.id, message.phase, track.label, message.picture
                        )
                    )
                except Exception:  # a picture that cannot be made must not cost the event itself
                    log.exception("snapshot failed", extra={"camera": source.camera_id, "event_id": track.id})
        # One call, one commit for everything this frame produced.
        for accepted, body in zip(await self.outbox.put_many(bodies), bodies, strict=True):
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
