"""Probe a camera the way the agent will read it, before the technician leaves the pole.

A camera that answers in the web browser can still fail in the agent (wrong stream path, H.265 the
box cannot decode, 1 fps substream). So the probe opens the URL with the same OpenCV/FFmpeg stack
as the agent, reads real frames, measures what arrives, and keeps one frame as the reference view
for the later knocked-out-of-aim check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2


class ProbeError(RuntimeError):
    """The camera could not be read; the text says what to check."""


@dataclass(frozen=True)
class ProbeResult:
    url: str
    width: int
    height: int
    codec: str
    declared_fps: float
    measured_fps: float
    frames: int
    reference: Path | None


def _fourcc(value: float) -> str:
    code = int(value)
    text = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00 ")
    return text if text.isprintable() and text else "unknown"


def probe_camera(url: str, *, frames: int = 20, reference: Path | None = None) -> ProbeResult:
    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened():
            if "://" not in url and not Path(url).exists():
                raise ProbeError(f"no such video file: {url}")
            raise ProbeError(
                f"the camera did not answer at {url}: check the address and stream path, that the camera "
                "is powered and on this network, and the user and password in the URL"
            )
        got = 0
        image = None
        started = time.monotonic()
        while got < frames:
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            image = frame
            got += 1
        elapsed = time.monotonic() - started
        if image is None:
            raise ProbeError(
                f"{url} opened but delivered no frame: check the codec (H.264 is safest) and the stream path"
            )
        height, width = image.shape[:2]
        if reference is not None:
            reference.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(reference), image):
                raise ProbeError(f"could not write the reference view to {reference}")
        return ProbeResult(
            url=url,
            width=width,
            height=height,
            codec=_fourcc(cap.get(cv2.CAP_PROP_FOURCC)),
            declared_fps=float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
            measured_fps=(got - 1) / elapsed if got > 1 and elapsed > 0 else 0.0,
            frames=got,
            reference=reference,
        )
    finally:
        cap.release()
