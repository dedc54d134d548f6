"""Objects left behind: a new object that stays still, with nobody near it, for `after_s` seconds.

Built around how a detector really sees a bag on the ground (measured with NanoDet on the shipped
clip, see tests/agent/test_rules_footage.py):

- It is detected intermittently, often below the tracker's three consecutive hits, so it would
  never become a track. Objects are therefore followed here from the raw detections, by place: a
  detection overlapping an object's box by `still_iou` is that object, whatever the tracker says.
- Its label flickers (one white bollard is a "dog" in one frame and a "bird" in the next, a
  boulder is "sheep", "dog" and "bird"), so matching ignores the label; the event reports the most
  frequent one.
- It is missed for seconds at a time, and hidden while someone stands in front of it; it only
  counts as gone after `absent_s` with neither a detection nor a person covering it (once it has
  been seen a few times: a stray detection is not kept alive by the people walking over it).
- The scene is full of static things the detector sometimes notices (the boulder: 37 detections
  over 45 s, with gaps of up to 9 s). Whatever is seen in the first `learn_s` seconds is taken as
  part of the scene and remembered for `SCENE_MEMORY_S` after it was last seen, so a flickering
  boulder is never "new".

Time with a person near the object (within `attend_distance` of their own heights) does not count
towards `after_s`; time with nobody near does. A passer-by pauses the clock, it does not reset it:
in a busy walkway a reset would mean litter is never reported.
"""

from __future__ import annotations

import itertools
import math
import uuid
from collections import Counter
from dataclasses import dataclass, field

from polewatch.agent.config import LeftBehindRuleConfig

from ..boxes import iou_matrix
from ..tracker import Box
from .base import EventName, LabelFilter, Polygon, RuleHit, RuleInput

# How long a part of the scene is remembered after the detector last noticed it.
SCENE_MEMORY_S = 600.0
# Only an object seen this often is known to be there when a person hides it; a single stray
# detection (the shipped model calls walkers' feet "skis") is not kept alive by the walkers.
HIDDEN_AFTER_SIGHTINGS = 3
# A "person" box overlapping the object this much is the object itself mistaken for a person (the
# shipped model takes traffic cones for people), not someone attending it.
SELF_IOU = 0.5

_RUN_ID = uuid.uuid4().hex[:8]
_COUNTER = itertools.count(1)


@dataclass(slots=True)
class _Object:
    id: str
    box: Box  # where it is: the mean of the boxes it was seen with
    first_seen: float
    scene: bool
    last_seen: float = 0.0
    last_evidence: float = 0.0  # seen, or hidden behind a person
    clock: float = 0.0  # up to when unattended time has been counted
    unattended_s: float = 0.0
    sightings: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    reported: bool = False

    def see(self, box: Box, labels: list[str], now: float) -> None:
        weight = 1.0 / min(self.sightings + 1, 20)  # a mean, then a slow moving average
        self.box = (
            self.box[0] + weight * (box[0] - self.box[0]),
            self.box[1] + weight * (box[1] - self.box[1]),
            self.box[2] + weight * (box[2] - self.box[2]),
            self.box[3] + weight * (box[3] - self.box[3]),
        )
        self.sightings += 1
        self.labels.update(set(labels))
        self.last_seen = self.last_evidence = now

    @property
    def label(self) -> str:
        return self.labels.most_common(1)[0][0]


def _centre(box: Box) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def _covers(person: Box, obj: Box) -> bool:
    x, y = _centre(obj)
    return person[0] <= x <= person[2] and person[1] <= y <= person[3]


def _near(person: Box, obj: Box, heights: float) -> bool:
    x, y = _centre(obj)
    dx = max(person[0] - x, 0.0, x - person[2])
    dy = max(person[1] - y, 0.0, y - person[3])
    return math.hypot(dx, dy) <= heights * (person[3] - person[1])


