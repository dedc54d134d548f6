"""Which agency an alert goes to: the first matching routing rule, by position.

A rule names conditions; each one that is set must match, the unset ones match anything. Time of
day is the command centre's local time (Settings.alert_timezone), because "littering at night goes
to the night patrol" is said in local hours. A window may wrap midnight (22:00-06:00).

The ingest routes a whole batch of alerts with the rules read once for that batch (`load`), not
once per alert: a rule added through the API (on any replica, the rules live in the database)
applies from the next batch on, and nothing has to be invalidated across replicas.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import Alert, RoutingRule


def event_type_matches(pattern: str, event_type: str) -> bool:
    """Exact, or a prefix when the pattern ends in '*' ("detection:*", "camera:*")."""
    if pattern.endswith("*"):
        return event_type.startswith(pattern[:-1])
    return pattern == event_type


def minute_in_window(minute: int, start: int | None, end: int | None) -> bool:
    if start is None or end is None:
        return True
    if start <= end:
        return start <= minute < end
    return minute >= start or minute < end  # overnight


class Routable(Protocol):
    """What a rule is matched against: an alert, or one about to be inserted."""

    @property
    def event_type(self) -> str: ...
    @property
    def rule_id(self) -> str | None: ...
    @property
    def device_id(self) -> str: ...
    @property
    def occurred_at(self) -> datetime: ...


def matches(rule: RoutingRule, alert: Routable, local: datetime) -> bool:
    if rule.event_type is not None and not event_type_matches(rule.event_type, alert.event_type):
        return False
    if rule.rule_id is not None and rule.rule_id != alert.rule_id:
        return False
    if rule.device_id is not None and rule.device_id != alert.device_id:
        return False
    if rule.site is not None and not alert.device_id.startswith(rule.site):
        return False
    return minute_in_window(local.hour * 60 + local.minute, rule.from_minute, rule.to_minute)


def load(session: Session) -> list[RoutingRule]:
    """Every rule, in the order they are tried."""
    return list(session.scalars(select(RoutingRule).order_by(RoutingRule.position, RoutingRule.id)))


def choose_from(rules: list[RoutingRule], alert: Routable, tz: ZoneInfo) -> int | None:
    """The agency id of the first matching rule, or None (the operator picks one by hand)."""
    local = alert.occurred_at.astimezone(tz)
    for rule in rules:
        if matches(rule, alert, local):
            return rule.agency_id
    return None


def choose(session: Session, alert: Alert, tz: ZoneInfo) -> int | None:
    """`choose_from` with the rules as they are now in the database."""
    return choose_from(load(session), alert, tz)
