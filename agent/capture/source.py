"""A camera as a source of the latest frame.

Detection runs slower than a camera delivers frames; if frames queued up, every alert would arrive
later and later. So a reader thread per camera decodes continuously and keeps only the newest frame;
the detector asks for it when it is ready and never sees a backlog. Frames it never looked at are
counted as dropped. A stream that fails or stalls is reopened with backoff, forever: a camera that
comes back at 3 a.m. must be watched again without anyone visiting the pole.

Sources: RTSP (TCP or UDP transport), HTTP (MJPEG and anything else FFmpeg reads over HTTP), a video
file (played at its own rate, looped or once) and a USB/V4L2 device (`v4l2:///dev/video0`). Each
source keeps its connection state, its interruptions of the last hour and, when it cannot open,
the reason in words (diagnose.py), for the health report.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from .diagnose import HINTS, Diagnosis, diagnose
from .state import PERMANENT_REASONS, EventLog, Quality, State, grade
from .urls import redact_url

SourceKind = Literal["rtsp", "http", "file", "v4l2"]
Transport = Literal["tcp", "udp"]
FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"

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


def source_kind(url: str) -> SourceKind:
    if url.startswith(("rtsp://", "rtsps://")):
        return "rtsp"
    if url.startswith(("http://", "https://")):
        return "http"
    if url.startswith("v4l2://"):
        return "v4l2"
    return "file"


def v4l2_device(url: str) -> str:
    """`v4l2:///dev/video0` → /dev/video0; `v4l2://0` → /dev/video0 (the device index)."""
    rest = url.removeprefix("v4l2://")
    return f"/dev/video{rest}" if rest.isdigit() else rest


class _TransportOptions:
    """OpenCV takes FFmpeg's options from one process-wide environment variable, read when a capture
    opens. A camera that asks for UDP sets it for the length of its open; cameras on the default (TCP)
    open concurrently among themselves and wait only while a UDP camera opens (a readers-writer lock).
    A box whose cameras all use one transport never waits at all."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._default_opens = 0
        self._exclusive = False

    def open(self, path: str, transport: Transport | None, params: list[int]) -> cv2.VideoCapture:
        if transport != "udp":
            with self._cond:
                self._cond.wait_for(lambda: not self._exclusive)
                self._default_opens += 1
            try:
                return cv2.VideoCapture(path, cv2.CAP_FFMPEG, params)
            finally:
                with self._cond:
                    self._default_opens -= 1
                    self._cond.notify_all()
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive and self._default_opens == 0)
            self._exclusive = True
        before = os.environ.get(FFMPEG_OPTIONS_ENV)
        os.environ[FFMPEG_OPTIONS_ENV] = "rtsp_transport;udp"
        try:
            return cv2.VideoCapture(path, cv2.CAP_FFMPEG, params)
        finally:
            if before is None:
                os.environ.pop(FFMPEG_OPTIONS_ENV, None)
            else:
                os.environ[FFMPEG_OPTIONS_ENV] = before
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


