"""The rules inside the running agent: after the tracker, into the outbox as `rule_event` messages."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy.typing as npt
import pytest

from polewatch.agent.config import parse_config
from polewatch.agent.inference import Detection
from polewatch.agent.inference.rules import RuleHit
from polewatch.agent.runtime import Agent, rule_event
from polewatch.protocol import KINDS, DetectionMessage, LineCounts, RuleEventMessage, build, decode, encode
from support.ports import free_port

CLIP = Path(__file__).resolve().parents[2] / "polewatch" / "samples" / "vtest-clip.mp4"
SINCE = datetime(2026, 11, 23, 2, 0, tzinfo=timezone.utc)
NOW = datetime(2026, 11, 23, 2, 14, tzinfo=timezone.utc)


def test_a_crossing_becomes_a_rule_event_with_a_normalised_box_and_its_counts() -> None:
    hit = RuleHit("walkway", "line", "cross", "trk-9", "person", (384.0, 288.0, 480.0, 600.0), 12.5,
                  direction="b_to_a", counts={"person": (3, 4), "bicycle": (0, 1)})
    body = rule_event("cam1", hit, 768, 576, NOW, SINCE)
    assert (body.camera_id, body.rule_id, body.rule_type, body.event, body.event_id, body.label) == (
        "cam1", "walkway", "line", "cross", "trk-9", "person"
    )
    assert (body.box.x1, body.box.y1, body.box.x2, body.box.y2) == (0.5, 0.5, 0.625, 1.0), "clipped to the frame"
    assert body.direction == "b_to_a"
    assert body.counts == {"person": LineCounts(a_to_b=3, b_to_a=4), "bicycle": LineCounts(a_to_b=0, b_to_a=1)}
    assert (body.counts_since, body.frame_time, body.frame_width, body.frame_height) == (SINCE, NOW, 768, 576)
    assert body.dwell_s is None
    message = build(body, device_id="pole-17", seq=1)
    assert decode(encode(message), kinds=KINDS) == message


def test_other_events_carry_no_counts_and_a_rounded_dwell() -> None:
    hit = RuleHit("litter", "left_behind", "left_behind_start", "obj-1", "dog", (10, 10, 40, 60), 3.0,
                  dwell_s=17.23456)
    body = rule_event("cam1", hit, 768, 576, NOW, SINCE)
    assert (body.event, body.dwell_s, body.counts, body.counts_since, body.direction) == (
        "left_behind_start", 17.23, None, None, None
    )


class Walker:
    """A detector for the runtime test: one person walking left to right across the frame, 16 px per
    frame (a 40 px wide box, so the tracker follows it), again and again; the frames are the clip's."""

    provider = "fake"
    labels = ("person",)
    last_inference_ms = 1.0
    mean_inference_ms = 1.0

    def __init__(self) -> None:
        self.calls = 0

    def detect(self, frame_bgr: npt.NDArray[Any]) -> list[Detection]:
        x = 16 * (self.calls % 46)
        self.calls += 1
        return [Detection("person", 0, 0.9, x, 300, x + 40, 400)]


async def test_the_agent_sends_rule_events_through_its_outbox(tmp_path: Path) -> None:
    config = parse_config(
        {
            "device_id": "pole-17",
            "state_dir": str(tmp_path / "state"),
            # Nobody listens there: every message stays in the outbox, where the test reads it.
            "mqtt": {"host": "127.0.0.1", "port": free_port(), "reconnect_max_s": 1},
            "cameras": [
                {
                    "id": "cam1",
                    "url": str(CLIP),
                    "loop": True,
                    "rules": [
                        {"type": "line", "id": "middle", "points": [[0.5, 0.1], [0.5, 0.9]]},
                        {"type": "zone", "id": "right", "polygon": [[0.6, 0], [1, 0], [1, 1], [0.6, 1]]},
                    ],
                }
            ],
            "detect": {"fps": 10},
        }
    )
    agent = Agent(config, detector=Walker())
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))

    def rule_events() -> list[RuleEventMessage]:
        found = [decode(p.payload, kinds=KINDS) for p in agent.outbox.peek(1000)]
        return [m for m in found if isinstance(m, RuleEventMessage)]

    try:
        for _ in range(300):
            if len(rule_events()) >= 2 or task.done():
                break
            await asyncio.sleep(0.1)
        pending = agent.outbox.peek(1000)
        events = rule_events()
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)
    assert not task.done() or task.exception() is None
    cross, enter = sorted(events[:2], key=lambda m: m.body.rule_id)
    # The line is drawn top to bottom: A is on the right, so walking right is b_to_a.
    assert (cross.body.rule_id, cross.body.event, cross.body.direction) == ("middle", "cross", "b_to_a")
    assert cross.body.counts == {"person": LineCounts(a_to_b=0, b_to_a=1)}
    assert cross.body.counts_since is not None and cross.body.counts_since <= cross.body.frame_time
    assert (cross.body.camera_id, cross.body.frame_width, cross.body.frame_height) == ("cam1", 768, 576)
    assert 0.5 <= cross.body.box.x1 <= 0.5 + 80 / 768 and cross.body.box.y2 == pytest.approx(400 / 576)
    assert (enter.body.rule_id, enter.body.event, enter.body.event_id) == ("right", "enter", cross.body.event_id)
    starts = [decode(p.payload) for p in pending if p.topic.endswith("/up/detection")]
    assert any(isinstance(m, DetectionMessage) and m.body.event_id == cross.body.event_id for m in starts), (
        "the rule event names the same track as the detection"
    )
    assert all(p.topic == "polewatch/v1/pole-17/up/rule_event" for p in pending if b'"rule_event"' in p.payload)
    assert agent.rule_events_accepted >= 2
