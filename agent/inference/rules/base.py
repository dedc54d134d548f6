"""What every rule evaluator shares: its input per frame, the events it emits, and the geometry.

Rules are configured in normalised or pixel coordinates but evaluated in the pixels of the frames the
camera actually delivers, so a camera switched to another resolution keeps its zones where they were
drawn (normalised) or refuses nothing at run time (pixels are taken as they are).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from ..detector import Detection
from ..tracker import Box, Track

RuleType = Literal["zone", "loiter", "line", "left_behind"]
EventName = Literal["enter", "exit", "loiter_start", "loiter_end", "cross", "left_behind_start", "left_behind_end"]
Direction = Literal["a_to_b", "b_to_a"]
Anchor = Literal["bottom_centre", "centre", "top_centre"]
Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class RuleInput:
    """One frame as the rules see it.

    `seen` are the confirmed tracks matched in this frame (the tracker's started + updated), `ended`
    the tracks it gave up on. `detections` are the frame's raw detections, for rules that cannot wait
    for the tracker (a static object flickers below its confirmation); None when there was no
    picture (a stalled camera), so those rules learn nothing from the silence.
    """

    now: float
    width: int
    height: int
    seen: Sequence[Track]
    ended: Sequence[Track]
    detections: Sequence[Detection] | None


@dataclass(frozen=True, slots=True)
class RuleHit:
    """One rule event, in frame pixels and monotonic time; the runtime turns it into a `rule_event`."""

    rule_id: str
    rule_type: RuleType
    event: EventName
    event_id: str
    label: str
    box: Box
    time: float
    direction: Direction | None = None
    counts: Mapping[str, tuple[int, int]] | None = None  # label -> (a_to_b, b_to_a)
    dwell_s: float | None = None


class Rule(Protocol):
    id: str

    def update(self, frame: RuleInput) -> list[RuleHit]: ...


class LabelFilter:
    """Which labels a rule applies to: a set, or every label ('any') except some."""

    def __init__(self, labels: Sequence[str] | str, *, except_: Sequence[str] = ()) -> None:
        self.any = labels == "any"
        self.labels = frozenset(() if isinstance(labels, str) else labels)
        self.excluded = frozenset(except_)

    def __call__(self, label: str) -> bool:
        return label not in self.excluded and (self.any or label in self.labels)


def anchor_point(box: Box, anchor: Anchor) -> Point:
    """The point of a box that stands for the object: for people, bottom_centre is the feet, which is
    where they are on the ground; a box's centre is on the ground only seen from straight above."""
    x1, y1, x2, y2 = box
    x = (x1 + x2) / 2
    if anchor == "bottom_centre":
        return (x, y2)
    if anchor == "top_centre":
        return (x, y1)
    return (x, (y1 + y2) / 2)


def box_height(box: Box) -> float:
    return max(box[3] - box[1], 0.0)


def to_pixels(
    points: Sequence[Point], units: Literal["normalised", "pixels"], width: int, height: int
) -> npt.NDArray[np.float32]:
    scale = (width, height) if units == "normalised" else (1.0, 1.0)
    return np.array([(x * scale[0], y * scale[1]) for x, y in points], dtype=np.float32)


class Polygon:
    """A zone in frame pixels, for one frame size at a time."""

    def __init__(self, points: Sequence[Point], units: Literal["normalised", "pixels"]) -> None:
        self.points = list(points)
        self.units = units
        self._size: tuple[int, int] | None = None
        self._contour = np.zeros((0, 1, 2), dtype=np.float32)

    def resize(self, width: int, height: int) -> None:
        if self._size != (width, height):
            self._size = (width, height)
            self._contour = to_pixels(self.points, self.units, width, height).reshape(-1, 1, 2)

    def distance(self, point: Point) -> float:
        """Signed distance in pixels from the polygon's edge: positive inside, negative outside."""
        return float(cv2.pointPolygonTest(self._contour, (float(point[0]), float(point[1])), True))
