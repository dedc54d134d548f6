"""A camera as a source of the latest frame.

Detection runs slower than a camera delivers frames; if frames queued up, every alert would arrive
later and later. So a reader thread per camera decodes continuously and keeps only the newest frame;
the detector asks for it when it is ready and never sees a backlog. Frames it never looked at are
counted as dropped. A stream that fails or stalls is reopened with backoff, forever: a camera that
comes back at 3 a.m. must be watched again without anyone visiting the pole.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .urls import redact_url

log = logging.getLogger("polewatch.agent.capture")


def frame_rate(times: Iterable[float], now: float, window_s: float = 5.0) -> float:
    """Frames per second from the delivery times (monotonic) of the last `window_s` seconds.

    0 when fewer than two frames arrived in the window: a silent camera has no frame rate.
    """
    recent = [t for t in times if now - t <= window_s]
    if len(recent) < 2:
        return 0.0
    span = max(now - recent[0], 1e-6)
    return (len(recent) - 1) / span


@dataclass(frozen=True)
class Frame:
    image: np.ndarray
    index: int  # frames delivered by this source since start, 1-based
    wall_time: float  # time.time() when decoded
    mono_time: float  # time.monotonic() when decoded


class FrameSource:
    """Reads one camera in a background thread and holds its newest frame."""

    def __init__(
        self,
        camera_id: str,
        url: str,
        *,
        loop: bool = False,
        stall_timeout_s: float = 10.0,
        reconnect_max_s: float = 30.0,
    ) -> None:
        self.camera_id = camera_id
        self.url = url
        self.loop = loop
        self.stall_timeout_s = stall_timeout_s
        self.reconnect_max_s = reconnect_max_s
        self.connected = False
        self.reconnects = 0
        self.frames_read = 0
        self.frames_dropped = 0
        self.width: int | None = None
        self.height: int | None = None
        self._latest: Frame | None = None
        self._taken_index = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"capture-{camera_id}", daemon=True)
        self._recent: deque[float] = deque(maxlen=64)

    @property
    def is_file(self) -> bool:
        return "://" not in self.url or self.url.startswith("file://")

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout)

    def fps(self) -> float:
        """Frames per second delivered over the last few seconds (0 when the camera is silent)."""
        now = time.monotonic()
        with self._cond:
            recent = list(self._recent)
        return frame_rate(recent, now)

    def latest(self, newer_than: int = 0, timeout: float | None = None) -> Frame | None:
        """The newest frame with an index above `newer_than`, waiting up to `timeout` for one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._latest is None or self._latest.index <= newer_than:
                if self._stop.is_set():
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            frame = self._latest
            skipped = frame.index - max(self._taken_index, newer_than) - 1
            if self._taken_index and skipped > 0:
                self.frames_dropped += skipped
            self._taken_index = frame.index
            return frame

    def _open(self) -> cv2.VideoCapture | None:
        path = self.url.removeprefix("file://") if self.is_file else self.url
        if self.is_file and not Path(path).exists():
            log.error("video file does not exist", extra={"camera": self.camera_id, "path": path})
            return None
        params: list[int] = []
        if not self.is_file:
            # Opening includes FFmpeg's probe of the first seconds of stream (~2.4 s here): its own bound.
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 15_000,
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.stall_timeout_s * 1000)]
        cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def _run(self) -> None:
        attempt = 0
        ever_connected = False
        while not self._stop.is_set():
            cap = self._open()
            if cap is None:
                self.connected = False
                delay = random.uniform(0.5, min(self.reconnect_max_s, 2.0 ** min(attempt, 6)))
                log.warning(
                    "camera cannot be opened; retrying",
                    extra={"camera": self.camera_id, "url": redact_url(self.url), "retry_in_s": round(delay, 1)},
                )
                attempt += 1
                self._stop.wait(delay)
                continue
            if ever_connected:
                self.reconnects += 1
            ever_connected = True
            attempt = 0
            self.connected = True
            log.info("camera connected", extra={"camera": self.camera_id, "url": redact_url(self.url)})
            frames_before = self.frames_read
            try:
                ended = self._read_until_failure(cap)
            finally:
                cap.release()
                self.connected = False
            if ended and self.is_file and not self.loop:
                log.info("video file ended", extra={"camera": self.camera_id})
                return
            if self.frames_read == frames_before:
                # Opens but yields nothing (a corrupt file, a camera that hangs up at once): back off
                # as for a failed open instead of spinning.
                attempt += 1
                self._stop.wait(random.uniform(0.5, min(self.reconnect_max_s, 2.0 ** min(attempt, 6))))

    def _read_until_failure(self, cap: cv2.VideoCapture) -> bool:
        """Read until the stream fails, stalls or ends; True when a file reached its end."""
        file_fps = cap.get(cv2.CAP_PROP_FPS) if self.is_file else 0.0
        frame_interval = 1.0 / file_fps if file_fps and file_fps > 0 else 0.0
        next_due = last_frame = time.monotonic()
        while not self._stop.is_set():
            ok, image = cap.read()
            if not self.is_file and time.monotonic() - last_frame > self.stall_timeout_s:
                # OpenCV's read timeout may still hand out frames the decoder held back: a stall anyway.
                log.warning("camera stream stalled", extra={"camera": self.camera_id})
                return False
            if not ok or image is None:
                if self.is_file and self.loop and self.frames_read:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    continue
                log.warning("camera stream ended or failed", extra={"camera": self.camera_id})
                return self.is_file
            if frame_interval:
                # A file plays at its own frame rate, as a live camera would deliver it.
                next_due += frame_interval
                pause = next_due - time.monotonic()
                if pause > 0:
                    self._stop.wait(pause)
                else:
                    next_due = time.monotonic()
            now_mono = time.monotonic()
            with self._cond:
                self.frames_read += 1
                self.height, self.width = image.shape[:2]
                self._latest = Frame(image, self.frames_read, time.time(), now_mono)
                self._recent.append(now_mono)
                self._cond.notify_all()
            last_frame = now_mono
        return False
