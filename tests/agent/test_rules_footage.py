"""Camera rules on real footage: the real NanoDet model and tracker over the shipped clip.

`polewatch/samples/vtest-clip.mp4`: 450 frames, 10 fps, 768x576, pedestrians walking across a campus
road. The detector runs once per test session on every 2nd frame (5 fps, the agent's default rate);
every test replays those detections through its own tracker and rules.

The expected numbers were measured by eye on contact sheets of the clip (a frame every 0.5 s, cropped
around the line, with the line drawn) and are quoted in each test.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy.typing as npt
import pytest
from pydantic import TypeAdapter

from polewatch.agent.config import RuleConfig
from polewatch.agent.inference import Detection, IouTracker, OnnxDetector, TrackUpdate, load_detector
from polewatch.agent.inference.rules import RuleEngine, RuleHit

pytestmark = pytest.mark.slow  # the detector over the clip: about 8 s once, 5 s more for the left object

CLIP = Path(__file__).resolve().parents[2] / "polewatch" / "samples" / "vtest-clip.mp4"
SIZE = (768, 576)
STEP = 2  # every 2nd frame: 5 fps
_RULE = TypeAdapter(RuleConfig)

# A vertical line across the road, 560 px from the left, from the grass edge (bottom) up to the car
# park entrance; drawn bottom to top, so side A is the left of the picture and a_to_b is walking
# right. Every walk along the road passes it; the lamp post, where the tracker splits walks, is
# 130 px away.
WALKWAY_PX = [[560, 450], [560, 140]]
WALKWAY_NORMALISED = [[560 / 768, 450 / 576], [560 / 768, 140 / 576]]


@dataclass(frozen=True)
class Clip:
    frames: list[tuple[int, list[Detection]]]  # (frame index, detections) for every STEP-th frame


def frames() -> Iterator[tuple[int, npt.NDArray[Any]]]:
    capture = cv2.VideoCapture(str(CLIP))
    index = 0
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                return
            yield index, image
            index += 1
    finally:
        capture.release()


@pytest.fixture(scope="session")
def detector() -> OnnxDetector:
    return load_detector()  # every label, the agent's default threshold 0.35


@pytest.fixture(scope="session")
def clip(detector: OnnxDetector) -> Clip:
    assert CLIP.is_file(), f"{CLIP} is missing: it ships with the repository"
    found = [(i, detector.detect(image)) for i, image in frames() if i % STEP == 0]
    assert len(found) == 225
    return Clip(found)


def rule(**fields: Any) -> RuleConfig:
    return _RULE.validate_python(fields)


def replay(
    clip: Clip, rules: list[RuleConfig], *, detections: dict[int, list[Detection]] | None = None
) -> list[RuleHit]:
    """Tracker (people only, as a pole counting pedestrians would run it) then rules, at clip time;
    the tracks still open at the end are closed, so every zone entered is left."""
    engine = RuleEngine(rules)
    tracker = IouTracker()
    hits: list[RuleHit] = []
    for index, found in clip.frames:
        if detections is not None and index in detections:
            found = detections[index]
        now = index / 10
        update = tracker.update([d for d in found if d.label == "person"], now)
        hits += engine.update(update, found, now, SIZE)
    hits += engine.update(TrackUpdate(ended=tracker.close()), [], 45.0, SIZE)
    return hits


def test_the_walkway_line_counts_walkers_in_both_directions(clip: Clip) -> None:
    """Counted by eye: 8 crossings left to right (a_to_b), among them a pair walking back up the road
    at 11-12 s, and 10 right to left (b_to_a): 18 crossings by 15 people over 45 s, as many tracker
    splits as there are (the lamp post is 130 px away).

    Measured: a_to_b 8, b_to_a 10, each one matched to a crossing seen by eye. The bounds allow one
    more (a double count is what the hysteresis must prevent) and two fewer (onnxruntime or codec
    differences may split a track right at the line).
    """
    hits = replay(
        clip,
        [
            rule(type="line", id="px", units="pixels", points=WALKWAY_PX, labels=["person"]),
            rule(type="line", id="norm", points=WALKWAY_NORMALISED, labels=["person"]),
        ],
    )
    crossings = [h for h in hits if h.rule_id == "px"]
    a_to_b, b_to_a = crossings[-1].counts["person"]  # type: ignore[index]
    assert 6 <= a_to_b <= 9, crossings
    assert 8 <= b_to_a <= 11, crossings
    assert Counter(h.direction for h in crossings) == {"a_to_b": a_to_b, "b_to_a": b_to_a}
    per_track = Counter(h.event_id for h in crossings)
    assert max(per_track.values()) <= 2, "nobody crossed more than there and back"
    first = min(h.time for h in crossings)
    assert 0.8 <= first <= 1.6, "the first walker, right to left, is on the line at about 1.0-1.2 s"
    # Normalised coordinates of the same line: the same events.
    normalised = [(h.event_id, h.direction, h.time) for h in hits if h.rule_id == "norm"]
    assert normalised == [(h.event_id, h.direction, h.time) for h in crossings]


def test_hysteresis_stops_a_static_track_from_crossing_back_and_forth(clip: Clip) -> None:
    """A short line through the foot of the traffic cone NanoDet takes for a person (a track that
    lasts 44 s, whose box jitters by a few pixels): measured 45 crossings without hysteresis, every
    one of them the cone's but a few; with the default band (0.1 box heights) 3, all walkers."""
    cone = {"type": "line", "units": "pixels", "points": [[171, 230], [171, 180]], "labels": ["person"]}
    jittery = replay(clip, [rule(**cone, id="bare", hysteresis=0)])
    steady = replay(clip, [rule(**cone, id="band")])
    assert Counter(h.event_id for h in jittery).most_common(1)[0][1] >= 20
    assert len(steady) <= 5
    assert max(Counter(h.event_id for h in steady).values(), default=0) <= 2


