"""The `Agent`: builds the parts, runs them until told to stop, and does what the server asks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from polewatch import __version__
from polewatch.protocol.commands import RestartCameraArgs, SetLogLevelArgs, SnapshotArgs

from ..capture.camera_health import CameraHealthChecker
from ..clock import ClockWatch
from ..config import AgentConfig, CameraConfig
from ..endpoint import EndpointStore
from ..health import HealthProbe
from ..inference.detector import Detector, load_detector
from ..inference.snapshot import redact
from ..remote_config import ConfigRefused, RemoteConfigStore, effective_config
from ..snapshot import write_snapshot
from ..uplink.credentials import CredentialRotator, effective_mqtt
from ..uplink.downlink import CommandRefused, Downlink
from ..uplink.journal import CommandJournal
from ..uplink.move import Mover
from ..uplink.outbox import Outbox
from ..uplink.session import Uplink
from .camera_loops import _CameraLoops
from .camera_worker import CameraWorker
from .health_report import RateMeter, _HealthReporting
from .wire import redaction_for

log = logging.getLogger("polewatch.agent")


# How long a snapshot waits for a frame from a camera that has none yet.
SNAPSHOT_WAIT_S = 5.0


class Agent(_CameraLoops, _HealthReporting):
    """The agent on one pole: its cameras, detector, outbox, uplink and downlink, run together.

    The per-camera loops and the health report are its parts in camera_loops.py and
    health_report.py; what stays here is starting and stopping them, and what the server may ask.
    """

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
        self.endpoints = EndpointStore(config.state_dir)
        journal = CommandJournal(config.state_dir)
        self.snapshots_accepted = 0
        self.snapshots_dropped = 0
        self.uplink = Uplink(
            self.endpoints.effective(effective_mqtt(config)),
            self.outbox,
            device_id=config.device_id,
            agent_version=__version__,
            replay_rate=config.outbox.replay_rate,
            on_down=self._down,
        )
        self.mover = Mover(
            config.device_id, config.mqtt, self.endpoints, self.uplink, self.outbox, journal,
            key_file=config.trust.command_key if config.trust else None, fallback_after_s=config.move.fallback_after_s,
        )  # fmt: skip
        self.downlink = Downlink(config.device_id, self.local_config, self, self.outbox, store=self.remote,
                                 journal=journal, mover=self.mover)  # fmt: skip
        self.downlink.credentials = CredentialRotator(config, self.uplink)
        self.health = HealthProbe(__version__, config.state_dir)
        self.clock = ClockWatch()
        self.detect_rate = RateMeter()
        self._health_since: dict[tuple[str, str], datetime] = {}  # (camera, condition) -> since sent
        self._failed: asyncio.Future[None] | None = None  # fails with the error of a camera loop
        self._workers = 0
        self.events_accepted = 0
        self.rule_events_accepted = 0
        self.camera_starts: dict[str, int] = {}  # camera id -> times started (restarts show here)

    def _down(self, topic: str, payload: bytes) -> None:
        self.downlink.submit(topic, payload)

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
        self.mover.start()
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
            await self.mover.stop()
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
