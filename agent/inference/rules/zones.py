"""Zone entry and exit, and loitering: which tracks stand inside a polygon, and for how long.

The anchor (by default the bottom centre of the box: the feet) decides. A detector's box jitters by a
few pixels from frame to frame, so a person standing on the edge would enter and leave at every
frame; instead the anchor must be `hysteresis` times the box height inside to enter and as far
outside to leave, and in the band between nothing changes. Scaling the band by the box keeps it
right for a person near the camera and one far away alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from polewatch.agent.config import LoiterRuleConfig, ZoneRuleConfig

from ..tracker import Track
from .base import EventName, LabelFilter, Polygon, RuleHit, RuleInput, anchor_point, box_height


class _Membership:
    """Inside, outside, or on the edge (None): the hysteresis band of the module docstring."""

    def __init__(self, config: ZoneRuleConfig | LoiterRuleConfig) -> None:
        self.polygon = Polygon(config.polygon, config.units)
        self.anchor = config.anchor
        self.hysteresis = config.hysteresis
        self.accepts = LabelFilter(config.labels)

    def resize(self, frame: RuleInput) -> None:
        self.polygon.resize(frame.width, frame.height)

    def inside(self, track: Track) -> bool | None:
        distance = self.polygon.distance(anchor_point(track.box, self.anchor))
        margin = self.hysteresis * box_height(track.box)
        if distance > margin:
            return True
        if distance < -margin:
            return False
        return None


class ZoneRule:
    """`enter` when a track's anchor is firmly inside the zone, `exit` when it is firmly outside again
    or the track is lost while inside (so every enter has its exit)."""

    def __init__(self, config: ZoneRuleConfig) -> None:
        self.id = config.id
        self._zone = _Membership(config)
        self._entered: dict[str, float] = {}  # track id -> when it entered

    def update(self, frame: RuleInput) -> list[RuleHit]:
        self._zone.resize(frame)
        hits: list[RuleHit] = []
        for track in frame.seen:
            if not self._zone.accepts(track.label):
                continue
            inside = self._zone.inside(track)
            entered = self._entered.get(track.id)
            if inside is True and entered is None:
                self._entered[track.id] = frame.now
                hits.append(self._hit("enter", track, frame.now))
            elif inside is False and entered is not None:
                del self._entered[track.id]
                hits.append(self._hit("exit", track, frame.now, dwell_s=frame.now - entered))
        for track in frame.ended:
            entered = self._entered.pop(track.id, None)
            if entered is not None:
                hits.append(self._hit("exit", track, frame.now, dwell_s=max(track.last_seen - entered, 0.0)))
        return hits

    def _hit(self, event: EventName, track: Track, now: float, *, dwell_s: float | None = None) -> RuleHit:
        return RuleHit(self.id, "zone", event, track.id, track.label, track.box, now, dwell_s=dwell_s)


@dataclass(slots=True)
class _Stay:
    entered: float
    reported: bool = False


class LoiterRule:
    """`loiter_start` once per track per zone when it has been inside for `dwell_s`; `loiter_end` when
    that track leaves or is lost. A track that leaves before `dwell_s` produces nothing."""

    def __init__(self, config: LoiterRuleConfig) -> None:
        self.id = config.id
        self.dwell_s = config.dwell_s
        self._zone = _Membership(config)
        self._stays: dict[str, _Stay] = {}

    def update(self, frame: RuleInput) -> list[RuleHit]:
        self._zone.resize(frame)
        hits: list[RuleHit] = []
        for track in frame.seen:
            if not self._zone.accepts(track.label):
                continue
            inside = self._zone.inside(track)
            stay = self._stays.get(track.id)
            if inside is True and stay is None:
                self._stays[track.id] = stay = _Stay(frame.now)
            if stay is None:
                continue
            if inside is False:
                del self._stays[track.id]
                if stay.reported:
                    hits.append(self._hit("loiter_end", track, frame.now, frame.now - stay.entered))
            elif not stay.reported and frame.now - stay.entered >= self.dwell_s:
                stay.reported = True
                hits.append(self._hit("loiter_start", track, frame.now, frame.now - stay.entered))
        for track in frame.ended:
            stay = self._stays.pop(track.id, None)
            if stay is not None and stay.reported:
                hits.append(self._hit("loiter_end", track, frame.now, max(track.last_seen - stay.entered, 0.0)))
        return hits

    def _hit(self, event: EventName, track: Track, now: float, dwell_s: float) -> RuleHit:
        return RuleHit(self.id, "loiter", event, track.id, track.label, track.box, now, dwell_s=dwell_s)
