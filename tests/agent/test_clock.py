"""Wall-clock steps, seen with clocks the test sets itself (parameters, not the machine's clock)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from polewatch.agent.clock import ClockWatch, SyncState, kernel_sync


class Clocks:
    """A wall clock and a monotonic clock that advance together unless the test steps the wall."""

    def __init__(self, wall: float = 1_800_000_000.0, mono: float = 5_000.0) -> None:
        self.wall, self.mono = wall, mono

    def advance(self, seconds: float, *, slew_ppm: float = 0.0) -> None:
        self.mono += seconds
        self.wall += seconds * (1 + slew_ppm / 1e6)

    def watch(self, **kwargs: float) -> ClockWatch:
        return ClockWatch(wall=lambda: self.wall, mono=lambda: self.mono,
                          sync=lambda: SyncState(True, 0.01), **kwargs)


def test_an_ntp_step_after_an_offline_drift_is_counted_with_its_size_and_time() -> None:
    clocks = Clocks()
    watch = clocks.watch()
    clocks.advance(2.0)
    assert watch.sample() is None
    clocks.advance(2.0)
    clocks.wall += 37.25  # NTP reached: the RTC had fallen 37.25 s behind while offline
    assert watch.sample() == pytest.approx(37.25)
    status = watch.status()
    assert status.steps == 1 and status.last_step_s == pytest.approx(37.25)
    assert status.last_step_mono == clocks.mono
    assert status.last_step_at == datetime.fromtimestamp(clocks.wall, timezone.utc)
    assert status.offset_s == pytest.approx(clocks.wall - clocks.mono)
    assert status.synchronised is True and status.max_error_s == 0.01
    clocks.advance(2.0)
    clocks.wall -= 3.0  # and someone set it back
    status = watch.status()
    assert status.steps == 2 and status.last_step_s == pytest.approx(-3.0)


def test_slewing_is_not_a_step_however_long_it_goes_on() -> None:
    clocks = Clocks()
    watch = clocks.watch()
    for _ in range(24 * 1800):  # a day of readings 2 s apart, slewed at the kernel's maximum 500 ppm
        clocks.advance(2.0, slew_ppm=500)
        assert watch.sample() is None
    assert watch.status().steps == 0
    assert watch.offset_s - (1_800_000_000.0 - 5_000.0) == pytest.approx(43.2, abs=0.01)  # it moved, smoothly


def test_a_step_below_the_threshold_is_not_counted() -> None:
    clocks = Clocks()
    watch = clocks.watch(step_threshold_s=1.0)
    clocks.wall += 0.9
    assert watch.sample() is None and watch.steps == 0
    clocks.wall += 1.1
    assert watch.sample() == pytest.approx(1.1) and watch.steps == 1


def test_the_kernel_says_whether_the_clock_is_synchronised() -> None:
    state = kernel_sync()
    assert state.synchronised in (True, False)  # Linux answers; None is for other systems
    assert state.max_error_s is not None and state.max_error_s >= 0
    status = ClockWatch().status()
    assert status.boot_id and len(status.boot_id) == 36
