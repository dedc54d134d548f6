"""One camera's parts: its frame source, its health checker, its detector behind its motion gate."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import cv2

from ..capture.camera_health import CameraHealthChecker
from ..capture.frame_metrics import Image
from ..capture.source import FrameSource
from ..config import CameraConfig
from ..inference.detector import Detector
from ..inference.motion import MotionGatedDetector, MotionSettings

log = logging.getLogger("polewatch.agent")


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
