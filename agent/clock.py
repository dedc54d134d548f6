"""How far the box's wall clock can be trusted.

A pole's RTC drifts while the box is off or offline; when NTP reaches it again the wall clock is
stepped, and every timestamp made before that step is off by the step. The monotonic clock never
steps, so the agent watches the difference wall - monotonic: constant while nobody touches the
clock (NTP's slewing moves it by at most 0.5 ms per second), it jumps by exactly the step size when
the clock is set. The health report carries the offset, the steps seen and the kernel's own view
of synchronisation, which is what the server needs to correct or flag the timestamps
(docs/protocol.md, "Clocks").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from polewatch.protocol import ClockStatus

log = logging.getLogger("polewatch.agent.clock")

# A change of wall - monotonic larger than this between two readings is a step, not a slew.
STEP_THRESHOLD_S = 0.5
# adjtimex: the kernel's "clock not synchronised" status bit, and the maxerror it reports once no
# NTP daemon has updated it for a while (16 s; it grows by 500 ppm a second until then).
_STA_UNSYNC = 0x0040
_MAXERROR_UNSYNCED_US = 16_000_000


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """struct timex of <sys/timex.h> (glibc), read with modes = 0: needs no privilege, changes nothing."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


@dataclass(frozen=True)
class SyncState:
    synchronised: bool | None
    max_error_s: float | None


def kernel_sync() -> SyncState:
    """The kernel's NTP state (adjtimex), which chrony, ntpd and systemd-timesyncd all keep up to date.

    Unknown (None) off Linux or where the call is refused (some sandboxes).
    """
    if not sys.platform.startswith("linux"):
        return SyncState(None, None)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        timex = _Timex()
        state = libc.adjtimex(ctypes.byref(timex))
    except (OSError, AttributeError):
        return SyncState(None, None)
    if state < 0:
        return SyncState(None, None)
    max_error_s = timex.maxerror / 1e6
    synchronised = not (timex.status & _STA_UNSYNC) and timex.maxerror < _MAXERROR_UNSYNCED_US
    return SyncState(bool(synchronised), max_error_s)


def boot_id() -> str | None:
    """This boot's id: monotonic readings of different boots cannot be compared."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


class ClockWatch:
    """Follows wall - monotonic and counts the steps of the wall clock.

    The clocks and the synchronisation probe are parameters, so that a test can step a clock of its
    own instead of the machine's.
    """

    def __init__(
        self,
        *,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        sync: Callable[[], SyncState] = kernel_sync,
        step_threshold_s: float = STEP_THRESHOLD_S,
    ) -> None:
        self._wall = wall
        self._mono = mono
        self._sync = sync
        self.step_threshold_s = step_threshold_s
        self.boot_id = boot_id()
        self.offset_s = self._read()[0]
        self.steps = 0
        self.last_step_s: float | None = None
        self.last_step_at: float | None = None
        self.last_step_mono: float | None = None

    def _read(self) -> tuple[float, float, float]:
        mono = self._mono()
        wall = self._wall()
        return wall - mono, wall, mono

    def sample(self) -> float | None:
        """Read both clocks; returns the size of a step seen since the last reading, else None."""
        offset, wall, mono = self._read()
        change = offset - self.offset_s
        self.offset_s = offset
        if abs(change) <= self.step_threshold_s:
            return None
        self.steps += 1
        self.last_step_s = change
        self.last_step_at = wall
        self.last_step_mono = mono
        log.warning(
            "the wall clock was stepped",
            extra={"step_s": round(change, 3), "steps": self.steps, "now": _utc(wall).isoformat()},
        )
        return change

    def status(self) -> ClockStatus:
        self.sample()
        sync = self._sync()
        return ClockStatus(
            synchronised=sync.synchronised,
            max_error_s=sync.max_error_s,
            offset_s=round(self.offset_s, 6),
            boot_id=self.boot_id,
            steps=self.steps,
            last_step_s=None if self.last_step_s is None else round(self.last_step_s, 6),
            last_step_at=None if self.last_step_at is None else _utc(self.last_step_at),
            last_step_mono=self.last_step_mono,
        )


def _utc(wall: float) -> datetime:
    return datetime.fromtimestamp(wall, timezone.utc)
