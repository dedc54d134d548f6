"""Motion gating (Frigate's idea): the detector runs only when something in the picture moved.

A street camera at night, or a quiet side street at noon, shows the same picture for minutes; running
a neural network on it again and again costs a Pi-class CPU for nothing. A cheap motion check (a
grey, downscaled frame against a running background: ~1 ms) decides whether the detector runs:

- motion: the detector runs on the frame, as without gating;
- no motion: the last detections are handed on unchanged, because nothing in the picture changed,
  so the tracker keeps stationary objects (a parked car, a bag left behind) alive instead of ending
  their events and starting new ones;
- every `recheck_s` the detector runs anyway, so that a slow change the motion check misses (dusk,
  an object that stopped long ago) is seen.

Moving areas smaller than `min_area` (leaves, noise, a flickering lamp) do not count. Where the
picture moved is kept (`last_regions`) for diagnosis.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from .detector import Detection, Detector

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class MotionSettings:
    """See agent/config.py MotionConfig for what each one means and its default's reason."""

    width: int = 320
    threshold: int = 25
    min_area: float = 0.0005
    recheck_s: float = 5.0
    alpha: float = 0.05


class MotionDetector:
    """Moving regions of a camera's frames, against a background that follows the picture slowly."""

    def __init__(self, settings: MotionSettings = MotionSettings()) -> None:  # frozen
        self.settings = settings
        self._background: npt.NDArray[np.float32] | None = None
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))

    def regions(self, frame: npt.NDArray[Any]) -> list[Box] | None:
        """Boxes (frame pixels) where the picture moved; None for the first frame or a new frame size."""
        height, width = frame.shape[:2]
        small_w = min(self.settings.width, width)
        small_h = max(1, round(height * small_w / width))
        grey = cv2.cvtColor(cv2.resize(frame, (small_w, small_h), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY)
        grey = cv2.GaussianBlur(grey, (5, 5), 0)
        background = self._background
        if background is None or background.shape != grey.shape:
            self._background = grey.astype(np.float32)
            return None
        diff = cv2.absdiff(grey, cv2.convertScaleAbs(background))
        cv2.accumulateWeighted(grey, background, self.settings.alpha)
        _, mask = cv2.threshold(diff, self.settings.threshold, 255, cv2.THRESH_BINARY)
        mask = cv2.dilate(mask, self._kernel, iterations=2)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        scale = width / small_w
        min_area = self.settings.min_area * small_w * small_h
        boxes: list[Box] = []
        for contour in contours:
            if cv2.contourArea(contour) < min_area:
                continue
            x, y, w, h = cv2.boundingRect(contour)
            boxes.append((x * scale, y * scale, (x + w) * scale, (y + h) * scale))
        return boxes


@dataclass
class GateStats:
    frames: int = 0
    detected: int = 0  # frames the detector ran on
    rechecks: int = 0  # of those, runs forced by recheck_s on a still picture
    skipped: int = 0  # frames answered with the previous detections

    @property
    def skip_ratio(self) -> float:
        return self.skipped / self.frames if self.frames else 0.0


class MotionGatedDetector:
    """One camera's detector behind its motion gate. Not shared between cameras: it holds the camera's
    background and last detections. The wrapped detector may be shared (it serialises itself)."""

    def __init__(self, detector: Detector, settings: MotionSettings = MotionSettings()) -> None:
        self.detector = detector
        self.settings = settings
        self.motion = MotionDetector(settings)
        self.stats = GateStats()
        self.last_regions: list[Box] = []
        self._last: list[Detection] = []
        self._last_run: float | None = None
        self._lock = threading.Lock()

    @property
    def provider(self) -> str:
        return self.detector.provider

    @property
    def labels(self) -> tuple[str, ...]:
        return self.detector.labels

    @property
    def last_inference_ms(self) -> float:
        return self.detector.last_inference_ms

    @property
    def mean_inference_ms(self) -> float:
        return self.detector.mean_inference_ms

    def detect(self, frame_bgr: npt.NDArray[Any], now: float | None = None) -> list[Detection]:
        """Detections for this frame: fresh when it moved (or a re-check is due), else the last ones."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self.stats.frames += 1
            regions = self.motion.regions(frame_bgr)
            self.last_regions = regions or []
            due = self._last_run is None or now - self._last_run >= self.settings.recheck_s
            if regions is None or regions or due:
                if regions is not None and not regions:
                    self.stats.rechecks += 1
                self._last = self.detector.detect(frame_bgr)
                self._last_run = now
                self.stats.detected += 1
            else:
                self.stats.skipped += 1
            return list(self._last)
