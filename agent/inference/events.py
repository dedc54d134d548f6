"""The lifecycle of a detection event: start, updates at most every N seconds, end, and its best picture.

The tracker says when an object is confirmed, seen again or lost; this turns that into what the
command centre gets: a `start` with the picture so far, an `update` no more often than
`update_every_s` (carrying a better picture if one was seen since), and an `end` (with the best
picture if it improved after the last one sent). One event's snapshots are therefore few, each
better than the one before, and the last is the best of the whole event.

The best picture is the frame where the detector gave the object its highest score: the frame
itself is kept (a reference, no copy: every decoded frame is a new array) with the detections of
that frame, because blurring must cover everyone in the picture, not only the event's object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy.typing as npt

from .detector import Detection
from .tracker import Track, TrackUpdate

Phase = Literal["start", "update", "end"]


@dataclass(frozen=True)
class Picture:
    """One frame chosen as an event's best, with what the detector saw in it."""

    image: npt.NDArray[Any]
    detections: tuple[Detection, ...]
    box: tuple[float, float, float, float]
    score: float
    wall_time: float


@dataclass(frozen=True)
class EventMessage:
    """One detection message to send, with the picture to send alongside (None: nothing better)."""

    phase: Phase
    track: Track
    picture: Picture | None


@dataclass
class _Event:
    best: Picture | None = None
    sent_score: float = -1.0  # score of the last picture sent
    last_message: float = 0.0  # monotonic time of the last start/update
    pictures: int = 0


@dataclass
class EventLifecycle:
    """Events of one camera. `snapshots=False` sends the messages without pictures."""

    update_every_s: float = 10.0
    snapshots: bool = True
    _events: dict[str, _Event] = field(default_factory=dict)

    def step(
        self,
        update: TrackUpdate,
        now: float,
        frame: npt.NDArray[Any] | None = None,
        detections: list[Detection] | None = None,
        wall_time: float = 0.0,
    ) -> list[EventMessage]:
        """The messages for one tracker update at `now` (monotonic), given the frame it came from."""
        out: list[EventMessage] = []
        for track in update.started:
            event = self._events.setdefault(track.id, _Event())
            self._observe(event, track, frame, detections, wall_time)
            event.last_message = now
            out.append(EventMessage("start", track, self._take(event)))
        for track in update.updated:
            event = self._events.setdefault(track.id, _Event())
            self._observe(event, track, frame, detections, wall_time)
            if now - event.last_message >= self.update_every_s:
                event.last_message = now
                out.append(EventMessage("update", track, self._take(event)))
        for track in update.ended:
            event = self._events.pop(track.id, _Event())
            out.append(EventMessage("end", track, self._take(event)))
        return out

    def _observe(
        self,
        event: _Event,
        track: Track,
        frame: npt.NDArray[Any] | None,
        detections: list[Detection] | None,
        wall_time: float,
    ) -> None:
        if not self.snapshots or frame is None or detections is None:
            return
        # The object's detection in this frame: the one at the track's (just updated) box.
        mine = next((d for d in detections if d.box == track.box and d.label == track.label), None)
        if mine is None:
            return
        if event.best is None or mine.score > event.best.score:
            event.best = Picture(frame, tuple(detections), track.box, mine.score, wall_time)

    def _take(self, event: _Event) -> Picture | None:
        """The best picture if it is better than the last one sent."""
        best = event.best
        if best is None or best.score <= event.sent_score:
            return None
        event.sent_score = best.score
        event.pictures += 1
        return best

    @property
    def open_events(self) -> int:
        return len(self._events)
