"""The pictures that leave the box: privacy masks blacked out, people blurred, JPEG size-capped.

Redaction works on a copy of the frame and happens before the JPEG is encoded, so no code path can
send a picture that was not redacted: the only function that makes snapshot bytes is `snapshot_jpeg`,
and it redacts first. Blurring is a pixelation to blocks of 1/6 of the object's size followed by a
blur: unlike a plain Gaussian blur, it cannot be undone by deconvolution.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from .detector import Detection

Image = npt.NDArray[Any]
Polygon = Sequence[tuple[float, float]]


@dataclass(frozen=True)
class Redaction:
    """A camera's privacy settings in pixels of its frames."""

    masks: tuple[npt.NDArray[np.int32], ...] = ()
    blur_labels: frozenset[str] = frozenset({"person"})
    blur_part: str = "whole"  # or "head": the top quarter of the box

    @classmethod
    def from_polygons(
        cls,
        polygons: Iterable[Polygon],
        size: tuple[int, int],
        *,
        normalised: bool,
        blur_labels: Iterable[str] = ("person",),
        blur_part: str = "whole",
    ) -> Redaction:
        width, height = size
        scale = np.array([width, height], dtype=np.float64) if normalised else np.ones(2)
        masks = tuple(np.round(np.asarray(p, dtype=np.float64) * scale).astype(np.int32) for p in polygons)
        return cls(masks, frozenset(blur_labels), blur_part)


def _blur_box(image: Image, box: tuple[float, float, float, float], head_only: bool) -> None:
    height, width = image.shape[:2]
    x1, y1, x2, y2 = (round(v) for v in box)
    if head_only:
        y2 = y1 + max(1, (y2 - y1) // 4)
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(width, x2), min(height, y2)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return
    region = image[y1:y2, x1:x2]
    h, w = region.shape[:2]
    small = cv2.resize(region, (max(1, w // max(2, w // 6)), max(1, h // max(2, h // 6))), interpolation=cv2.INTER_AREA)
    coarse = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    k = max(3, (min(w, h) // 4) | 1)
    region[...] = cv2.GaussianBlur(coarse, (k, k), 0)


def redact(image: Image, detections: Iterable[Detection], redaction: Redaction) -> tuple[Image, list[str]]:
    """A redacted copy of `image` and what was done. Blur first, masks last: nothing paints over a mask."""
    out = image.copy()
    done: list[str] = []
    blurred = sorted({d.label for d in detections if d.label in redaction.blur_labels})
    for detection in detections:
        if detection.label in redaction.blur_labels:
            _blur_box(out, detection.box, redaction.blur_part == "head")
    done += [f"blur:{label}" for label in blurred]
    if redaction.masks:
        cv2.fillPoly(out, list(redaction.masks), (0, 0, 0))
        done.append("masks")
    return out, done


def encode_jpeg(image: Image, *, max_bytes: int, max_width: int, quality: int) -> tuple[bytes, int, int]:
    """The picture as a JPEG of at most `max_bytes` (and its width, height): scaled to `max_width`, then
    quality lowered, then scaled down further if even quality 20 does not fit."""
    height, width = image.shape[:2]
    if width > max_width:
        image = cv2.resize(image, (max_width, round(height * max_width / width)), interpolation=cv2.INTER_AREA)
    q = quality
    while True:
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, q])
        if not ok:
            raise RuntimeError("OpenCV could not encode a JPEG")
        h, w = image.shape[:2]
        if data.size <= max_bytes or w <= 64:  # a picture this small fits any sensible cap: never loop forever
            return data.tobytes(), w, h
        if q > 20:
            q = max(20, q - 15)
            continue
        image = cv2.resize(image, (w * 3 // 4, h * 3 // 4), interpolation=cv2.INTER_AREA)


def snapshot_jpeg(
    image: Image,
    detections: Iterable[Detection],
    redaction: Redaction,
    *,
    max_bytes: int,
    max_width: int,
    quality: int,
) -> tuple[bytes, int, int, list[str]]:
    """Redact, then encode: (jpeg, width, height, redactions)."""
    redacted, done = redact(image, list(detections), redaction)
    data, width, height = encode_jpeg(redacted, max_bytes=max_bytes, max_width=max_width, quality=quality)
    return data, width, height, done
