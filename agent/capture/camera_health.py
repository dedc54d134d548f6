"""Camera-health analytics: is this camera still showing the command centre what it should?

A camera can deliver frames all night and still be useless: covered by a bag, sprayed, frozen on
one picture, out of focus, or knocked so that it watches a wall. Nobody looks at 66 feeds at once,
so each pole checks its own cameras and reports *conditions with a start and an end*
("pole 17 camera covered since 02:14"), never one message per frame.

One `CameraHealthChecker` per camera is fed a few sampled frames per second (`observe`) and the
measured frame rate (`report_fps`). Each condition has evidence per sample (see frame_metrics for
the measurements and agent/config.py for the thresholds and why they are where they are) and a
`Debounce` that turns a run of evidence into one start and, once the picture has been good for a
while, one end. Conditions mask each other where one makes another unmeasurable: a covered lens
is also "frozen" and "blurred" and cannot be located, so while the picture is covered those checks
neither start nor end anything.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from typing import Literal

from ..config import CameraHealthConfig
from .frame_metrics import (
    Image,
    PictureStats,
    ReferenceView,
    ShiftEstimate,
    analysis_grey,
    decimated_grey,
    mean_abs_diff,
)

log = logging.getLogger("polewatch.agent.camera_health")

Condition = Literal["covered", "frozen", "blurred", "shifted", "low_fps"]
Phase = Literal["start", "end"]
CoveredVariant = Literal["black", "white", "uniform"]

CONDITIONS: tuple[Condition, ...] = ("covered", "frozen", "blurred", "shifted", "low_fps")

# Evidence older than this is not continued by a new sample: after a camera outage a run starts over.
MIN_GAP_S = 5.0


@dataclass(frozen=True)
class CameraHealthChange:
    """A condition that started or ended. Times are in the clock of the `now` given to the checker."""

    camera_id: str
    condition: Condition
    phase: Phase
    since: float  # when the condition began: its first bad sample (the same on its start and end)
    at: float  # when the checker decided (since + start_after_s for a start)
    until: float | None  # end only: the first good sample
    value: float | None  # the measurement that decided
    threshold: float | None  # the threshold it was compared with
    variant: CoveredVariant | None  # covered only
    detail: str


class Debounce:
    """Turns per-sample evidence into one start and one end.

    `update(True)` (bad) for `start_after_s` without a break starts the condition, dated from the
    first bad sample; `update(False)` (good) for `end_after_s` without a break ends it. `None` means
    the sample says nothing (e.g. masked by another condition): it breaks a run in progress but
    neither starts nor ends anything. Samples further apart than `max_gap_s` do not form a run.
    """

    def __init__(self, start_after_s: float, end_after_s: float, max_gap_s: float) -> None:
        self.start_after_s = start_after_s
        self.end_after_s = end_after_s
        self.max_gap_s = max_gap_s
        self.active = False
        self.since: float | None = None  # first bad sample of the active episode
        self.until: float | None = None  # first good sample that ended the last episode
        self._run_since: float | None = None  # first sample of the current run towards a change
        self._last: float | None = None

    def update(self, bad: bool | None, now: float) -> Phase | None:
        if self._last is not None and now - self._last > self.max_gap_s:
            self._run_since = None
        self._last = now
        if bad is None or bad != (not self.active):
            # Unknown, or evidence for the state we are already in: no run towards a change.
            self._run_since = None
            return None
        if self._run_since is None:
            self._run_since = now
        if not self.active and now - self._run_since >= self.start_after_s:
            self.active, self.since, self.until, self._run_since = True, self._run_since, None, None
            return "start"
        if self.active and now - self._run_since >= self.end_after_s:
            self.active, self.until, self._run_since = False, self._run_since, None
            return "end"
        return None


@dataclass(frozen=True)
class _Evidence:
    bad: bool | None
    value: float | None = None
    threshold: float | None = None
    variant: CoveredVariant | None = None
    detail: str = ""


class CameraHealthChecker:
    """The camera-health conditions of one camera, fed by sampled frames and the measured fps.

    `reference` is the camera's reference view (a full frame, as saved at provisioning). Without
    one, the first sample that is not covered becomes the reference: the aim is then checked
    against the view at start-up, and the sharpness baseline is learned from it.
    """

    def __init__(self, camera_id: str, config: CameraHealthConfig, reference: Image | None = None) -> None:
        self.camera_id = camera_id
        self.config = config
        self.reference: ReferenceView | None = ReferenceView.from_image(reference) if reference is not None else None
        self.reference_learned = False
        self.sharpness_baseline: float | None = self.reference.stats.sharpness if self.reference else None
        sample_gap = max(MIN_GAP_S, 3.0 / config.sample_fps)
        self._debounce: dict[Condition, Debounce] = {
            "covered": Debounce(config.covered.start_after_s, config.covered.end_after_s, sample_gap),
            "frozen": Debounce(config.frozen.start_after_s, config.frozen.end_after_s, sample_gap),
            "blurred": Debounce(config.blurred.start_after_s, config.blurred.end_after_s, sample_gap),
            "shifted": Debounce(
                config.shifted.start_after_s,
                config.shifted.end_after_s,
                max(sample_gap, 3.0 * config.shifted.check_every_s),
            ),
            "low_fps": Debounce(config.low_fps.start_after_s, config.low_fps.end_after_s, MIN_GAP_S),
        }
        self._open: dict[Condition, CameraHealthChange] = {}
        self._previous: tuple[float, Image] | None = None  # (time, decimated grey) of the last sample
        self._baseline_at: float | None = None
        self._next_shift_check: float | None = None
        self._fps_readings: list[float] = []
        self._fps_learning_since: float | None = None
        self.expected_fps: float | None = config.low_fps.expected_fps
        # The latest measurements, for logs, benchmarks and tests.
        self.last_stats: PictureStats | None = None
        self.last_diff: float | None = None
        self.last_shift: ShiftEstimate | None = None

    @property
    def open_conditions(self) -> dict[Condition, CameraHealthChange]:
        """The conditions started and not yet ended, with the start change of each."""
        return dict(self._open)

    # --- frames -----------------------------------------------------------------------------------

    def observe(self, frame: Image, now: float) -> list[CameraHealthChange]:
        """Analyse one sampled frame (BGR or grey) taken at `now` (monotonic seconds)."""
        cfg = self.config
        if not cfg.enabled:
            return []
        grey = analysis_grey(frame)
        stats = PictureStats.of(grey)
        small = decimated_grey(frame)
        diff: float | None = None
        if self._previous is not None:
            then, before = self._previous
            if before.shape == small.shape and now - then <= self._debounce["frozen"].max_gap_s:
                diff = mean_abs_diff(small, before)
        self._previous = (now, small)
        self.last_stats, self.last_diff = stats, diff

        changes: list[CameraHealthChange] = []
        covered = self._covered(stats)
        self._step("covered", covered, now, changes)
        masked = covered.bad is True  # a covered picture says nothing about focus, motion or aim
        if not masked and self.reference is None:
            self.reference = ReferenceView(grey)
            self.reference_learned = True
            self.sharpness_baseline = stats.sharpness
            log.info(
                "camera reference view learned from the live picture (none configured)",
                extra={"camera": self.camera_id, "keypoints": self.reference.keypoints},
            )
        self._step("frozen", _UNKNOWN if masked else self._frozen(diff), now, changes)
        blurred = _UNKNOWN if masked else self._blurred(stats, now)
        self._step("blurred", blurred, now, changes)
        if cfg.shifted.enabled and not masked and blurred.bad is not True and self._shift_due(now):
            self._step("shifted", self._shifted(grey), now, changes)
        return changes

    def _covered(self, stats: PictureStats) -> _Evidence:
        c = self.config.covered
        if stats.mean <= c.dark_mean_max:
            return _Evidence(True, stats.mean, c.dark_mean_max, "black",
                             f"picture black: mean grey {stats.mean:.1f} <= {c.dark_mean_max:g}")
        if stats.mean >= c.bright_mean_min:
            return _Evidence(True, stats.mean, c.bright_mean_min, "white",
                             f"picture white: mean grey {stats.mean:.1f} >= {c.bright_mean_min:g}")
        if stats.std <= c.uniform_std_max:
            return _Evidence(True, stats.std, c.uniform_std_max, "uniform",
                             f"picture one colour: grey std {stats.std:.1f} <= {c.uniform_std_max:g}")
        if stats.detail <= c.detail_max:
            return _Evidence(True, stats.detail, c.detail_max, "uniform",
                             f"no detail left (sprayed or smeared lens?): Laplacian RMS {stats.detail:.2f} "
                             f"<= {c.detail_max:g}")
        return _Evidence(False, stats.detail, c.detail_max,
                         detail=f"picture back: mean grey {stats.mean:.1f}, std {stats.std:.1f}, "
                         f"detail {stats.detail:.1f}")

    def _frozen(self, diff: float | None) -> _Evidence:
        limit = self.config.frozen.max_diff
        if diff is None:
            return _UNKNOWN
        if diff <= limit:
            return _Evidence(True, diff, limit, detail=f"picture unchanged: mean difference {diff:.3f} <= {limit:g}")
        return _Evidence(False, diff, limit, detail=f"picture changes again: mean difference {diff:.2f}")

    def _blurred(self, stats: PictureStats, now: float) -> _Evidence:
        b = self.config.blurred
        baseline = self.sharpness_baseline
        if baseline is None or baseline <= 0:
            return _UNKNOWN
        ratio = stats.sharpness / baseline
        active = self._debounce["blurred"].active
        limit = b.end_ratio if active else b.start_ratio
        bad = ratio <= limit if active else ratio < limit
        if not bad and not active and ratio >= b.end_ratio:
            # Follow slow, legitimate changes (dusk, IR mode, seasons) while the picture is sharp;
            # a defocus is sudden against this time constant.
            dt = 0.0 if self._baseline_at is None else now - self._baseline_at
            self.sharpness_baseline = baseline + (stats.sharpness - baseline) * min(1.0, dt / b.baseline_tau_s)
            self._baseline_at = now
        if bad:
            return _Evidence(True, ratio, limit, detail=f"picture blurred: sharpness {ratio:.0%} of its baseline "
                             f"(< {limit:.0%})")
        return _Evidence(False, ratio, limit, detail=f"picture sharp again: sharpness {ratio:.0%} of its baseline")

    def _shift_due(self, now: float) -> bool:
        if self.reference is None:
            return False
        if self._next_shift_check is not None and now < self._next_shift_check:
            return False
        self._next_shift_check = now + self.config.shifted.check_every_s
        return True

    def _shifted(self, grey: Image) -> _Evidence:
        s = self.config.shifted
        assert self.reference is not None
        estimate = self.reference.locate(grey, min_inliers=s.min_matches)
        self.last_shift = estimate
        active = self._debounce["shifted"].active
        limit = s.end_fraction if active else s.start_fraction
        if estimate.shift is None:
            if estimate.keypoints < 2 * s.min_matches:
                # Too little texture to tell (night, fog): neither evidence of a knock nor against it.
                return _UNKNOWN
            return _Evidence(True, 1.0, limit, detail=f"reference view not found in the picture "
                             f"({estimate.inliers} consistent matches < {s.min_matches})")
        bad = estimate.shift >= limit if active else estimate.shift > limit
        moved = (f"view moved {estimate.shift:.1%} of the width (centre {estimate.dx:+.1%}, {estimate.dy:+.1%}; "
                 f"rotated {estimate.rotation_deg:+.1f}° clockwise)")
        if bad:
            return _Evidence(True, estimate.shift, limit, detail=f"camera out of aim: {moved}")
        return _Evidence(False, estimate.shift, limit, detail=f"camera back on its reference view: {moved}")

    # --- frame rate -------------------------------------------------------------------------------

    def report_fps(self, fps: float, now: float) -> list[CameraHealthChange]:
        """Judge the camera's measured frame rate (`FrameSource.fps()`), e.g. once per second."""
        lf = self.config.low_fps
        if not self.config.enabled or not lf.enabled:
            return []
        if self.expected_fps is None:
            self._learn_fps(fps, now)
            return []
        ratio = fps / self.expected_fps
        active = self._debounce["low_fps"].active
        limit = lf.end_ratio if active else lf.start_ratio
        bad = ratio <= limit if active else ratio < limit
        threshold = limit * self.expected_fps
        if bad:
            what = "no frames" if fps == 0 else f"{fps:.1f} fps"
            evidence = _Evidence(True, fps, threshold, detail=f"frame rate low: {what}, expected "
                                 f"{self.expected_fps:.1f} (alarm below {threshold:.1f})")
        else:
            evidence = _Evidence(False, fps, threshold, detail=f"frame rate back: {fps:.1f} fps")
        changes: list[CameraHealthChange] = []
        self._step("low_fps", evidence, now, changes)
        return changes

    def _learn_fps(self, fps: float, now: float) -> None:
        if fps <= 0:
            return  # a camera not delivering yet says nothing about its normal rate
        if self._fps_learning_since is None:
            self._fps_learning_since = now
        self._fps_readings.append(fps)
        if now - self._fps_learning_since >= self.config.low_fps.learn_s:
            self.expected_fps = statistics.median(self._fps_readings)
            self._fps_readings.clear()
            log.info("camera frame rate learned", extra={"camera": self.camera_id, "fps": round(self.expected_fps, 2)})

    # --- changes ----------------------------------------------------------------------------------

    def _step(self, condition: Condition, evidence: _Evidence, now: float, out: list[CameraHealthChange]) -> None:
        debounce = self._debounce[condition]
        if not getattr(self.config, condition).enabled:
            return
        phase = debounce.update(evidence.bad, now)
        if phase is None:
            return
        assert debounce.since is not None
        if phase == "start":
            change = CameraHealthChange(
                camera_id=self.camera_id, condition=condition, phase="start", since=debounce.since, at=now,
                until=None, value=evidence.value, threshold=evidence.threshold, variant=evidence.variant,
                detail=evidence.detail,
            )
            self._open[condition] = change
        else:
            started = self._open.pop(condition)
            change = CameraHealthChange(
                camera_id=self.camera_id, condition=condition, phase="end", since=debounce.since, at=now,
                until=debounce.until, value=evidence.value, threshold=evidence.threshold, variant=started.variant,
                detail=evidence.detail,
            )
        log.info(
            f"camera health {condition} {phase}",
            extra={"camera": self.camera_id, "condition": condition, "phase": phase, "detail": change.detail},
        )
        out.append(change)


_UNKNOWN = _Evidence(None)