class LeftBehindRule:
    """`left_behind_start` once per object when it has been there, still and unattended, for
    `after_s`; `left_behind_end` when it is gone. See the module docstring for why it works this way."""

    def __init__(self, config: LeftBehindRuleConfig) -> None:
        self.id = config.id
        self.config = config
        self.watches = LabelFilter(config.labels, except_=config.attended_by)
        self.attends = LabelFilter(config.attended_by)
        self.region = Polygon(config.polygon, config.units) if config.polygon is not None else None
        self._objects: list[_Object] = []
        self._started: float | None = None

    @property
    def objects(self) -> int:
        """How many objects (scene included) the rule is following: for tests and diagnostics."""
        return len(self._objects)

    def update(self, frame: RuleInput) -> list[RuleHit]:
        if frame.detections is None:
            return []  # no picture: the objects are neither there nor gone
        now = frame.now
        if self._started is None:
            self._started = now
        if self.region is not None:
            self.region.resize(frame.width, frame.height)
        candidates = [d for d in frame.detections if self.watches(d.label) and self._in_region(d.box)]
        self._match([d.box for d in candidates], [d.label for d in candidates], now)
        people = [t.box for t in frame.seen if self.attends(t.label)]
        hits: list[RuleHit] = []
        kept: list[_Object] = []
        for obj in self._objects:
            around = [p for p in people if iou_matrix([p], [obj.box])[0, 0] < SELF_IOU]
            if obj.sightings >= HIDDEN_AFTER_SIGHTINGS and any(_covers(p, obj.box) for p in around):
                obj.last_evidence = now
            if now - obj.last_evidence > (SCENE_MEMORY_S if obj.scene else self.config.absent_s):
                if obj.reported:
                    hits.append(self._hit("left_behind_end", obj, now, obj.last_seen - obj.first_seen))
                continue
            kept.append(obj)
            if obj.scene:
                continue
            if not any(_near(p, obj.box, self.config.attend_distance) for p in around):
                obj.unattended_s += now - obj.clock
            obj.clock = now
            if not obj.reported and obj.unattended_s >= self.config.after_s:
                obj.reported = True
                hits.append(self._hit("left_behind_start", obj, now, now - obj.first_seen))
        self._objects = kept
        return hits

    def _in_region(self, box: Box) -> bool:
        return self.region is None or self.region.distance(_centre(box)) >= 0

    def _match(self, boxes: list[Box], labels: list[str], now: float) -> None:
        """Every detection goes to the object it overlaps most (at least `still_iou`), several
        detections to one object if they must (one object under two labels in the same frame);
        the rest are new objects."""
        if not boxes:
            return
        threshold = self.config.still_iou
        found: dict[int, list[int]] = {}  # object index -> detection indexes
        unmatched: list[int] = []
        overlaps = iou_matrix([o.box for o in self._objects], boxes)  # [objects, detections]
        for j in range(len(boxes)):
            i = int(overlaps[:, j].argmax()) if self._objects else -1
            if i >= 0 and overlaps[i, j] >= threshold:
                found.setdefault(i, []).append(j)
            else:
                unmatched.append(j)
        for i, js in found.items():
            best = max(js, key=lambda j: float(overlaps[i, j]))
            self._objects[i].see(boxes[best], [labels[j] for j in js], now)
        fresh: list[_Object] = []
        scene = self._started is not None and now - self._started < self.config.learn_s
        for j in unmatched:
            same = [o for o in fresh if iou_matrix([o.box], [boxes[j]])[0, 0] >= threshold]
            if same:
                same[0].labels.update([labels[j]])
                continue
            obj = _Object(f"obj-{_RUN_ID}-{next(_COUNTER)}", boxes[j], now, scene, clock=now)
            obj.see(boxes[j], [labels[j]], now)
            fresh.append(obj)
        self._objects.extend(fresh)

    def _hit(self, event: EventName, obj: _Object, now: float, dwell_s: float) -> RuleHit:
        return RuleHit(self.id, "left_behind", event, obj.id, obj.label, obj.box, now, dwell_s=max(dwell_s, 0.0))