_TRANSPORT = _TransportOptions()


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
        transport: Transport | None = None,
        expected_fps: float | None = None,
        failed_after_s: float = 60.0,
        open_timeout_s: float = 15.0,
    ) -> None:
        self.camera_id = camera_id
        self.url = url
        self.kind: SourceKind = source_kind(url)
        self.loop = loop
        self.stall_timeout_s = stall_timeout_s
        self.reconnect_max_s = reconnect_max_s
        self.transport = transport
        self.failed_after_s = failed_after_s
        self.open_timeout_s = open_timeout_s
        self.connected = False
        self.state: State = "connecting"
        self.last_error: Diagnosis | None = None
        # What the camera should deliver: configured, else what the stream says of itself on open.
        self.configured_fps = expected_fps
        self.nominal_fps: float | None = None
        self.reconnects = 0
        self.reconnect_log = EventLog()
        self.stall_log = EventLog()
        self.resolution_changes = 0
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
        return self.kind == "file"

    @property
    def expected_fps(self) -> float | None:
        return self.configured_fps or self.nominal_fps

    def quality(self) -> Quality:
        now = time.monotonic()
        interruptions = self.reconnect_log.count(now) + self.stall_log.count(now)
        return grade(self.state, self.fps(), self.expected_fps, interruptions)

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

    @property
    def target(self) -> str:
        """What is opened: the URL, the file's path or the device's path."""
        if self.kind == "file":
            return self.url.removeprefix("file://")
        if self.kind == "v4l2":
            return v4l2_device(self.url)
        return self.url

    def _open(self) -> cv2.VideoCapture | None:
        target = self.target
        if self.kind in ("file", "v4l2") and not Path(target).exists():
            return None  # diagnosed by the caller; OpenCV would only say "not opened"
        if self.kind == "v4l2":
            cap = cv2.VideoCapture(target, cv2.CAP_V4L2)
        elif self.kind == "file":
            cap = cv2.VideoCapture(target, cv2.CAP_FFMPEG)
        else:
            # Opening includes FFmpeg's probe of the first seconds of stream (~2.4 s here): its own bound.
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000),
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.stall_timeout_s * 1000)]
            cap = _TRANSPORT.open(target, self.transport if self.kind == "rtsp" else None, params)
        if not cap.isOpened():
            cap.release()
            return None
        fps = cap.get(cv2.CAP_PROP_FPS)
        # FFmpeg reports 90000 or 1000 for streams that do not say, and 25 for any MJPEG over HTTP
        # (the format has no rate): only a plausible rate of a stream that carries one counts.
        self.nominal_fps = float(fps) if 0 < fps <= 120 and self.kind != "http" else None
        return cap

    def _set_state(self, state: State) -> None:
        if state == self.state:
            return
        previous, self.state = self.state, state
        fields = {"camera": self.camera_id, "url": redact_url(self.url), "previous": previous}
        if state == "failed":
            reason = self.last_error.reason if self.last_error else "unknown"
            log.error(
                "camera failed: %s (still retrying)",
                HINTS.get(reason, "it cannot be opened"),
                extra={**fields, "reason": reason, "detail": self.last_error.detail if self.last_error else None},
            )
        elif state == "reconnecting":
            log.warning("camera connection lost; reconnecting", extra=fields)

    def _open_failed(self, down_since: float) -> None:
        diagnosis = diagnose(self.kind, self.target, timeout=min(3.0, self.open_timeout_s))
        self.last_error = diagnosis
        waited = time.monotonic() - down_since
        if diagnosis.reason in PERMANENT_REASONS or waited >= self.failed_after_s:
            self._set_state("failed")
        elif self.state != "failed":
            self._set_state("connecting" if self.state == "connecting" else "reconnecting")

    def _run(self) -> None:
        attempt = 0
        ever_connected = False
        down_since = time.monotonic()
        while not self._stop.is_set():
            cap = self._open()
            if cap is None:
                self.connected = False
                self._open_failed(down_since)
                delay = random.uniform(0.5, min(self.reconnect_max_s, 2.0 ** min(attempt, 6)))
                error = self.last_error
                log.warning(
                    "camera cannot be opened; retrying",
                    extra={"camera": self.camera_id, "url": redact_url(self.url), "retry_in_s": round(delay, 1),
                           "reason": error.reason if error else None, "detail": error.detail if error else None},
                )
                attempt += 1
                self._stop.wait(delay)
                continue
            if ever_connected:
                self.reconnects += 1
                self.reconnect_log.add(time.monotonic())
            ever_connected = True
            attempt = 0
            self.connected = True
            self.last_error = None
            self.state = "connected"
            log.info("camera connected", extra={"camera": self.camera_id, "url": redact_url(self.url),
                                                "kind": self.kind, "nominal_fps": self.nominal_fps})
            frames_before = self.frames_read
            try:
                ended = self._read_until_failure(cap)
            finally:
                cap.release()
                self.connected = False
                down_since = time.monotonic()
            if ended and self.is_file and not self.loop:
                log.info("video file ended", extra={"camera": self.camera_id})
                self.state = "ended"
                return
            if not self._stop.is_set():
                self._set_state("reconnecting")
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
                log.warning(
                    "camera stream stalled: no frame for %.0f s; reconnecting",
                    time.monotonic() - last_frame,
                    extra={"camera": self.camera_id, "stall_timeout_s": self.stall_timeout_s},
                )
                self.stall_log.add(time.monotonic())
                self.last_error = Diagnosis("stalled", f"no frame for more than {self.stall_timeout_s:g} s")
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
            height, width = image.shape[:2]
            if self.width is not None and (width, height) != (self.width, self.height):
                self.resolution_changes += 1
                log.warning(
                    "camera resolution changed from %dx%d to %dx%d",
                    self.width, self.height, width, height,
                    extra={"camera": self.camera_id},
                )
            with self._cond:
                self.frames_read += 1
                self.height, self.width = height, width
                self._latest = Frame(image, self.frames_read, time.time(), now_mono)
                self._recent.append(now_mono)
                self._cond.notify_all()
            last_frame = now_mono
        return False