def test_road_zone_and_loitering_by_the_lamp_post(clip: Clip) -> None:
    """The road around the walkway line (480..640 px) as a zone, and the patch of road by the lamp
    post as a loitering zone with a 5 s dwell. By eye: a group meets by the sign on the post at about
    2 s and two men stand there talking until about 16 s; everybody else walks through.

    Measured: 23 zone entries (the 18 line crossings, 3 walks down the right-hand road that never
    reach the line, and tracks split by the tracker), each with its exit; walkers spend 1-5 s in the
    zone, the pair that turned round inside it 10 s. Loitering: 3 starts, at 6.4, 7.8 and 16.6 s, 5.0 s
    after each entered, each with its end: the two men, one of them twice, because the lamp post
    hides him for 5 s and he comes back as a new track.
    """
    hits = replay(
        clip,
        [
            rule(type="line", id="walkway", units="pixels", points=WALKWAY_PX, labels=["person"]),
            rule(type="zone", id="road", units="pixels", polygon=[[480, 150], [640, 150], [640, 440], [480, 440]]),
            rule(type="loiter", id="lamp", units="pixels", polygon=[[340, 220], [460, 220], [460, 310], [340, 310]],
                 dwell_s=5),
        ],
    )
    inside: dict[str, float] = {}
    entries = 0
    for hit in hits:
        if hit.rule_id == "road" and hit.event == "enter":
            assert hit.event_id not in inside
            inside[hit.event_id] = hit.time
            entries += 1
        elif hit.rule_id == "road":
            assert hit.event == "exit" and hit.dwell_s is not None
            inside_since = inside[hit.event_id]
            # Up to the exit, or to when a lost track was last seen (at most the tracker's 2 s earlier).
            assert hit.time - inside.pop(hit.event_id) - 2.5 <= hit.dwell_s <= hit.time - inside_since + 1e-9
            assert hit.dwell_s <= 15
        elif hit.rule_id == "walkway":
            assert hit.event_id in inside, "the line lies inside the zone: whoever crosses it is in the zone"
    assert inside == {}, "every entry has its exit"
    assert 15 <= entries <= 32

    loiter = [h for h in hits if h.rule_id == "lamp"]
    starts = [h for h in loiter if h.event == "loiter_start"]
    assert 2 <= len(starts) <= 5, loiter
    assert all(h.dwell_s == pytest.approx(5.0, abs=0.25) for h in starts)
    assert sorted(h.event_id for h in loiter if h.event == "loiter_end") == sorted(h.event_id for h in starts)
    assert min(h.time for h in starts) == pytest.approx(6.4, abs=2.0), "the first man, in the zone from 1.4 s"


# The object: a white concrete bollard cut from the clip's first frame (the right-hand kerb), put
# down at the edge of the walkway from 10 s to 35 s. NanoDet never calls it a bag: it sees it in 49
# frames of 50 as a "dog" or a "bird", flipping between them: that is why the rule watches any label.
BOLLARD = (695, 190, 730, 240)  # x1, y1, x2, y2 in the first frame
PUT_AT = (600, 400)
PUT_FROM, PUT_UNTIL = 100, 350  # frames: 10 s .. 35 s
LITTER = {"type": "left_behind", "id": "litter", "labels": "any", "after_s": 10, "absent_s": 3, "learn_s": 5}


def test_an_object_left_on_the_walkway_is_reported_once_and_ends_when_taken_away(
    clip: Clip, detector: OnnxDetector
) -> None:
    """Measured: reported at 27.2 s (17.2 s after it appeared: people walking past paused the clock
    for 7.2 s), ended at 38.0 s (last seen at 34.8 s, then 3 s). The van, the car, the litter on the
    grass and the boulder (sheep, dog or bird, seen in 37 of 225 frames) were there from the start:
    the same rule on the untouched clip reports nothing."""
    x1, y1, x2, y2 = BOLLARD
    patch = None
    pasted: dict[int, list[Detection]] = {}
    for index, image in frames():
        if patch is None:
            patch = image[y1:y2, x1:x2].copy()
        if PUT_FROM <= index < PUT_UNTIL and index % STEP == 0:
            px, py = PUT_AT
            image[py : py + (y2 - y1), px : px + (x2 - x1)] = patch
            pasted[index] = detector.detect(image)
    assert replay(clip, [rule(**LITTER)]) == [], "nothing is left behind in the real clip"

    hits = replay(clip, [rule(**LITTER)], detections=pasted)
    assert [h.event for h in hits] == ["left_behind_start", "left_behind_end"], hits
    start, end = hits
    assert start.event_id == end.event_id
    appeared = PUT_FROM / 10
    assert appeared + 10 <= start.time <= appeared + 10 + 10, "after 10 s unattended, and people did walk past"
    assert start.dwell_s == pytest.approx(start.time - appeared, abs=0.5)
    assert start.label in {"dog", "bird"}
    bx1, by1, bx2, by2 = start.box
    assert abs(bx1 - PUT_AT[0]) <= 8 and abs(by1 - PUT_AT[1]) <= 8, "reported where it was put"
    assert abs(bx2 - bx1 - (x2 - x1)) <= 10 and abs(by2 - by1 - (y2 - y1)) <= 10
    removed = (PUT_UNTIL - STEP) / 10
    assert removed + 3 < end.time <= removed + 3 + 1.0, "gone 3 s after it was last seen"
