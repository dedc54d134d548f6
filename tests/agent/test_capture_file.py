"""FrameSource on a video file: played at the file's own frame rate, looped or played once.

Short clips are written by the test with OpenCV (MJPG in AVI, which every OpenCV build can write) so
that looping and the end of a file happen within a second or two; the sample clip checks the rate of
the footage the demo uses.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from polewatch.agent.capture.source import FrameSource

SAMPLE_CLIP = Path(str(resources.files("polewatch") / "samples" / "vtest-clip.mp4"))  # 768x576, 10 fps, 45 s
SHORT_FPS = 10.0
SHORT_FRAMES = 20  # 2 s
SHORT_SIZE = (160, 120)  # width, height


def wait_for(check: Callable[[], object], timeout: float, what: str) -> float:
    """Poll `check` until it is true; the seconds it took, or AssertionError after `timeout`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start


def reader_alive(source: FrameSource) -> bool:
    return any(t.name == f"capture-{source.camera_id}" and t.is_alive() for t in threading.enumerate())


def write_clip(path: Path, fps: float, frames: int, size: tuple[int, int] = SHORT_SIZE) -> Path:
    """A clip whose frame i is a flat grey of brightness 10 * i (mod 250): a frame tells where in the file it is."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, size)
    if not writer.isOpened():
        pytest.fail("OpenCV cannot write an MJPG AVI here")
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), (10 * i) % 250, np.uint8))
    writer.release()
    return path


def brightness(image: np.ndarray) -> float:
    return float(image.mean())


@pytest.fixture
def open_source() -> Iterator[Callable[..., FrameSource]]:
    sources: list[FrameSource] = []

    def make(url: str, **options: Any) -> FrameSource:
        options.setdefault("reconnect_max_s", 1.0)
        source = FrameSource(f"file{len(sources) + 1}", url, **options)
        sources.append(source)
        source.start()
        return source

    yield make
    for source in sources:
        source.stop()


def measured_rate(source: FrameSource, seconds: float) -> float:
    frames_before, start = source.frames_read, time.monotonic()
    time.sleep(seconds)
    return (source.frames_read - frames_before) / (time.monotonic() - start)


def test_sample_clip_plays_at_its_own_rate(open_source: Callable[..., FrameSource]) -> None:
    source = open_source(str(SAMPLE_CLIP), loop=True)
    first = source.latest(timeout=5.0)
    assert first is not None
    assert first.image.shape == (576, 768, 3)
    assert source.connected

    rate = measured_rate(source, 3.0)
    assert 8.5 <= rate <= 11.5, f"{rate:.1f} frames/s from a 10 fps file"
    assert 8.5 <= source.fps() <= 11.5


def test_another_file_plays_at_its_rate(tmp_path: Path, open_source: Callable[..., FrameSource]) -> None:
    # Not a fixed 10 fps: a 25 fps file plays at 25 fps.
    clip = write_clip(tmp_path / "fast.avi", fps=25.0, frames=100)
    source = open_source(str(clip), loop=True)
    assert source.latest(timeout=5.0) is not None

    rate = measured_rate(source, 2.0)
    assert 21.0 <= rate <= 29.0, f"{rate:.1f} frames/s from a 25 fps file"


def test_looping_file_starts_over_without_reconnecting(tmp_path: Path, open_source: Callable[..., FrameSource]) -> None:
    clip = write_clip(tmp_path / "short.avi", fps=SHORT_FPS, frames=SHORT_FRAMES)
    source = open_source(f"file://{clip}", loop=True)

    seen: list[tuple[int, float]] = []  # (index, brightness) of every frame, taken as they come
    last = 0
    deadline = time.monotonic() + 2.5 * SHORT_FRAMES / SHORT_FPS
    while time.monotonic() < deadline:
        frame = source.latest(newer_than=last, timeout=1.0)
        assert frame is not None, f"the file stopped delivering after frame {last}"
        assert source.connected
        seen.append((frame.index, brightness(frame.image)))
        last = frame.index

    indices = [index for index, _ in seen]
    assert indices == list(range(indices[0], indices[0] + len(indices))), "frames skipped or repeated"
    assert last > 2 * SHORT_FRAMES  # past the second end of the file
    # The picture brightens through the file and falls back to black where the file starts over.
    wraps = [i for i in range(1, len(seen)) if seen[i][1] < seen[i - 1][1] - 100]
    assert len(wraps) == 2, [round(b) for _, b in seen]
    assert seen[wraps[0]][1] < 10  # back to frame 0
    assert source.reconnects == 0


def test_file_without_loop_plays_once_and_ends(tmp_path: Path, open_source: Callable[..., FrameSource]) -> None:
    clip = write_clip(tmp_path / "short.avi", fps=SHORT_FPS, frames=SHORT_FRAMES)
    source = open_source(str(clip), loop=False)
    assert source.latest(timeout=5.0) is not None

    wait_for(lambda: source.frames_read >= SHORT_FRAMES, 2 * SHORT_FRAMES / SHORT_FPS, "the whole file")
    time.sleep(1.5)  # long enough for a replay to have begun, and for any reconnect backoff
    assert source.frames_read == SHORT_FRAMES
    assert not source.connected
    assert source.latest(newer_than=SHORT_FRAMES, timeout=0.3) is None
    start = time.monotonic()
    source.stop()
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_missing_file_is_not_connected_logged_and_harmless(
    scheme: str, tmp_path: Path, open_source: Callable[..., FrameSource], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="polewatch.agent.capture")
    path = tmp_path / "no-such-clip.mp4"
    source = open_source(f"{scheme}{path}", loop=True)

    assert source.latest(timeout=1.5) is None
    assert not source.connected
    assert source.frames_read == 0
    assert reader_alive(source)
    assert source.state == "failed"  # waiting will not make the file appear: someone must act
    assert source.last_error is not None and source.last_error.reason == "no_such_file"
    assert source.last_error.detail == f"{path} does not exist"
    missing = [r for r in caplog.records if r.getMessage().startswith("camera failed: the video file does not exist")]
    assert len(missing) == 1, [r.getMessage() for r in caplog.records]  # once, not per retry
    assert missing[0].levelno == logging.ERROR and getattr(missing[0], "reason", None) == "no_such_file"

    start = time.monotonic()
    source.stop()
    assert time.monotonic() - start < 1.5
    assert not reader_alive(source)
