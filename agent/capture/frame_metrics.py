"""Cheap measurements of one camera picture, for the camera-health checks.

Everything here runs beside the detector on a Raspberry Pi, a few times a second per camera, so it
works on a small grey copy of the frame and uses only OpenCV primitives that have fast paths:

- The frame is shrunk by an *integer* factor to about 320-400 px wide with INTER_AREA, which
  OpenCV then does as a plain block average (0.15 ms for 768x576 -> 384x288 here; a non-integer
  factor takes the general path and costs 40 times as much).
- Brightness, contrast and detail are a mean, a standard deviation and a Laplacian.
- The frozen-picture check compares *decimated* pixels (every n-th, not averaged): averaging would
  smooth away the sensor noise that tells a still street from a frozen stream.
- The aim check (ORB features matched to the reference view, then a RANSAC similarity transform) is
  the one costly step, ~5 ms at 384x288 on a desktop core, so the checker runs it every few seconds
  only. Phase correlation would be cheaper but measures translation only; a camera knocked on its
  mount also rotates, and ORB with RANSAC ignores pedestrians and parked vehicles that are not in
  the reference view (they have no partner there and fall out as outliers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[Any]

# The analysis image is the frame shrunk by an integer factor to at least this width.
ANALYSIS_MIN_WIDTH = 320


def downscale_factor(width: int) -> int:
    """The integer factor that brings `width` down to ANALYSIS_MIN_WIDTH or a bit more."""
    return max(1, width // ANALYSIS_MIN_WIDTH)


def analysis_grey(image: Image) -> Image:
    """The frame as a small grey image (e.g. 768x576 -> 384x288, 1920x1080 -> 320x180)."""
    height, width = image.shape[:2]
    k = downscale_factor(width)
    if k > 1:
        h, w = height // k, width // k
        # Crop to a multiple of k so that INTER_AREA takes its integer (block average) fast path.
        image = cv2.resize(image[: h * k, : w * k], (w, h), interpolation=cv2.INTER_AREA)
    if image.ndim == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return image


def decimated_grey(image: Image) -> Image:
    """Every n-th pixel of the frame in grey (about 190 px wide), with its noise left in."""
    step = 2 * downscale_factor(image.shape[1])
    view = image[::step, ::step]
    if view.ndim == 3:
        return cv2.cvtColor(view, cv2.COLOR_BGR2GRAY)
    return np.ascontiguousarray(view)


def mean_abs_diff(a: Image, b: Image) -> float:
    """Mean absolute grey difference of two images of the same size."""
    return float(cv2.mean(cv2.absdiff(a, b))[0])


@dataclass(frozen=True)
class PictureStats:
    """What one grey analysis image looks like."""

    mean: float  # mean grey level, 0..255
    std: float  # standard deviation of the grey levels: contrast
    detail: float  # RMS of the Laplacian, in grey levels: how much fine structure there is at all
    sharpness: float  # var(Laplacian) / var(grey): fine structure relative to contrast

    @classmethod
    def of(cls, grey: Image) -> PictureStats:
        mean, std = cv2.meanStdDev(grey)
        _, lap_std = cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_16S))
        m, s, d = float(mean[0, 0]), float(std[0, 0]), float(lap_std[0, 0])
        # Dividing by the picture's own variance makes sharpness independent of brightness and
        # contrast (dusk, exposure changes), so a drop means lost detail, not a darker scene.
        sharpness = (d / s) ** 2 if s > 1e-3 else 0.0
        return cls(mean=m, std=s, detail=d, sharpness=sharpness)


@dataclass(frozen=True)
class ShiftEstimate:
    """Where the reference view is in a frame.

    `shift` is the largest movement of a frame corner as a fraction of the frame width (so it
    counts rotation and zoom as well as translation); None when the reference view was not found.
    """

    shift: float | None
    rotation_deg: float  # + clockwise as seen on the screen
    dx: float  # movement of the frame centre, fraction of the width (+ right)
    dy: float  # movement of the frame centre, fraction of the width (+ down)
    inliers: int  # matched features consistent with the transform
    keypoints: int  # features found in the frame


class ReferenceView:
    """ORB features of a camera's reference view, to locate it in later frames."""

    def __init__(self, grey: Image, *, features: int = 500) -> None:
        self.shape = grey.shape[:2]
        self.stats = PictureStats.of(grey)
        self._orb = cv2.ORB.create(nfeatures=features, fastThreshold=10)
        self._matcher = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
        self._keypoints, self._descriptors = self._orb.detectAndCompute(grey, None)

    @classmethod
    def from_image(cls, image: Image) -> ReferenceView:
        """From a full frame (e.g. the PNG/JPEG written by `polewatch provision probe-camera`)."""
        return cls(analysis_grey(image))

    @property
    def keypoints(self) -> int:
        return len(self._keypoints)

    def locate(self, grey: Image, *, min_inliers: int) -> ShiftEstimate:
        """Estimate how the view moved between the reference and `grey` (an analysis image)."""
        height, width = self.shape
        if grey.shape[:2] != self.shape:
            grey = cv2.resize(grey, (width, height), interpolation=cv2.INTER_AREA)
        keypoints, descriptors = self._orb.detectAndCompute(grey, None)
        not_found = ShiftEstimate(None, 0.0, 0.0, 0.0, 0, len(keypoints))
        if descriptors is None or self._descriptors is None or len(keypoints) < min_inliers:
            return not_found
        matches = self._matcher.match(self._descriptors, descriptors)
        if len(matches) < min_inliers:
            return not_found
        src = np.array([self._keypoints[m.queryIdx].pt for m in matches], np.float32)
        dst = np.array([keypoints[m.trainIdx].pt for m in matches], np.float32)
        # Similarity (rotation + uniform scale + translation): what a knock on a mount can do.
        transform, inlier_mask = cv2.estimateAffinePartial2D(
            src, dst, method=cv2.RANSAC, ransacReprojThreshold=3.0, maxIters=2000, confidence=0.99
        )
        inliers = int(inlier_mask.sum()) if inlier_mask is not None else 0
        if transform is None or inliers < min_inliers:
            return ShiftEstimate(None, 0.0, 0.0, 0.0, inliers, len(keypoints))
        corners = np.array([[0, 0, 1], [width, 0, 1], [0, height, 1], [width, height, 1]], np.float64)
        moved = corners @ transform.T
        shift = float(np.max(np.hypot(*(moved - corners[:, :2]).T))) / width
        centre = np.array([width / 2, height / 2, 1.0])
        dx, dy = (transform @ centre - centre[:2]) / width
        rotation = math.degrees(math.atan2(transform[1, 0], transform[0, 0]))
        return ShiftEstimate(shift, rotation, float(dx), float(dy), inliers, len(keypoints))
