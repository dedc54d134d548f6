"""All the rules of one camera, run after its tracker on every processed frame."""

from __future__ import annotations

from collections.abc import Sequence

from polewatch.agent.config import (
    LeftBehindRuleConfig,
    LineRuleConfig,
    LoiterRuleConfig,
    RuleConfig,
    ZoneRuleConfig,
)

from ..detector import Detection
from ..tracker import TrackUpdate
from .base import Rule, RuleHit, RuleInput
from .left_behind import LeftBehindRule
from .lines import LineRule
from .zones import LoiterRule, ZoneRule


def build_rule(config: RuleConfig) -> Rule:
    if isinstance(config, ZoneRuleConfig):
        return ZoneRule(config)
    if isinstance(config, LoiterRuleConfig):
        return LoiterRule(config)
    if isinstance(config, LineRuleConfig):
        return LineRule(config)
    if isinstance(config, LeftBehindRuleConfig):
        return LeftBehindRule(config)
    raise TypeError(f"unknown rule config {type(config).__name__}")


class RuleEngine:
    """Feeds each frame's tracks and detections to every rule of a camera, in config order."""

    def __init__(self, rules: Sequence[RuleConfig]) -> None:
        self.rules = [build_rule(config) for config in rules]
        self._size: tuple[int, int] | None = None
        self._now: float | None = None

    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height) of the last frame: what the rules' pixels refer to."""
        return self._size

    def update(
        self,
        update: TrackUpdate,
        detections: Sequence[Detection] | None,
        now: float,
        size: tuple[int, int] | None = None,
    ) -> list[RuleHit]:
        """One frame: the tracker's update for it, its raw detections, its monotonic time and its
        (width, height). With no picture (a stalled camera) pass detections=None and no size: tracks
        that end still close their zones, while the left-object rules wait for a picture."""
        if self._now is not None and now < self._now:
            # A frame stamped at capture can come after a no-picture update stamped later (see the
            # tracker): take it as no time passing, so that no dwell or clock ever runs backwards.
            now = self._now
        self._now = now
        if size is not None:
            self._size = size
        if self._size is None or not self.rules:
            return []  # no frame yet, so no track either
        frame = RuleInput(
            now, self._size[0], self._size[1], [*update.started, *update.updated], update.ended, detections
        )
        hits: list[RuleHit] = []
        for rule in self.rules:
            hits.extend(rule.update(frame))
        return hits
