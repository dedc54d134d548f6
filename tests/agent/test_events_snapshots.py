"""Event lifecycle, snapshots and privacy: what leaves the box, checked on the bytes that leave it.

The agent test runs the real agent (real NanoDet on the shipped clip) with a privacy mask and reads
the snapshot messages from its outbox: those payloads are byte for byte what the uplink publishes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from polewatch.agent.config import ConfigError, parse_config
from polewatch.agent.inference import load_detector
from polewatch.agent.inference.detector import Detection
from polewatch.agent.inference.events import EventLifecycle
from polewatch.agent.inference.snapshot import Redaction, encode_jpeg, redact
from polewatch.agent.inference.tracker import Track, TrackUpdate
from polewatch.agent.runtime import Agent
from polewatch.protocol import (
    CORE_KINDS,
    KINDS,
    DetectionMessage,
    MessageError,
    Snapshot,
    SnapshotMessage,
    build,
    decode,
    encode,
)
from support.footage import SAMPLE_CLIP, read_frames
from support.ports import free_port

Image = npt.NDArray[np.uint8]
# The top right quarter of the picture is a neighbour's garden: it must never leave the box.
MASK = [[0.5, 0.0], [1.0, 0.0], [1.0, 0.5], [0.5, 0.5]]


@pytest.fixture(scope="module")
def frame() -> Image:
    frames = read_frames(SAMPLE_CLIP, every=50)
    return frames[3]


def _track(
    track_id: str = "t1", score: float = 0.5, box: tuple[float, float, float, float] = (10, 10, 50, 90)
) -> Track:
    return Track(track_id, "person", 0, score, box, 0.0, 0.0, 3)


def _det(score: float, box: tuple[float, float, float, float] = (10, 10, 50, 90)) -> Detection:
    return Detection("person", 0, score, *box)


# --- lifecycle -----------------------------------------------------------------------------------------


def test_updates_come_at_most_every_n_seconds_with_only_better_pictures(frame: Image) -> None:
    events = EventLifecycle(update_every_s=2.0)
    start = events.step(TrackUpdate(started=[_track(score=0.5)]), 0.0, frame, [_det(0.5)], 100.0)
    assert [(m.phase, m.picture is not None) for m in start] == [("start", True)]
    assert start[0].picture is not None and start[0].picture.score == 0.5

    out = []
    for i in range(1, 21):  # 0.2 s apart for 4 s; the score peaks at 0.9 at t = 1.0 s
        now = i * 0.2
        score = 0.9 if i == 5 else 0.6
        out += events.step(
            TrackUpdate(updated=[_track(score=max(0.9 if i >= 5 else 0.6, score))]),
            now,
            frame,
            [_det(score)],
            100.0 + now,
        )
    updates = [m for m in out if m.phase == "update"]
    assert len(updates) == 2  # at 2.0 s and 4.0 s, never more often
    assert updates[0].picture is not None and updates[0].picture.score == 0.9  # the best so far, sent once
    assert updates[1].picture is None  # nothing better since
    end = events.step(TrackUpdate(ended=[_track(score=0.9)]), 6.0)
    assert [(m.phase, m.picture) for m in end] == [("end", None)]
    assert events.open_events == 0


def test_end_carries_a_better_picture_seen_after_the_last_update(frame: Image) -> None:
    events = EventLifecycle(update_every_s=60.0)
    events.step(TrackUpdate(started=[_track()]), 0.0, frame, [_det(0.5)], 1.0)
    events.step(TrackUpdate(updated=[_track(score=0.8)]), 0.5, frame, [_det(0.8)], 1.5)
    end = events.step(TrackUpdate(ended=[_track(score=0.8)]), 3.0)
    assert end[0].phase == "end" and end[0].picture is not None and end[0].picture.score == 0.8


def test_without_snapshots_events_carry_no_pictures(frame: Image) -> None:
    events = EventLifecycle(snapshots=False)
    out = events.step(TrackUpdate(started=[_track()]), 0.0, frame, [_det(0.5)], 1.0)
    assert out[0].picture is None


# --- redaction and size --------------------------------------------------------------------------------


def _sharpness(image: Image) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


def test_people_are_blurred_and_nothing_else_changes(frame: Image) -> None:
    detector = load_detector(labels=["person", "car"])
    found = detector.detect(frame)
    people = [d for d in found if d.label == "person"]
    assert people, "the frame must show someone"
    redacted, done = redact(frame, found, Redaction(blur_labels=frozenset({"person"})))
    assert done == ["blur:person"]
    mask = np.zeros(frame.shape[:2], bool)
    for d in people:
        x1, y1, x2, y2 = (round(v) for v in d.box)
        if (x2 - x1) * (y2 - y1) >= 400:
            region, original = redacted[y1:y2, x1:x2], frame[y1:y2, x1:x2]
            assert _sharpness(region) < 0.2 * _sharpness(original), d
        mask[max(0, y1) : y2, max(0, x1) : x2] = True
    np.testing.assert_array_equal(redacted[~mask], frame[~mask])
    assert not np.shares_memory(redacted, frame)

    unblurred, done = redact(frame, found, Redaction(blur_labels=frozenset()))
    assert done == [] and np.array_equal(unblurred, frame)


def test_jpeg_is_capped_in_bytes_and_width(frame: Image) -> None:
    data, width, height = encode_jpeg(frame, max_bytes=20_000, max_width=640, quality=90)
    assert len(data) <= 20_000
    assert (width, height) == (640, 480)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None
    assert decoded.shape == (480, 640, 3)
    tiny, width, _ = encode_jpeg(frame, max_bytes=4096, max_width=960, quality=80)
    assert len(tiny) <= 4096 and width < 768  # quality alone could not fit it: scaled down too


# --- the wire --------------------------------------------------------------------------------------------


def _snapshot(jpeg: str) -> dict[str, object]:
    return {
        "camera_id": "cam1",
        "event_id": "t1",
        "phase": "start",
        "label": "person",
        "score": 0.8,
        "box": {"x1": 0.1, "y1": 0.1, "x2": 0.2, "y2": 0.3},
        "frame_time": "2026-11-23T02:14:00Z",
        "width": 64,
        "height": 48,
        "jpeg": jpeg,
    }


def test_snapshot_is_an_opt_in_kind_and_must_hold_a_jpeg(frame: Image) -> None:
    data, *_ = encode_jpeg(frame, max_bytes=30_000, max_width=320, quality=70)
    body = Snapshot.model_validate(_snapshot(base64.b64encode(data).decode()))
    payload = encode(build(body, device_id="pole-17", seq=4))
    assert "snapshot" in KINDS and "snapshot" not in CORE_KINDS
    message = decode(payload, kinds=KINDS)
    assert isinstance(message, SnapshotMessage) and message.body.jpeg_bytes() == data
    with pytest.raises(MessageError, match="unknown message kind 'snapshot'"):
        decode(payload)  # a receiver that did not ask for snapshots
    for bad, problem in ((base64.b64encode(b"GIF89a....").decode(), "no SOI marker"), ("not base64!", "not base64")):
        raw = payload.replace(base64.b64encode(data), bad.encode())
        with pytest.raises(MessageError, match=problem) as info:
            decode(raw, kinds=KINDS)
        assert info.value.reason == "invalid_snapshot"


def test_blur_labels_the_detector_never_reports_are_refused() -> None:
    config = {
        "device_id": "pole-1",
        "state_dir": "/tmp/x",
        "mqtt": {"host": "localhost"},
        "cameras": [{"id": "cam1", "url": "rtsp://cam/1", "privacy": {"blur_labels": ["face"]}}],
    }
    with pytest.raises(ConfigError, match=r"privacy\.blur_labels: face not in detect\.labels"):
        parse_config(config)
    config["cameras"][0]["privacy"] = {"masks": [[[0.1, 0.1], [0.2, 0.2]]]}  # type: ignore[index]
    with pytest.raises(ConfigError, match="mask 0 has 2 points"):
        parse_config(config)


# --- the real agent ----------------------------------------------------------------------------------------


async def test_masked_pixels_are_black_in_every_snapshot_that_leaves_the_box(tmp_path: Path) -> None:
    config = parse_config(
        {
            "device_id": "pole-17",
            "state_dir": str(tmp_path / "state"),
            # Nobody listens there: every message stays in the outbox, where the test reads it.
            "mqtt": {"host": "127.0.0.1", "port": free_port(), "reconnect_max_s": 1},
            "cameras": [
                {
                    "id": "cam1",
                    "url": str(SAMPLE_CLIP),
                    "loop": True,
                    "privacy": {"masks": [MASK], "blur_labels": []},
                    "snapshots": {"max_bytes": 50_000},
                }
            ],
            "detect": {"fps": 5, "update_every_s": 1.0},
        }
    )
    agent = Agent(config)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))

    def snapshots() -> list[SnapshotMessage]:
        found = [decode(p.payload, kinds=KINDS) for p in agent.outbox.peek(5000)]
        return [m for m in found if isinstance(m, SnapshotMessage)]

    try:
        for _ in range(600):
            if len(snapshots()) >= 4 or task.done():
                break
            await asyncio.sleep(0.1)
        pending = agent.outbox.peek(5000)
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)
    assert not task.done() or task.exception() is None
    shots = [decode(p.payload, kinds=KINDS) for p in pending if p.topic.endswith("/up/snapshot")]
    assert len(shots) >= 4
    detections = {m.body.event_id for p in pending if isinstance(m := decode(p.payload, kinds=KINDS), DetectionMessage)}
    for message in shots:
        assert isinstance(message, SnapshotMessage)
        body = message.body
        assert body.event_id in detections  # every picture belongs to an event that was sent
        assert body.redactions == ["masks"]
        data = body.jpeg_bytes()
        assert len(data) <= 50_000
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None
        assert image.shape == (body.height, body.width, 3) == (576, 768, 3)
        # Inside the mask (away from its edge, where JPEG blocks mix both sides): black.
        inside = image[8 : 288 - 8, 384 + 8 : 768 - 8]
        assert inside.max() <= 12, inside.max()
        outside = image[288 + 8 :, :]
        assert outside.std() > 20  # the rest is the street, not a black picture
