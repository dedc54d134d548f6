"""Greedy IoU tracking, so that one person walking past the pole is one event, not one per frame.

One tracker per camera. Detections are matched to live tracks of the same label by IoU, best pairs
first. A track is reported as started once it has been seen in `min_hits` consecutive updates (so a
one-frame false positive never becomes an event), as updated while it keeps being seen, and as ended
once it has not been seen for `max_age` seconds (so a detector missing a person for a few frames,
or a person passing behind the lamp post, does not split one walk into several events).

Each track carries a smoothed velocity and is matched at the position it would have reached by now.
Without it a walker missed for a few frames has moved off their last box (a 30 px wide pedestrian
walking at 7 px per frame) and comes back as a new track: on the shipped clip the prediction cut
person tracks from 54 to 40 for the same detections (models/MODEL_CARD.md).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .boxes import iou_matrix
from .detector import Detection

Box = tuple[float, float, float, float]

# Track ids are unique within an agent run across all cameras (one counter per process) and, through
# the random run prefix, practically unique across restarts too.
_RUN_ID = uuid.uuid4().hex[:8]
_COUNTER = itertools.count(1)


def _new_id(prefix: str) -> str:
    return f"{prefix}{_RUN_ID}-{next(_COUNTER)}"


@dataclass(frozen=True, slots=True)
class Track:
    """A snapshot of one tracked object, safe to keep, queue for upload or hand to another thread."""

    id: str
    label: str
    class_id: int
    best_score: float
    box: Box  # last seen, x1, y1, x2, y2 in frame pixels
    first_seen: float
    last_seen: float
    hits: int


@dataclass(frozen=True, slots=True)
class TrackUpdate:
    """What one update changed: tracks confirmed now, confirmed tracks seen again, tracks lost."""

    started: list[Track] = field(default_factory=list)
    updated: list[Track] = field(default_factory=list)
    ended: list[Track] = field(default_factory=list)


@dataclass(slots=True)
class _State:
    id: str
    label: str
    class_id: int
    best_score: float
    box: Box
    first_seen: float
    last_seen: float
    hits: int = 1
    confirmed: bool = False
    velocity: tuple[float, float] = (0.0, 0.0)  # of the box centre, pixels per second

    def predicted(self, now: float) -> Box:
        dt = now - self.last_seen
        dx, dy = self.velocity[0] * dt, self.velocity[1] * dt
        x1, y1, x2, y2 = self.box
        return (x1 + dx, y1 + dy, x2 + dx, y2 + dy)

    def observe(self, detection: Detection, now: float, weight: float) -> None:
        dt = now - self.last_seen
        box = detection.box
        if dt > 0 and weight > 0:  # weight 0: no motion model, match at the last box
            vx = (box[0] + box[2] - self.box[0] - self.box[2]) / (2 * dt)
            vy = (box[1] + box[3] - self.box[1] - self.box[3]) / (2 * dt)
            if self.hits == 1:
                self.velocity = (vx, vy)
            else:
                self.velocity = (
                    self.velocity[0] + weight * (vx - self.velocity[0]),
                    self.velocity[1] + weight * (vy - self.velocity[1]),
                )
        self.box = box
        self.last_seen = now
        self.best_score = max(self.best_score, detection.score)
        self.hits += 1

    def snapshot(self) -> Track:
        return Track(
            self.id,
            self.label,
            self.class_id,
            self.best_score,
            self.box,
            self.first_seen,
            self.last_seen,
            self.hits,
        )


class IouTracker:
    """Tracks of one camera.

    `velocity_weight` is how fast the velocity estimate follows new evidence (0 turns prediction off).
    The defaults were chosen on the shipped clip at 10 fps; see models/MODEL_CARD.md.
    """

    def __init__(
        self,
        *,
        iou_threshold: float = 0.3,
        min_hits: int = 3,
        max_age: float = 2.0,
        velocity_weight: float = 0.3,
        id_prefix: str = "trk-",
    ) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be within (0, 1], got {iou_threshold}")
        if min_hits < 1:
            raise ValueError(f"min_hits must be >= 1, got {min_hits}")
        if max_age < 0:
            raise ValueError(f"max_age must be >= 0 seconds, got {max_age}")
        if not 0.0 <= velocity_weight <= 1.0:
            raise ValueError(f"velocity_weight must be within [0, 1], got {velocity_weight}")
        self.iou_threshold = iou_threshold
        self.min_hits = min_hits
        self.max_age = max_age
        self.velocity_weight = velocity_weight
        self.id_prefix = id_prefix
        self._tracks: list[_State] = []
        self._now: float | None = None

    @property
    def active(self) -> list[Track]:
        """Confirmed tracks not yet ended."""
        return [state.snapshot() for state in self._tracks if state.confirmed]

    def update(self, detections: Sequence[Detection], now: float) -> TrackUpdate:
        """Feed one frame's detections taken at `now` (seconds, monotonic; e.g. the frame timestamp).

        Call it for every processed frame, also those with no detections: that is how tracks end.
        """
        if self._now is not None and now < self._now:
            # A frame stamped at capture can arrive after an empty update stamped later (a camera
            # that stalled and came back). Crashing the camera loop over that race helps nobody:
            # treat it as no time having passed.
            now = self._now
        self._now = now
        result = TrackUpdate()
        matched = self._match(detections, now)
        survivors: list[_State] = []
        for state in self._tracks:
            detection = matched.get(id(state))
            if detection is not None:
                state.observe(detection, now, self.velocity_weight)
                if state.confirmed:
                    result.updated.append(state.snapshot())
                elif state.hits >= self.min_hits:
                    state.confirmed = True
                    result.started.append(state.snapshot())
                survivors.append(state)
            elif not state.confirmed:
                continue  # hits must be consecutive: a flicker never becomes an event
            elif now - state.last_seen > self.max_age:
                result.ended.append(state.snapshot())
            else:
                survivors.append(state)
        used = {id(detection) for detection in matched.values()}
        for detection in detections:
            if id(detection) in used:
                continue
            state = _State(
                _new_id(self.id_prefix),
                detection.label,
                detection.class_id,
                detection.score,
                detection.box,
                now,
                now,
            )
            if self.min_hits <= 1:
                state.confirmed = True
                result.started.append(state.snapshot())
            survivors.append(state)
        self._tracks = survivors
        return result

    def close(self) -> list[Track]:
        """End every confirmed track (the camera stopped or the agent is shutting down)."""
        ended = [state.snapshot() for state in self._tracks if state.confirmed]
        self._tracks = []
        return ended

    def _match(self, detections: Sequence[Detection], now: float) -> dict[int, Detection]:
        """Greedy assignment per label: highest IoU pair first, each track and detection used once."""
        matched: dict[int, Detection] = {}
        for label in {detection.label for detection in detections}:
            tracks = [state for state in self._tracks if state.label == label]
            if not tracks:
                continue
            candidates = [detection for detection in detections if detection.label == label]
            overlaps = iou_matrix([state.predicted(now) for state in tracks], [d.box for d in candidates])
            rows, cols = np.nonzero(overlaps >= self.iou_threshold)
            order = np.argsort(-overlaps[rows, cols], kind="stable")
            taken_tracks: set[int] = set()
            taken_detections: set[int] = set()
            for row, col in zip(rows[order].tolist(), cols[order].tolist(), strict=True):
                if row in taken_tracks or col in taken_detections:
                    continue
                taken_tracks.add(row)
                taken_detections.add(col)
                matched[id(tracks[row])] = candidates[col]
        return matched
