"""The wire contract: what both sides rely on, tested without any network."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from polewatch import protocol
from polewatch.protocol import (
    Body,
    Box,
    CameraHealth,
    CameraHealthMessage,
    Detection,
    Health,
    LineCounts,
    MessageError,
    OutboxStatus,
    Presence,
    PriorityCounts,
    RuleEvent,
    RuleEventMessage,
    build,
    decode,
    encode,
    message_id_time_ms,
    new_message_id,
    topics,
)

REPO = Path(__file__).resolve().parents[2]


def _detection(**overrides: object) -> Detection:
    fields: dict[str, object] = {
        "event_id": "t-1",
        "camera_id": "cam1",
        "label": "person",
        "score": 0.8,
        "box": Box(x1=0.1, y1=0.2, x2=0.3, y2=0.6),
        "frame_time": datetime(2026, 11, 23, 2, 14, tzinfo=timezone.utc),
        "frame_width": 768,
        "frame_height": 576,
    }
    fields.update(overrides)
    return Detection.model_validate(fields)


def test_round_trip_keeps_every_field() -> None:
    message = build(_detection(), device_id="pole-17", seq=42)
    back = decode(encode(message), topics.parse(topics.up("pole-17", "detection")))
    assert back == message
    assert back.seq == 42 and back.kind == "detection" and back.v == protocol.SCHEMA_VERSION


def test_message_ids_are_unique_and_time_ordered() -> None:
    ids = [new_message_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    now_ms = datetime.now(timezone.utc).timestamp() * 1000
    assert abs(message_id_time_ms(ids[-1]) - now_ms) < 5000


def test_topics_confine_each_direction_to_one_pattern() -> None:
    assert topics.up("pole-1", "health") == "polewatch/v1/pole-1/up/health"
    assert topics.down("pole-1", "config") == "polewatch/v1/pole-1/down/config"
    assert topics.all_up() == "polewatch/v1/+/up/#"
    parsed = topics.parse("polewatch/v1/pole-1/up/detection")
    assert (parsed.device_id, parsed.direction, parsed.kind) == ("pole-1", "up", "detection")


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("polewatch/v2/pole-1/up/health", "version"),
        ("polewatch/v1/pole-1/sideways/health", "direction"),
        ("polewatch/v1/pole-1/up", "form"),
        ("other/v1/pole-1/up/health", "form"),
        ("polewatch/v1/bad id/up/health", "device id"),
    ],
)
def test_foreign_topics_are_refused_with_a_reason(topic: str, reason: str) -> None:
    with pytest.raises(topics.TopicError, match=reason):
        topics.parse(topic)


@pytest.mark.parametrize("device_id", ["", "a/b", "+", "#", "x" * 65, "-leading"])
def test_device_ids_that_would_break_topics_are_refused(device_id: str) -> None:
    with pytest.raises(ValueError, match="device id"):
        topics.up(device_id, "health")


def test_fields_from_a_newer_peer_are_tolerated() -> None:
    raw = json.loads(encode(build(Presence(state="online"), device_id="pole-1", seq=0)))
    raw["future_envelope_field"] = 1
    raw["body"]["battery"] = 0.5
    message = decode(json.dumps(raw))
    assert isinstance(message.body, Presence) and message.body.state == "online"


def _valid_raw() -> dict[str, object]:
    raw: dict[str, object] = json.loads(encode(build(_detection(), device_id="pole-1", seq=1)))
    return raw


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda r: b"\xff\xfe not json", "not JSON"),
        (lambda r: b"[1, 2]", "JSON list"),
        (lambda r: {**r, "kind": "teleport"}, "unknown message kind"),
        (lambda r: {**r, "v": 2}, "v"),
        (lambda r: {**r, "id": "not-a-uuid"}, "id"),
        (lambda r: {**r, "seq": -1}, "seq"),
        (lambda r: {**r, "sent_at": "2026-11-23T02:14:00"}, "sent_at"),
        (lambda r: {**r, "body": {**r["body"], "score": 7}}, "score"),
        (lambda r: {**r, "body": {**r["body"], "box": {"x1": 0.5, "y1": 0, "x2": 0.1, "y2": 1}}}, "out of order"),
    ],
)
def test_malformed_messages_raise_message_error_with_the_reason(mutate: object, reason: str) -> None:
    mutated = mutate(_valid_raw())  # type: ignore[operator]
    payload = mutated if isinstance(mutated, bytes) else json.dumps(mutated)
    with pytest.raises(MessageError, match=reason) as info:
        decode(payload)
    assert info.value.reason in {"not_json", "not_object", "unknown_kind", "invalid_detection"}


def test_envelope_must_match_the_topic_it_came_on() -> None:
    payload = encode(build(_detection(), device_id="pole-1", seq=1))
    with pytest.raises(MessageError, match="does not match topic device"):
        decode(payload, topics.parse(topics.up("pole-2", "detection")))
    with pytest.raises(MessageError, match="does not match topic kind"):
        decode(payload, topics.parse(topics.up("pole-1", "health")))


def test_health_body_validates_ranges() -> None:
    with pytest.raises(ValueError, match="memory_percent"):
        Health(agent_version="0", uptime_s=1, cpu_percent=1, memory_percent=140, memory_rss_bytes=1,
               disk_percent=1, disk_free_bytes=1)


def _camera_health(**overrides: object) -> CameraHealth:
    fields: dict[str, object] = {
        "camera_id": "cam1",
        "condition": "covered",
        "phase": "end",
        "since": datetime(2026, 11, 23, 2, 14, tzinfo=timezone.utc),
        "until": datetime(2026, 11, 23, 6, 40, tzinfo=timezone.utc),
        "variant": "black",
        "value": 112.5,
        "threshold": 20.0,
        "detail": "picture back: mean grey 112.5",
    }
    fields.update(overrides)
    return CameraHealth.model_validate(fields)


def test_camera_health_round_trips_on_its_own_topic() -> None:
    message = build(_camera_health(), device_id="pole-17", seq=7)
    assert isinstance(message, CameraHealthMessage) and message.kind == "camera_health"
    assert message.kind in protocol.KINDS
    back = decode(encode(message), topics.parse(topics.up("pole-17", "camera_health")))
    assert back == message
    assert isinstance(back.body, CameraHealth) and back.body.since.hour == 2 and back.body.variant == "black"
    # A start has no `until`, and the optional fields may be left out.
    minimal = build(
        CameraHealth(camera_id="cam1", condition="low_fps", phase="start", since=datetime.now(timezone.utc)),
        device_id="pole-17",
        seq=8,
    )
    assert decode(encode(minimal)) == minimal


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"condition": "on_fire"}, "condition"),
        ({"phase": "update"}, "phase"),
        ({"variant": "purple"}, "variant"),
        ({"since": "2026-11-23T02:14:00"}, "since"),
        ({"until": "2026-11-23T01:00:00Z"}, "until is before since"),
        ({"camera_id": ""}, "camera_id"),
        ({"detail": "x" * 301}, "detail"),
    ],
)
def test_invalid_camera_health_is_rejected_with_the_reason(change: dict[str, object], reason: str) -> None:
    raw = json.loads(encode(build(_camera_health(), device_id="pole-1", seq=1)))
    raw["body"].update(change)
    with pytest.raises(MessageError, match=reason) as info:
        decode(json.dumps(raw))
    assert info.value.reason == "invalid_camera_health"


def _rule_event(**overrides: object) -> RuleEvent:
    fields: dict[str, object] = {
        "camera_id": "cam1",
        "rule_id": "walkway",
        "rule_type": "line",
        "event": "cross",
        "event_id": "trk-7",
        "label": "person",
        "box": Box(x1=0.1, y1=0.2, x2=0.3, y2=0.6),
        "frame_time": datetime(2026, 11, 23, 2, 14, tzinfo=timezone.utc),
        "frame_width": 768,
        "frame_height": 576,
        "direction": "a_to_b",
        "counts": {"person": LineCounts(a_to_b=4, b_to_a=7)},
        "counts_since": datetime(2026, 11, 23, 0, 0, tzinfo=timezone.utc),
    }
    fields.update(overrides)
    return RuleEvent.model_validate(fields)


def test_rule_events_round_trip_for_a_receiver_that_asks_for_them() -> None:
    message = build(_rule_event(), device_id="pole-17", seq=3)
    assert message.kind == "rule_event"
    back = decode(encode(message), topics.parse(topics.up("pole-17", "rule_event")), kinds=protocol.KINDS)
    assert back == message
    assert isinstance(back, RuleEventMessage) and back.body.counts == {"person": LineCounts(a_to_b=4, b_to_a=7)}


def test_a_receiver_that_does_not_ask_for_rule_events_rejects_them_as_unknown() -> None:
    """The fleet server of this release decodes only the core kinds: it counts a rule event as unknown_kind
    and acknowledges it, never mistakes it for a kind it stores."""
    payload = encode(build(_rule_event(), device_id="pole-17", seq=3))
    with pytest.raises(MessageError, match="unknown message kind 'rule_event'") as info:
        decode(payload)
    assert info.value.reason == "unknown_kind"
    assert "rule_event" in protocol.KINDS and "rule_event" not in protocol.CORE_KINDS


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"event": "enter"}, "does not belong to a line rule"),
        ({"direction": None}, "direction is required"),
        ({"rule_type": "zone", "event": "enter"}, "direction is required for cross events and only"),
        ({"rule_type": "loiter", "event": "cross"}, "does not belong to a loiter rule"),
        ({"dwell_s": -1.0}, "dwell_s"),
        ({"counts": {"person": {"a_to_b": -1, "b_to_a": 0}}}, "a_to_b"),
    ],
)
def test_rule_event_bodies_are_consistent(overrides: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        _rule_event(**overrides)
    _rule_event(rule_type="left_behind", event="left_behind_start", direction=None, counts=None, dwell_s=31.5)


def _health(**extra: object) -> Health:
    return Health(agent_version="0.1.0", uptime_s=1, cpu_percent=1, memory_percent=1, memory_rss_bytes=1,
                  disk_percent=1, disk_free_bytes=1, outbox_pending=3, **extra)


def test_outbox_details_in_health_are_optional_both_ways() -> None:
    """New outbox fields must not break an older peer in either direction."""
    # An older agent sends no `outbox`: a newer server reads it, with the defaults.
    raw = json.loads(encode(build(_health(), device_id="pole-1", seq=1)))
    del raw["body"]["outbox"]
    old = decode(json.dumps(raw))
    assert isinstance(old.body, Health) and old.body.outbox is None and old.body.outbox_pending == 3

    # A newer agent sends it: it survives the wire whole...
    status = OutboxStatus(
        storage="disk_full",
        pending=PriorityCounts(alert=5),
        evicted=PriorityCounts(telemetry=340),
        dropped=PriorityCounts(telemetry=2),
        corrupt_files=1,
        write_bytes_per_hour=1.5e6,
    )
    raw = json.loads(encode(build(_health(outbox=status), device_id="pole-1", seq=2)))
    new = decode(json.dumps(raw))
    assert isinstance(new.body, Health) and new.body.outbox == status

    # ...and a receiver that knows only the older fields (as an older server) still validates it.
    class OlderHealth(Body):
        agent_version: str
        outbox_pending: int = 0

    assert OlderHealth.model_validate(raw["body"]).outbox_pending == 3
    raw["body"]["outbox"]["fields_of_a_later_version"] = True
    assert isinstance(decode(json.dumps(raw)).body, Health)


def test_checked_in_json_schema_is_current() -> None:
    """docs/schema/messages-v1.json must be what the models export (regenerate: polewatch protocol schema)."""
    checked_in = json.loads((REPO / "docs" / "schema" / "messages-v1.json").read_text())
    assert checked_in == protocol.json_schema()
    assert set(checked_in["discriminator"]["mapping"]) == set(protocol.KINDS)
