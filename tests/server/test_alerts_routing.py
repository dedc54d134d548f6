"""Routing rules' matching, condition by condition (the end-to-end routing is in test_alerts.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from polewatch.fleet_server.models import Alert, RoutingRule
from polewatch.fleet_server.routing import event_type_matches, matches, minute_in_window

pytestmark = pytest.mark.server
WITA = timezone(timedelta(hours=8))


def alert(**kw: object) -> Alert:
    values: dict[str, object] = {"event_type": "zone:enter", "rule_id": "river-bank", "device_id": "bpn-017"}
    values.update(kw)
    return Alert(**values)


def rule(**kw: object) -> RoutingRule:
    return RoutingRule(**kw)


def test_each_set_condition_must_match_and_unset_ones_match_anything() -> None:
    noon = datetime(2026, 11, 23, 12, 0, tzinfo=WITA)
    assert matches(rule(), alert(), noon)
    assert matches(rule(event_type="zone:*", rule_id="river-bank", site="bpn-", device_id="bpn-017"), alert(), noon)
    assert not matches(rule(event_type="zone:exit"), alert(), noon)
    assert not matches(rule(event_type="detection:*"), alert(), noon)
    assert not matches(rule(rule_id="market"), alert(), noon)
    assert not matches(rule(site="smd-"), alert(), noon)
    assert not matches(rule(device_id="bpn-018"), alert(), noon)


def test_time_windows_are_local_and_may_wrap_midnight() -> None:
    night = rule(from_minute=22 * 60, to_minute=6 * 60)
    assert matches(night, alert(), datetime(2026, 11, 23, 23, 30, tzinfo=WITA))
    assert matches(night, alert(), datetime(2026, 11, 24, 5, 59, tzinfo=WITA))
    assert not matches(night, alert(), datetime(2026, 11, 24, 6, 0, tzinfo=WITA))
    assert minute_in_window(8 * 60, 8 * 60, 17 * 60) and not minute_in_window(17 * 60, 8 * 60, 17 * 60)
    assert event_type_matches("camera:covered", "camera:covered") and not event_type_matches("camera", "camera:x")
