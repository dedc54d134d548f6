"""Per-camera rules over the tracker's output: zones, loitering, line crossing, objects left behind.

Configured in the agent's config (`cameras[].rules`, agent/config.py); the runtime runs a camera's
`RuleEngine` after its tracker and sends every `RuleHit` as a `rule_event` message.
"""

from __future__ import annotations

from .base import RuleHit, RuleInput
from .engine import RuleEngine, build_rule
from .left_behind import LeftBehindRule
from .lines import LineRule
from .zones import LoiterRule, ZoneRule

__all__ = ["LeftBehindRule", "LineRule", "LoiterRule", "RuleEngine", "RuleHit", "RuleInput", "ZoneRule", "build_rule"]
