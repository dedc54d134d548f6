"""Line crossing with direction, and running counts per label and direction.

A track counts as crossing when it has been seen firmly on one side of the line and then firmly on
the other, where "firmly" means its anchor is more than `hysteresis` times its box height away from
the line. A person dawdling on the line, whose box jitters across it from frame to frame, therefore
crosses once or not at all, never once per frame. The line is a segment: a track that passes beyond
one of its ends changes side without crossing it (the point where its path meets the line's
extension is off the segment), so a line across a path does not count people on the lawn beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from polewatch.agent.config import LineRuleConfig

from .base import Direction, LabelFilter, Point, RuleHit, RuleInput, anchor_point, box_height, to_pixels


@dataclass(slots=True)
class _Side:
    side: int  # -1: side A, +1: side B
    point: Point  # the anchor the last time it was firmly on that side
    distance: float  # its signed distance from the line then


class LineRule:
    """`cross` events with their direction (a_to_b / b_to_a) and the counts so far.

    Side A is on the left when the line is followed from its first point to its second, as drawn
    on the picture (image y grows downwards): a line drawn left to right has A above it.
    """

    def __init__(self, config: LineRuleConfig) -> None:
        self.id = config.id
        self.config = config
        self.accepts = LabelFilter(config.labels)
        self.counts: dict[str, tuple[int, int]] = {}
        self._sides: dict[str, _Side] = {}
        self._size: tuple[int, int] | None = None
        self._start: Point = (0.0, 0.0)
        self._vector: Point = (0.0, 0.0)
        self._length = 1.0

    def _resize(self, width: int, height: int) -> None:
        if self._size == (width, height):
            return
        self._size = (width, height)
        (x1, y1), (x2, y2) = to_pixels(self.config.points, self.config.units, width, height).tolist()
        self._start = (x1, y1)
        self._vector = (x2 - x1, y2 - y1)
        self._length = max(math.hypot(*self._vector), 1e-9)

    def _distance(self, point: Point) -> float:
        """Signed distance from the (infinite) line in pixels: negative on side A, positive on B."""
        dx, dy = self._vector
        return (dx * (point[1] - self._start[1]) - dy * (point[0] - self._start[0])) / self._length

    def _on_segment(self, before: _Side, point: Point, distance: float) -> bool:
        """Whether the path from the last firm point to this one meets the line between its ends."""
        t = before.distance / (before.distance - distance)
        qx = before.point[0] + t * (point[0] - before.point[0])
        qy = before.point[1] + t * (point[1] - before.point[1])
        dx, dy = self._vector
        u = ((qx - self._start[0]) * dx + (qy - self._start[1]) * dy) / (self._length**2)
        return 0.0 <= u <= 1.0

    def update(self, frame: RuleInput) -> list[RuleHit]:
        self._resize(frame.width, frame.height)
        hits: list[RuleHit] = []
        for track in frame.seen:
            if not self.accepts(track.label):
                continue
            point = anchor_point(track.box, self.config.anchor)
            distance = self._distance(point)
            margin = self.config.hysteresis * box_height(track.box)
            if abs(distance) <= margin:
                continue  # on the line: wait until it is firmly on one side
            side = -1 if distance < 0 else 1
            before = self._sides.get(track.id)
            self._sides[track.id] = _Side(side, point, distance)
            if before is None or before.side == side or not self._on_segment(before, point, distance):
                continue
            direction: Direction = "a_to_b" if side == 1 else "b_to_a"
            a_to_b, b_to_a = self.counts.get(track.label, (0, 0))
            self.counts[track.label] = (a_to_b + 1, b_to_a) if side == 1 else (a_to_b, b_to_a + 1)
            hits.append(
                RuleHit(
                    self.id,
                    "line",
                    "cross",
                    track.id,
                    track.label,
                    track.box,
                    frame.now,
                    direction=direction,
                    counts=dict(self.counts),
                )
            )
        for track in frame.ended:
            self._sides.pop(track.id, None)
        return hits
