"""Camera-health analytics on real footage, damaged the ways a camera on a pole gets damaged.

Each condition is made by damaging real frames of vtest (the shipped clip; the whole vtest.avi from
../shared where present) for a span of time and must give exactly one start, dated inside the
damaged span, and after the recovery exactly one end; the undamaged footage must give nothing at
all, because every false alarm is a call to a command centre that watches 66 poles. Time is the
footage's own (two samples per second), so minutes of footage take a second or two to check.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import cv2
import pytest

from polewatch.agent.capture.camera_health import CameraHealthChange, CameraHealthChecker, Debounce
from polewatch.agent.capture.source import frame_rate
from polewatch.agent.config import CameraConfig, CameraHealthConfig
from polewatch.agent.runtime import camera_health_body, load_reference
from polewatch.provisioning.camera_probe import probe_camera
from support.footage import (
    FOOTAGE_FPS,
    SAMPLE_CLIP,
    Damage,
    Image,
    Timeline,
    black,
    defocused,
    knocked,
    painted,
    read_frames,
    sprayed,
    turned_away,
    white,
)

SAMPLE_FPS = 2.0
SPAN = (30.0, 90.0)  # the damage, in seconds of footage
SECONDS = 150.0  # 30 s good, 60 s damaged, 60 s good again


@pytest.fixture(scope="module")
def clip() -> list[Image]:
    """The shipped clip at 2 samples per second (90 frames of 768x576)."""
    return read_frames(SAMPLE_CLIP, every=int(FOOTAGE_FPS / SAMPLE_FPS))


def checker(reference: Image | None, **config: Any) -> CameraHealthChecker:
    return CameraHealthChecker("cam1", CameraHealthConfig.model_validate(config), reference=reference)


def phases(changes: list[CameraHealthChange]) -> list[tuple[str, str]]:
    return [(c.condition, c.phase) for c in changes]


def assert_one_episode(
    changes: list[CameraHealthChange], condition: str, config: CameraHealthConfig, span: tuple[float, float] = SPAN
) -> tuple[CameraHealthChange, CameraHealthChange]:
    """Exactly one start inside the damaged span and one end after it, and nothing else."""
    assert phases(changes) == [(condition, "start"), (condition, "end")], [(c.condition, c.phase, c.detail)
                                                                           for c in changes]
    start, end = changes
    debounce = getattr(config, condition)
    assert span[0] <= start.since < span[0] + 10.0, f"began at {start.since}, the damage at {span[0]}"
    assert start.at == pytest.approx(start.since + debounce.start_after_s, abs=max(5.0, 1 / SAMPLE_FPS))
    assert start.at < span[1], "reported while the camera is still damaged"
    assert start.until is None and start.value is not None and start.threshold is not None
    assert end.since == start.since, "an end names its start"
    assert end.until is not None and span[1] <= end.until < span[1] + 10.0
    assert end.at >= end.until + debounce.end_after_s
    return start, end


# --- no false alarms --------------------------------------------------------------------------------


def _report_cost(costs_s: list[float], record_property: Any, label: str) -> None:
    ms = sorted(c * 1000 for c in costs_s)
    summary = {
        "frames": len(ms),
        "mean_ms": round(statistics.fmean(ms), 2),
        "median_ms": round(statistics.median(ms), 2),
        "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 2),
        "max_ms": round(ms[-1], 2),
    }
    record_property(f"observe_cost_{label}", summary)
    print(f"camera-health observe() cost, {label}, 768x576: {summary}")


@pytest.mark.parametrize("with_reference", [True, False], ids=["reference", "learned-reference"])
def test_undamaged_clip_raises_nothing_in_ten_minutes(
    clip: list[Image], with_reference: bool, record_property: Any
) -> None:
    health = checker(clip[0] if with_reference else None)
    timeline = Timeline(clip, seconds=600.0)  # the clip looped 13 times
    assert timeline.run(health.observe) == []
    assert health.open_conditions == {}
    assert health.reference is not None and health.reference_learned is not with_reference
    _report_cost(timeline.costs_s, record_property, "clip-" + ("reference" if with_reference else "learned"))


def test_whole_vtest_avi_raises_nothing_at_2_and_10_samples_per_second(shared_dir: Path, record_property: Any) -> None:
    """All 795 frames of the original: every frame (10/s, the most that could be sampled) and 2/s."""
    path = shared_dir / "data" / "vtest.avi"
    reference = read_frames(SAMPLE_CLIP, every=1000)[0]  # the provisioning view, from the other encoding
    every_frame, sampled = checker(reference), checker(reference)
    changes: list[CameraHealthChange] = []
    costs: list[float] = []
    cap = cv2.VideoCapture(str(path))
    index = 0
    try:
        while True:
            ok, image = cap.read()
            if not ok:
                break
            now = index / FOOTAGE_FPS
            changes += every_frame.observe(image, now)
            if index % 5 == 0:
                started = time.perf_counter()
                changes += sampled.observe(image, now)
                costs.append(time.perf_counter() - started)
            index += 1
    finally:
        cap.release()
    assert index == 795
    assert changes == []
    _report_cost(costs, record_property, "vtest-avi")


# --- each condition ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "variant"),
    [(black, "black"), (white, "white"), (painted, "uniform"), (sprayed, "uniform")],
    ids=["hand-over-lens", "blinded", "painted", "sprayed"],
)
def test_covered_lens_is_one_start_and_one_end(clip: list[Image], damage: Damage, variant: str) -> None:
    health = checker(clip[0])
    changes = Timeline(clip, SECONDS, damage=damage, span=SPAN).run(health.observe)
    start, end = assert_one_episode(changes, "covered", health.config)
    assert start.variant == end.variant == variant
    assert start.detail.startswith(("picture black", "picture white", "picture one colour", "no detail left"))
    assert "picture back" in end.detail


def test_frozen_picture_is_one_start_and_one_end(clip: list[Image]) -> None:
    health = checker(clip[0])
    changes = Timeline(clip, SECONDS, span=SPAN, frozen=True).run(health.observe)
    start, _ = assert_one_episode(changes, "frozen", health.config)
    assert start.value == 0.0 and start.variant is None


def test_defocus_is_one_start_and_one_end(clip: list[Image]) -> None:
    health = checker(clip[0])
    changes = Timeline(clip, SECONDS, damage=defocused, span=SPAN).run(health.observe)
    start, end = assert_one_episode(changes, "blurred", health.config)
    assert start.value is not None and start.value < 0.1, "a 21 px blur leaves a few % of the sharpness"
    assert end.value is not None and end.value > 0.8


@pytest.mark.parametrize(
    ("damage", "low", "high"),
    [
        (knocked(dx=0.10, dy=0.0, degrees=0.0), 0.09, 0.11),
        (knocked(dx=0.12, dy=0.05, degrees=4.0), 0.14, 0.20),
        (knocked(dx=-0.15, dy=-0.10, degrees=-8.0), 0.2, 0.3),
        (knocked(dx=0.0, dy=0.0, degrees=6.0), 0.06, 0.10),
        (turned_away, 1.0, 1.0),
    ],
    ids=["10%-right", "12%-right-5%-down-4deg", "15%-left-10%-up-8deg", "rotated-6deg", "turned-away"],
)
def test_knocked_camera_is_one_start_and_one_end(clip: list[Image], damage: Damage, low: float, high: float) -> None:
    health = checker(clip[0])
    changes = Timeline(clip, SECONDS, damage=damage, span=SPAN).run(health.observe)
    start, end = assert_one_episode(changes, "shifted", health.config)
    assert start.value is not None and low <= start.value <= high, start.detail
    assert end.value is not None and end.value < 0.01, "back where the reference view is"


def test_shift_is_measured_against_the_reference_saved_by_provisioning(clip: list[Image], tmp_path: Path) -> None:
    """The JPEG `polewatch provision probe-camera --reference` writes, not a frame in memory."""
    saved = probe_camera(str(SAMPLE_CLIP), frames=5, reference=tmp_path / "cam1.jpg").reference
    assert saved is not None
    reference = cv2.imread(str(saved))
    assert reference is not None
    health = checker(reference)
    # The camera was knocked before the agent ever started: only a stored reference can tell.
    damage = knocked(dx=0.1, dy=0.05, degrees=3.0)
    changes = Timeline(clip, SECONDS, damage=damage, span=(0.0, 90.0)).run(health.observe)
    assert_one_episode(changes, "shifted", health.config, span=(0.0, 90.0))


def test_sustained_low_fps_from_dropped_frames_is_one_start_and_one_end(clip: list[Image]) -> None:
    """A 10 fps camera loses 3 frames of 4 for a minute; the fps is measured as FrameSource does."""
    health = checker(clip[0])
    deliveries: list[float] = []
    changes: list[CameraHealthChange] = []
    step = 1 / FOOTAGE_FPS
    last_sample = -1.0
    for i in range(int(SECONDS * FOOTAGE_FPS)):
        now = i * step
        if SPAN[0] <= now < SPAN[1] and i % 4:
            continue  # dropped on the way
        deliveries.append(now)
        if now - last_sample >= 1 / SAMPLE_FPS - 1e-9:
            last_sample = now
            changes += health.observe(clip[(i // 5) % len(clip)], now)
            changes += health.report_fps(frame_rate(deliveries[-64:], now), now)
    assert health.expected_fps == pytest.approx(10.0, rel=0.05), "learned from the first 30 s"
    start, end = assert_one_episode(changes, "low_fps", health.config)
    assert start.value is not None and 2.0 <= start.value <= 3.0
    assert start.threshold == pytest.approx(5.0, rel=0.05)
    assert end.value is not None and end.value > 7.0


def test_a_silent_camera_is_low_fps_with_no_frames() -> None:
    health = checker(None, low_fps={"expected_fps": 25.0, "start_after_s": 20.0, "end_after_s": 5.0})
    changes: list[CameraHealthChange] = []
    for i in range(120):  # one report per second: 60 s silent, then 60 s at 24 fps
        changes += health.report_fps(0.0 if i < 60 else 24.0, float(i))
    assert phases(changes) == [("low_fps", "start"), ("low_fps", "end")]
    assert (changes[0].since, changes[0].at) == (0.0, 20.0)
    assert "no frames" in changes[0].detail and changes[0].value == 0.0
    assert (changes[1].until, changes[1].at) == (60.0, 65.0)


# --- debounce and masking --------------------------------------------------------------------------


def test_a_passing_obstruction_is_nothing_and_a_flickering_cover_is_one_episode(clip: list[Image]) -> None:
    health = checker(clip[0])
    # A bus stops right in front of the lens for 6 s: shorter than covered.start_after_s (10 s).
    brief = Timeline(clip, 60.0, damage=black, span=(20.0, 26.0)).run(health.observe)
    assert brief == []

    # A hand over the lens lets the picture through for 2 s in the middle: still one episode.
    flicker = Timeline(clip, SECONDS, damage=_covered_except(50.0, 52.0), span=SPAN).run(checker(clip[0]).observe)
    assert_one_episode(flicker, "covered", health.config)


def _covered_except(start: float, end: float) -> Damage:
    """Black, except for the samples between start and end (counted in samples of the span)."""
    calls = iter(range(10_000))

    def damage(image: Image) -> Image:
        t = SPAN[0] + next(calls) / SAMPLE_FPS
        return image if start <= t < end else black(image)

    return damage


def test_debounce_needs_an_unbroken_run_and_forgets_across_gaps() -> None:
    d = Debounce(start_after_s=3.0, end_after_s=2.0, max_gap_s=5.0)
    evidence = [True, True, False, True, True, True, True]  # one good sample breaks the first run
    assert [d.update(bad, float(t)) for t, bad in enumerate(evidence)] == [None] * 6 + ["start"]
    assert d.since == 3.0 and d.active
    assert d.update(None, 7.0) is None  # a sample that says nothing keeps the condition open
    assert [d.update(False, t) for t in (8.0, 9.0, 10.0)] == [None, None, "end"]
    assert (d.since, d.until, d.active) == (3.0, 8.0, False)
    # Two bad samples 10 s apart (a camera away in between) are not 10 s of evidence.
    assert d.update(True, 20.0) is None and d.update(True, 30.0) is None
    assert d.update(True, 33.0) == "start" and d.since == 30.0


def test_disabled_conditions_and_cameras_stay_silent(clip: list[Image]) -> None:
    no_shift = checker(clip[0], shifted={"enabled": False})
    assert Timeline(clip, SECONDS, damage=knocked(), span=SPAN).run(no_shift.observe) == []
    off = checker(clip[0], enabled=False)
    assert Timeline(clip, SECONDS, damage=black, span=SPAN).run(off.observe) == []
    assert off.report_fps(0.0, 0.0) == [] and off.report_fps(0.0, 100.0) == []


def test_smaller_and_grey_frames_are_analysed_too(clip: list[Image]) -> None:
    """A substream (384x288) in grey against a full-size colour reference still finds a knock."""
    small = [cv2.cvtColor(cv2.resize(f, (384, 288)), cv2.COLOR_BGR2GRAY) for f in clip]
    health = checker(clip[0])
    changes = Timeline(small, SECONDS, damage=knocked(dx=0.12, dy=0.0, degrees=0.0), span=SPAN).run(health.observe)
    assert_one_episode(changes, "shifted", health.config)


# --- into the agent ----------------------------------------------------------------------------------


def test_changes_become_wire_bodies_with_utc_times_and_an_end_names_its_start(clip: list[Image]) -> None:
    health = checker(clip[0])
    started = time.monotonic()
    changes = Timeline(clip, SECONDS, damage=black, span=SPAN).run(
        lambda image, now: health.observe(image, started - SECONDS + now)
    )
    start, end = (camera_health_body(c) for c in changes)
    assert (start.condition, start.phase, start.variant, start.until) == ("covered", "start", "black", None)
    assert start.since.tzinfo is not None
    wall_now = time.time()
    assert start.since.timestamp() == pytest.approx(wall_now - SECONDS + SPAN[0], abs=1.0)
    assert end.until is not None and end.until.timestamp() == pytest.approx(wall_now - SECONDS + SPAN[1], abs=1.0)
    assert camera_health_body(changes[1], since=start.since).since == start.since


def test_a_missing_reference_is_logged_and_the_first_clear_frame_is_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    camera = CameraConfig(id="cam1", url="x.mp4", reference=tmp_path / "not-there.png")
    assert load_reference(camera) is None
    assert any(r.getMessage().startswith("camera reference view cannot be read") for r in caplog.records)
    (tmp_path / "garbage.png").write_bytes(b"not an image")
    assert load_reference(camera.model_copy(update={"reference": tmp_path / "garbage.png"})) is None
    assert load_reference(CameraConfig(id="cam1", url="x.mp4")) is None
