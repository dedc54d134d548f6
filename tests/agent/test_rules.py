"""Camera rules on constructed tracks and detections: every behaviour pinned down frame by frame.

Frames are 768x576 (the shipped clip's size) at 10 fps unless a test says otherwise. Tracks are
built directly, as the tracker would report them; the rules never look at anything else.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from pydantic import TypeAdapter

from polewatch.agent.config import RuleConfig
from polewatch.agent.inference import Detection, Track, TrackUpdate
from polewatch.agent.inference.rules import RuleEngine, RuleHit

W, H = 768, 576
_RULE = TypeAdapter(RuleConfig)


def rule(**fields: object) -> RuleConfig:
    return _RULE.validate_python(fields)


def track(
    x: float, y: float, *, id: str = "t1", label: str = "person", w: float = 30, h: float = 80, t: float = 0.0
) -> Track:
    """A track whose box has its bottom centre (the feet) at (x, y)."""
    return Track(id, label, 0, 0.9, (x - w / 2, y - h, x + w / 2, y), 0.0, t, 5)


def run(
    engine: RuleEngine, frames: Sequence[Sequence[Track]], *, fps: float = 10.0, start: float = 0.0
) -> list[RuleHit]:
    """Feed frames of seen tracks; a track missing from the next frames is not ended (the tracker's
    max_age), so end tracks explicitly with `end`."""
    hits: list[RuleHit] = []
    for i, seen in enumerate(frames):
        now = start + i / fps
        hits += engine.update(TrackUpdate(updated=list(seen)), [], now, (W, H))
    return hits


def end(engine: RuleEngine, *tracks: Track, now: float = 100.0) -> list[RuleHit]:
    return engine.update(TrackUpdate(ended=list(tracks)), [], now, (W, H))


def walk(x0: float, x1: float, y: float, steps: int, **kw: object) -> list[list[Track]]:
    return [[track(x0 + (x1 - x0) * i / (steps - 1), y, **kw)] for i in range(steps)]  # type: ignore[arg-type]


# A vertical line down the middle, drawn bottom to top: side A (on the left going from the first
# point to the second) is the left half of the picture.
MIDDLE = {"type": "line", "id": "mid", "points": [[0.5, 0.9], [0.5, 0.1]]}


# --- lines ------------------------------------------------------------------------------------------


def test_a_walker_crossing_counts_once_with_its_direction_and_the_running_counts() -> None:
    engine = RuleEngine([rule(**MIDDLE)])
    there = run(engine, walk(100, 700, 400, 30))
    assert [(h.event, h.direction, h.event_id, dict(h.counts or {})) for h in there] == [
        ("cross", "a_to_b", "t1", {"person": (1, 0)})
    ]
    assert there[0].rule_type == "line" and there[0].label == "person"
    assert there[0].box[0] > 384 - 15, "reported where it was first seen firmly on the new side"
    back = run(engine, walk(700, 100, 400, 30))
    assert [(h.direction, dict(h.counts or {})) for h in back] == [("b_to_a", {"person": (1, 1)})]


def test_the_line_orientation_defines_the_direction() -> None:
    reversed_line = {**MIDDLE, "points": [[0.5, 0.1], [0.5, 0.9]]}  # drawn top to bottom: A is on the right
    hits = run(RuleEngine([rule(**reversed_line)]), walk(100, 700, 400, 30))
    assert [h.direction for h in hits] == ["b_to_a"]
    # Drawn left to right, A is above the line: walking down the picture is a_to_b.
    across = {"type": "line", "id": "h", "points": [[0.1, 0.5], [0.9, 0.5]]}
    down = [[track(300, 100 + 20 * i)] for i in range(20)]
    assert [h.direction for h in run(RuleEngine([rule(**across)]), down)] == ["a_to_b"]


def test_jitter_on_the_line_never_counts_and_hysteresis_is_what_stops_it() -> None:
    # Someone standing on the line: the detector's box moves by a few pixels every frame (80 px tall
    # person, +-6 px around the line; the default band is 0.1 * 80 = 8 px).
    jitter = [[track(384 + (6 if i % 2 else -6), 400)] for i in range(40)]
    assert run(RuleEngine([rule(**MIDDLE)]), jitter) == []
    without = run(RuleEngine([rule(**MIDDLE, hysteresis=0)]), jitter)
    assert len(without) == 39, "without hysteresis every frame is a crossing"
    # Firmly on one side, then dawdling on the line, then firmly on the other: exactly one.
    frames = [[track(300, 400)]] * 5 + jitter + [[track(470, 400)]] * 5
    assert [h.direction for h in run(RuleEngine([rule(**MIDDLE)]), frames)] == ["a_to_b"]


def test_a_track_seen_on_one_side_only_does_not_count() -> None:
    # First seen just past the line (the tracker confirmed it there): it may well have crossed, but
    # nobody saw it on the other side, so it is not counted.
    assert run(RuleEngine([rule(**MIDDLE)]), walk(400, 700, 400, 20)) == []


def test_passing_beyond_the_end_of_the_line_does_not_count() -> None:
    # The line spans y 57.6..518.4; this walker crosses its extension at y = 550.
    assert run(RuleEngine([rule(**MIDDLE)]), walk(100, 700, 550, 30)) == []
    # Arriving from below the end and leaving across it counts: the path meets the segment.
    diagonal = [[track(300 + 10 * i, 560 - 10 * i)] for i in range(20)]
    assert [h.direction for h in run(RuleEngine([rule(**MIDDLE)]), diagonal)] == ["a_to_b"]


def test_a_walker_missed_for_a_while_still_counts_once() -> None:
    # Seen at x=300, then not for 2 s (behind the lamp post), then at x=480 and on.
    frames = [[track(300, 400)], *([[]] * 20), [track(480, 400)], [track(500, 400)]]
    assert [h.direction for h in run(RuleEngine([rule(**MIDDLE)]), frames)] == ["a_to_b"]


def test_counts_are_per_label_and_labels_filter_what_a_line_counts() -> None:
    engine = RuleEngine([rule(**MIDDLE), rule(**{**MIDDLE, "id": "people", "labels": ["person"]})])
    hits = run(engine, walk(100, 700, 400, 30, id="c1", label="car", w=120, h=60))
    hits += run(engine, walk(100, 700, 400, 30, id="p1"))
    hits += run(engine, walk(700, 100, 400, 30, id="p2"))
    everything = [h for h in hits if h.rule_id == "mid"]
    assert [(h.label, h.direction) for h in everything] == [
        ("car", "a_to_b"), ("person", "a_to_b"), ("person", "b_to_a")
    ]
    assert dict(everything[-1].counts or {}) == {"car": (1, 0), "person": (1, 1)}
    people = [h for h in hits if h.rule_id == "people"]
    assert [h.label for h in people] == ["person", "person"]
    assert dict(people[-1].counts or {}) == {"person": (1, 1)}


def test_an_ended_track_is_forgotten() -> None:
    engine = RuleEngine([rule(**MIDDLE)])
    run(engine, walk(100, 300, 400, 5))
    end(engine, track(300, 400))
    # The same id again (it cannot happen with the tracker's ids, but state must not leak): a new
    # track first seen on side B does not count.
    assert run(engine, walk(500, 700, 400, 5)) == []


def test_normalised_and_pixel_coordinates_give_the_same_events() -> None:
    pixels = {**MIDDLE, "units": "pixels", "points": [[384, 518.4], [384, 57.6]]}
    frames = walk(100, 700, 400, 30) + walk(700, 100, 300, 30, id="t2")
    normalised = run(RuleEngine([rule(**MIDDLE)]), frames)
    assert [(h.direction, h.time) for h in normalised] == [
        (h.direction, h.time) for h in run(RuleEngine([rule(**pixels)]), frames)
    ]
    assert len(normalised) == 2


def test_normalised_geometry_follows_a_change_of_resolution_and_pixels_do_not() -> None:
    # The camera now sends 1536x1152: the same walk, scaled, crosses x=768.
    def walk_at(size: tuple[int, int]) -> list[RuleHit]:
        hits: list[RuleHit] = []
        for i in range(30):
            x = (100 + 600 * i / 29) * size[0] / W
            seen = [track(x, 400 * size[1] / H, w=60, h=160)]
            hits += normalised.update(TrackUpdate(updated=seen), [], i / 10, size)
            hits += pixels.update(TrackUpdate(updated=seen), [], i / 10, size)
        return hits

    normalised = RuleEngine([rule(**MIDDLE)])
    pixels = RuleEngine([rule(**{**MIDDLE, "id": "px", "units": "pixels", "points": [[384, 518.4], [384, 57.6]]})])
    hits = walk_at((1536, 1152))
    # The pixel line still ends at y=518, above these feet at y=800: only the normalised one is crossed.
    assert [(h.rule_id, h.direction) for h in hits] == [("mid", "a_to_b")]
    crossing = hits[0].box
    assert 768 - 30 <= crossing[0] <= 768 + 60


# --- zones ------------------------------------------------------------------------------------------

SQUARE = {"type": "zone", "id": "square", "polygon": [[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]]}


def test_entering_and_leaving_a_zone() -> None:
    engine = RuleEngine([rule(**SQUARE)])
    hits = run(engine, walk(50, 700, 300, 66))  # 10 px per frame, through x 192..576
    assert [(h.event, h.event_id, h.rule_type) for h in hits] == [("enter", "t1", "zone"), ("exit", "t1", "zone")]
    enter, leave = hits
    assert 192 + 8 <= (enter.box[0] + enter.box[2]) / 2 <= 192 + 8 + 10, "entered once 8 px (the band) inside"
    assert leave.dwell_s == pytest.approx(leave.time - enter.time)
    assert leave.dwell_s == pytest.approx(400 / 100, abs=0.3)


def test_a_track_lost_inside_the_zone_exits_with_the_time_it_was_last_seen() -> None:
    engine = RuleEngine([rule(**SQUARE)])
    hits = run(engine, [[track(300, 300, t=i / 10)] for i in range(30)])
    assert [h.event for h in hits] == ["enter"]
    lost = end(engine, track(300, 300, t=2.9), now=5.0)
    assert [(h.event, h.time) for h in lost] == [("exit", 5.0)]
    assert lost[0].dwell_s == pytest.approx(2.9)
    assert end(engine, track(300, 300)) == [], "ended once"


def test_jitter_at_the_zone_edge_enters_once() -> None:
    edge_y = 0.25 * H  # the top edge; feet moving up and down across it by 6 px
    frames = [[track(384, edge_y + (6 if i % 2 else -6))] for i in range(40)] + [[track(384, 300)]] * 3
    hits = run(RuleEngine([rule(**SQUARE)]), frames)
    assert [h.event for h in hits] == ["enter"]
    assert len(run(RuleEngine([rule(**SQUARE, hysteresis=0)]), frames)) > 30


def test_the_anchor_decides_which_part_of_the_box_must_be_inside() -> None:
    # A tall box straddling the top edge: feet inside, head outside.
    straddling = [[track(384, 0.25 * H + 40, h=120)]] * 3
    assert [h.event for h in run(RuleEngine([rule(**SQUARE)]), straddling)] == ["enter"]
    assert run(RuleEngine([rule(**SQUARE, anchor="top_centre")]), straddling) == []
    assert [h.event for h in run(RuleEngine([rule(**SQUARE, anchor="centre")]), straddling)] == []


def test_zone_labels_filter() -> None:
    engine = RuleEngine([rule(**SQUARE, labels=["car", "bus"])])
    assert run(engine, walk(50, 700, 300, 66)) == []
    assert [h.label for h in run(engine, walk(50, 700, 300, 66, id="c", label="car"))] == ["car", "car"]


def test_a_concave_zone_is_entered_and_left_where_its_shape_says() -> None:
    # A U shape (in pixels): walking across the gap between its arms leaves and re-enters.
    u_shape = {"type": "zone", "id": "u", "units": "pixels",
               "polygon": [[100, 100], [200, 100], [200, 300], [400, 300], [400, 100], [500, 100], [500, 400],
                           [100, 400]]}
    hits = run(RuleEngine([rule(**u_shape)]), walk(50, 550, 200, 51))
    assert [h.event for h in hits] == ["enter", "exit", "enter", "exit"]


# --- loitering --------------------------------------------------------------------------------------

LOITER = {**SQUARE, "type": "loiter", "id": "linger", "dwell_s": 5.0}


def test_loitering_starts_once_after_the_dwell_time_and_ends_when_the_track_leaves() -> None:
    engine = RuleEngine([rule(**LOITER)])
    standing = [[track(300 + (i % 3), 300)] for i in range(120)]  # 12 s in the zone
    hits = run(engine, standing)
    assert [(h.event, h.rule_type) for h in hits] == [("loiter_start", "loiter")]
    assert hits[0].time == pytest.approx(5.0)
    assert hits[0].dwell_s == pytest.approx(5.0)
    gone = run(engine, [[track(700, 300)]], start=12.0)
    assert [h.event for h in gone] == ["loiter_end"]
    assert gone[0].dwell_s == pytest.approx(12.0)


def test_passing_through_is_not_loitering_and_a_lost_loiterer_ends() -> None:
    engine = RuleEngine([rule(**LOITER)])
    assert run(engine, walk(50, 700, 300, 66)) == [], "4 s inside is less than 5"
    hits = run(engine, [[track(300, 300, id="t2", t=10 + i / 10)] for i in range(70)], start=10.0)
    assert [h.event for h in hits] == ["loiter_start"]
    lost = end(engine, track(300, 300, id="t2", t=16.9))
    assert [(h.event, h.event_id) for h in lost] == [("loiter_end", "t2")]
    assert lost[0].dwell_s == pytest.approx(6.9)


def test_loitering_is_per_track() -> None:
    engine = RuleEngine([rule(**LOITER)])
    frames = [[track(300, 300, id="a"), *([track(400, 300, id="b")] if i >= 20 else [])] for i in range(80)]
    hits = run(engine, frames)
    assert [(h.event_id, round(h.time, 1)) for h in hits] == [("a", 5.0), ("b", 7.0)]


# --- objects left behind ------------------------------------------------------------------------------

LEFT = {"type": "left_behind", "id": "litter", "labels": "any", "after_s": 10.0, "absent_s": 3.0, "learn_s": 2.0}
BAG = (500.0, 400.0, 530.0, 430.0)


def bag(label: str = "backpack", box: tuple[float, float, float, float] = BAG, score: float = 0.5) -> Detection:
    return Detection(label, 24, score, *box)


def watch(
    engine: RuleEngine, seconds: float, detect: object, *, start: float = 0.0, people: object = None
) -> list[RuleHit]:
    """Run `seconds` of frames at 10 fps; `detect(i)` gives frame i's detections, `people(i)` its seen
    person tracks."""
    hits: list[RuleHit] = []
    for i in range(round(seconds * 10)):
        now = start + i / 10
        frame = round(now * 10)
        seen = people(frame) if people else []  # type: ignore[operator]
        hits += engine.update(TrackUpdate(updated=seen), detect(frame), now, (W, H))  # type: ignore[operator]
    return hits


def test_an_object_left_is_reported_once_after_the_time_and_ends_when_it_is_gone() -> None:
    # Like the real detector on a static object: seen in 2 frames of 3, under flickering labels.
    def detect(i: int) -> list[Detection]:
        if 50 <= i < 300 and i % 3:
            return [bag("dog" if i % 2 else "bird", (BAG[0] + i % 2, BAG[1], BAG[2] + i % 2, BAG[3]))]
        return []

    engine = RuleEngine([rule(**LEFT)])
    hits = watch(engine, 40, detect)
    assert [h.event for h in hits] == ["left_behind_start", "left_behind_end"]
    assert {h.rule_type for h in hits} == {"left_behind"}
    start, gone = hits
    assert start.event_id == gone.event_id and start.event_id.startswith("obj-")
    assert start.time == pytest.approx(5.0 + 10.0), "first seen at frame 50, then 10 s unattended"
    assert start.dwell_s == pytest.approx(10.0)
    assert gone.time == pytest.approx(29.9 + 3.1), "last seen at frame 299, gone once more than 3 s passed"
    assert gone.dwell_s == pytest.approx(29.9 - 5.0)
    assert start.label in {"dog", "bird"} and start.box[0] == pytest.approx(BAG[0], abs=1)


def test_what_is_there_from_the_start_is_part_of_the_scene() -> None:
    # A boulder the detector notices now and then (gaps of up to 9 s, as on the shipped clip).
    def detect(i: int) -> list[Detection]:
        return [bag("sheep")] if i in (5, 100, 110, 200, 290, 380) else []

    assert watch(RuleEngine([rule(**LEFT)]), 45, detect) == []


def test_a_stray_detection_never_becomes_a_left_object() -> None:
    def detect(i: int) -> list[Detection]:
        return [bag()] if i in (50, 75) else []  # two sightings 2.5 s apart, then nothing

    assert watch(RuleEngine([rule(**LEFT)]), 30, detect) == []


def test_a_person_near_the_object_pauses_the_clock_and_one_in_front_of_it_hides_it() -> None:
    def detect(i: int) -> list[Detection]:
        # The owner stands in front of the bag from 8 s to 14 s: it is not detected then.
        return [bag()] if 30 <= i < 400 and not 80 <= i < 140 else []

    def people(i: int) -> list[Track]:
        if 30 <= i < 140:
            return [track(515, 435, id="owner")]  # covers the bag, within one height of it
        if 150 <= i < 200:
            return [track(580, 430, id="near")]  # 50 px away, 80 px tall: near
        return [track(100, 300, id="far")]

    hits = watch(RuleEngine([rule(**LEFT)]), 50, detect, people=people)
    assert [h.event for h in hits] == ["left_behind_start", "left_behind_end"]
    # Attended 3.0..14.0 and 15.0..20.0: unattended 14.0..15.0, then 9 s more from 20.0.
    assert hits[0].time == pytest.approx(29.0, abs=0.15)
    assert hits[1].time == pytest.approx(39.9 + 3.0, abs=0.15)


def test_the_object_itself_taken_for_a_person_does_not_attend_it() -> None:
    def detect(i: int) -> list[Detection]:
        return [bag()] if i >= 30 else []

    def people(i: int) -> list[Track]:
        return [Track("self", "person", 0, 0.4, BAG, 0.0, i / 10, 5)] if i >= 30 else []

    hits = watch(RuleEngine([rule(**LEFT)]), 20, detect, people=people)
    assert [(h.event, round(h.time, 1)) for h in hits] == [("left_behind_start", 13.0)]


def test_a_moving_object_is_not_left_behind() -> None:
    def detect(i: int) -> list[Detection]:
        x = 100 + 2 * i  # 20 px/s: a bag carried slowly, or a dog
        return [bag("dog", (x, 400, x + 30, 430))] if i >= 30 else []

    engine = RuleEngine([rule(**LEFT)])
    assert watch(engine, 40, detect) == []
    assert engine.rules[0].objects <= 40  # type: ignore[attr-defined]


def test_no_picture_is_neither_presence_nor_absence() -> None:
    engine = RuleEngine([rule(**LEFT)])
    hits = watch(engine, 20, lambda i: [bag()] if i >= 30 else [])
    assert [h.event for h in hits] == ["left_behind_start"]
    # The camera stalls for 30 s: updates without a picture end nothing.
    for k in range(30):
        hits += engine.update(TrackUpdate(), None, 20.0 + k, None)
    assert [h.event for h in hits] == ["left_behind_start"]
    hits += watch(engine, 5, lambda i: [], start=50.0)
    assert [h.event for h in hits] == ["left_behind_start", "left_behind_end"]


def test_left_behind_watches_only_its_labels_and_its_region() -> None:
    region = {**LEFT, "labels": ["suitcase"], "polygon": [[0.5, 0.5], [1, 0.5], [1, 1], [0.5, 1]]}
    engine = RuleEngine([rule(**region)])
    outside = (100.0, 100.0, 130.0, 130.0)
    others = [bag("backpack"), bag("suitcase", outside), bag("person", BAG)]
    hits = watch(engine, 20, lambda i: others if i >= 30 else [])
    assert hits == []
    hits = watch(engine, 15, lambda i: [bag("suitcase")], start=20.0)
    assert [(h.event, h.label, round(h.time, 1)) for h in hits] == [("left_behind_start", "suitcase", 30.0)]


# --- the engine ---------------------------------------------------------------------------------------


def test_the_engine_waits_for_a_first_frame_and_keeps_its_size_through_a_stall() -> None:
    engine = RuleEngine([rule(**SQUARE)])
    assert engine.update(TrackUpdate(ended=[track(300, 300)]), None, 0.0) == []
    run(engine, [[track(300, 300)]])
    assert engine.size == (W, H)
    hits = engine.update(TrackUpdate(ended=[track(300, 300)]), None, 1.0)
    assert [h.event for h in hits] == ["exit"]
    assert RuleEngine([]).update(TrackUpdate(updated=[track(300, 300)]), [], 0.0, (W, H)) == []


def test_a_late_frame_stamped_before_the_last_update_counts_as_no_time_passing() -> None:
    engine = RuleEngine([rule(**SQUARE)])
    run(engine, [[track(300, 300)]], start=1.0)
    engine.update(TrackUpdate(), None, 2.0)  # a stalled camera, stamped with the clock
    late = engine.update(TrackUpdate(updated=[track(700, 300)]), [], 1.9, (W, H))  # the frame that was late
    assert [(h.event, h.time, h.dwell_s) for h in late] == [("exit", 2.0, 1.0)]
