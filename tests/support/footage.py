"""Real footage for the camera-health tests, and the ways a camera's picture gets damaged.

The footage is the shipped clip (the first 45 s of OpenCV's vtest.avi, always present) or the whole
vtest.avi from ../shared. Each damage is what happens to a real camera on a pole, done to the real
frames: a lens covered by a hand (black), blinded (white), painted over (one colour), sprayed
(a smear without detail), a defocus (Gaussian blur), a knock on the mount (translation and
rotation), a frozen encoder (one frame repeated), frames lost on the way (dropped).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[Any]

SAMPLE_CLIP = Path(str(resources.files("polewatch") / "samples" / "vtest-clip.mp4"))  # 768x576, 10 fps, 45 s
FOOTAGE_FPS = 10.0  # both the clip and vtest.avi


def read_frames(path: Path, *, every: int = 1) -> list[Image]:
    """Every `every`-th frame of a video file (every=5 on 10 fps footage: 2 samples per second)."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot open {path}")
    frames: list[Image] = []
    index = 0
    try:
        while True:
            ok = cap.grab()
            if not ok:
                break
            if index % every == 0:
                ok, image = cap.retrieve()
                if not ok:
                    break
                frames.append(image)
            index += 1
    finally:
        cap.release()
    return frames


# --- damage ---------------------------------------------------------------------------------------

Damage = Callable[[Image], Image]


def black(image: Image) -> Image:
    """A hand or a bag over the lens: a few percent of the light gets through."""
    return cv2.convertScaleAbs(image, alpha=0.05)


def white(image: Image) -> Image:
    """Blinded: a torch or the sun straight into the lens, the picture saturates."""
    return cv2.convertScaleAbs(image, alpha=3.0, beta=200)


@functools.cache
def _grey_with_noise(shape: tuple[int, ...]) -> Image:
    noise = np.random.default_rng(7).normal(128.0, 2.0, shape)
    return np.clip(noise, 0, 255).astype(np.uint8)


def painted(image: Image) -> Image:
    """Painted over: one grey, with the sensor's noise on top."""
    return _grey_with_noise(image.shape)


def sprayed(image: Image) -> Image:
    """Spray paint or a smeared lens: the colours of the scene, no shapes.

    A Gaussian blur of sigma 30 px, done at 1/8 size (the same picture, 60 times cheaper).
    """
    height, width = image.shape[:2]
    small = cv2.resize(image, (width // 8, height // 8), interpolation=cv2.INTER_AREA)
    smeared = cv2.GaussianBlur(small, (0, 0), 30 / 8)
    return cv2.resize(smeared, (width, height), interpolation=cv2.INTER_LINEAR)


def defocused(image: Image) -> Image:
    """Focus ring knocked: a heavy blur (21 px kernel at 768x576)."""
    return cv2.GaussianBlur(image, (21, 21), 0)


def knocked(dx: float = 0.12, dy: float = 0.05, degrees: float = 4.0) -> Damage:
    """The camera turned on its mount: the view moves by dx, dy (fractions of the size) and rotates."""

    def damage(image: Image) -> Image:
        height, width = image.shape[:2]
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
        matrix[0, 2] += dx * width
        matrix[1, 2] += dy * height
        # The border shows more of the same kind of world (mirrored), as a real knock would, not black.
        return cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REFLECT_101)

    return damage


def turned_away(image: Image) -> Image:
    """Turned away from its view: a picture with the same kind of texture but none of the reference.

    The mirror image: no rotation, shift or zoom of the reference view can produce it (a picture
    turned upside down can: that is a rotation of 180°, and it is measured as one).
    """
    return cv2.flip(image, 1)


# --- a camera's timeline --------------------------------------------------------------------------


@dataclass
class Timeline:
    """Samples of footage at `sample_fps`, looping, with damage applied during [start, end) seconds."""

    frames: list[Image]
    seconds: float
    sample_fps: float = 2.0
    damage: Damage | None = None
    span: tuple[float, float] = (0.0, 0.0)
    frozen: bool = False  # repeat the frame at the start of the span instead of damaging
    costs_s: list[float] = field(default_factory=list)

    def samples(self) -> Iterator[tuple[float, Image]]:
        start, end = self.span
        held: Image | None = None
        for i in range(int(self.seconds * self.sample_fps)):
            now = i / self.sample_fps
            image = self.frames[i % len(self.frames)]
            if start <= now < end:
                if self.frozen:
                    held = image if held is None else held
                    image = held
                elif self.damage is not None:
                    image = self.damage(image)
            yield now, image

    def run(self, observe: Callable[[Image, float], list[Any]]) -> list[Any]:
        """Feed every sample to `observe`; the changes it returned, in order. Records the cost."""
        changes: list[Any] = []
        for now, image in self.samples():
            started = time.perf_counter()
            changes += observe(image, now)
            self.costs_s.append(time.perf_counter() - started)
        return changes


def iter_frames(path: Path) -> Iterator[Image]:
    """The frames of a video file one by one (a whole clip in memory would be 600 MB)."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot open {path}")
    try:
        while True:
            ok, image = cap.read()
            if not ok:
                return
            yield image
    finally:
        cap.release()


def write_video(path: Path, frames: Iterable[Image], fps: float = FOOTAGE_FPS, fourcc: str = "mp4v") -> Path:
    """A video file of these frames. MPEG-4 part 2 by default: lossy, with key frames, like a
    camera's stream (a frozen picture is re-encoded, not copied), and every OpenCV build writes it."""
    writer: cv2.VideoWriter | None = None
    try:
        for frame in frames:
            if writer is None:
                height, width = frame.shape[:2]
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, (width, height))
                if not writer.isOpened():
                    raise RuntimeError(f"OpenCV cannot write {fourcc} to {path}")
            writer.write(frame)
    finally:
        if writer is not None:
            writer.release()
    return path
