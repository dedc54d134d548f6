"""Motion gating on real footage: the detector is skipped where nothing moves, and no event is lost.

The footage is the shipped clip (pedestrians walk through it all the time) with quiet stretches cut
in: the empty street (the median of the clip's frames, which removes everyone walking) with sensor
noise on every frame, as a camera shows a street when nobody is there. The same frames at the
agent's 5 fps go through detector → tracker → event lifecycle twice, with and without the gate;
the events must be the same.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest

from polewatch.agent.config import DEFAULT_LABELS
from polewatch.agent.inference import OnnxDetector, load_detector
from polewatch.agent.inference.boxes import iou
from polewatch.agent.inference.detector import Detection
from polewatch.agent.inference.events import EventLifecycle, EventMessage
from polewatch.agent.inference.motion import MotionDetector, MotionGatedDetector, MotionSettings
from polewatch.agent.inference.tracker import IouTracker
from support.footage import SAMPLE_CLIP, read_frames

Image = npt.NDArray[np.uint8]
FPS = 5.0


@pytest.fixture(scope="module")
def clip() -> list[Image]:
    return read_frames(SAMPLE_CLIP, every=2)  # 10 fps footage at 5 fps: 225 frames, 45 s


def empty_street(clip: list[Image], count: int, seed: int) -> Iterator[Image]:
    background = np.median(np.stack(clip[::5]), axis=0)
    rng = np.random.default_rng(seed)
    for _ in range(count):
        noisy = background + rng.normal(0.0, 2.0, background.shape)
        yield np.clip(noisy, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def footage(clip: list[Image]) -> list[Image]:
    """12 s quiet, 20 s of the clip, 12 s quiet, 15 s more of the clip: 295 frames at 5 fps."""
    return [
        *empty_street(clip, 60, 1),
        *clip[:100],
        *empty_street(clip, 60, 2),
        *clip[120:195],
    ]


@pytest.fixture(scope="module")
def detector() -> OnnxDetector:
    return load_detector(labels=DEFAULT_LABELS)  # what the agent reports by default


def run(frames: list[Image], detect: object) -> tuple[list[EventMessage], int]:
    tracker = IouTracker()
    events = EventLifecycle(update_every_s=1000.0, snapshots=False)
    out: list[EventMessage] = []
    for i, frame in enumerate(frames):
        now = i / FPS
        found: list[Detection] = (
            detect.detect(frame, now) if isinstance(detect, MotionGatedDetector) else detect.detect(frame)  # type: ignore[attr-defined]
        )
        out += events.step(tracker.update(found, now), now)
    now = len(frames) / FPS
    out += [EventMessage("end", track, None) for track in tracker.close()]
    return out, len(frames)


def test_a_still_street_shows_no_motion_and_a_walker_does(clip: list[Image]) -> None:
    motion = MotionDetector()
    quiet = list(empty_street(clip, 30, 3))
    assert motion.regions(quiet[0]) is None  # the first frame only starts the background
    assert all(motion.regions(frame) == [] for frame in quiet[1:]), "sensor noise must not count as motion"
    moving = [motion.regions(frame) for frame in clip[:20]]
    assert all(moving[1:]), "people walk through every frame of the clip"


def test_gating_skips_the_quiet_stretches_and_loses_no_event(footage: list[Image], detector: OnnxDetector) -> None:
    plain, _ = run(footage, detector)
    gate = MotionGatedDetector(detector, MotionSettings(recheck_s=5.0))
    gated, frames = run(footage, gate)

    # The quiet 24 s (120 frames) of 59 s are skipped, but for a re-check every 5 s and the first
    # seconds after people left, while the background forgets them.
    assert gate.stats.frames == frames
    assert gate.stats.skipped >= 90, gate.stats
    assert gate.stats.rechecks >= 3, gate.stats

    starts = [m.track for m in plain if m.phase == "start"]
    gated_starts = [m.track for m in gated if m.phase == "start"]
    assert len(starts) >= 10, "the footage must have events for the comparison to mean anything"
    # Every event of the ungated run is in the gated one: same label, same time, same place.
    for track in starts:
        match = [
            t
            for t in gated_starts
            if t.label == track.label and abs(t.first_seen - track.first_seen) <= 0.21 and iou(t.box, track.box) >= 0.5
        ]
        assert match, f"event lost with gating: {track}"
    assert len(gated_starts) == len(starts)
    # Every event ended in both runs, and the parked vehicles stayed one event each through the quiet.
    assert sum(m.phase == "end" for m in gated) == len(gated_starts)
