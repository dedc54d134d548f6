"""FrameSource against a real RTSP server (GStreamer's) serving the sample clip, on a random loopback port.

OpenCV's FFmpeg backend buffers about 2.4 s of stream while it probes (open returns then), so each
connection hands over a burst of ~24 frames at once before it settles at the camera's 10 fps; rates
are measured after that burst.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from polewatch.agent.capture.source import FrameSource
from polewatch.agent.health import camera_status
from support.footage import SAMPLE_CLIP, read_frames
from support.ports import free_port
from support.rtsp import RtspServer, start_rtsp_server

pytestmark = [pytest.mark.rtsp]

CLIP_SHAPE = (576, 768, 3)  # the sample clip: 768x576, 10 fps
CLIP_FPS = 10.0
CONNECT_S = 15.0  # bound on a first frame: the ~2.4 s probe plus slack for a loaded CI machine
OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
RETRY_MESSAGE = "camera cannot be opened; retrying"


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


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., RtspServer]]:
    servers: list[RtspServer] = []

    def make(**options: Any) -> RtspServer:
        server = start_rtsp_server(tmp_path / f"rtsp-{len(servers)}", **options)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def server(make_server: Callable[..., RtspServer]) -> RtspServer:
    return make_server()


@pytest.fixture
def open_source() -> Iterator[Callable[..., FrameSource]]:
    """Started FrameSources, stopped at teardown (before the servers, which were set up first)."""
    sources: list[FrameSource] = []

    def make(url: str, **options: Any) -> FrameSource:
        options.setdefault("reconnect_max_s", 2.0)
        source = FrameSource(f"cam{len(sources) + 1}", url, **options)
        sources.append(source)
        source.start()
        return source

    yield make
    for source in sources:
        source.stop(timeout=10)


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_reads_the_live_stream_at_the_camera_rate(
    transport: str,
    make_server: Callable[..., RtspServer],
    open_source: Callable[..., FrameSource],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The server offers only this transport, so frames prove the client used it. Without options
    # OpenCV asks for TCP (interleaved) first; UDP is the camera's `transport` setting.
    monkeypatch.delenv(OPTIONS_ENV, raising=False)
    server = make_server(transport=transport)
    source = open_source(server.url, transport=transport)

    first = source.latest(timeout=CONNECT_S)
    assert first is not None, f"no frame within {CONNECT_S} s; server log:\n{server.log_tail()}"
    assert first.image.shape == CLIP_SHAPE
    assert (source.width, source.height) == (768, 576)
    assert source.connected

    time.sleep(1.5)  # the probe's burst drains at once; what follows is the camera's own pace
    frames_before, start = source.frames_read, time.monotonic()
    indices: list[int] = []
    last = first
    while time.monotonic() - start < 4.0:
        frame = source.latest(newer_than=last.index, timeout=2.0)
        assert frame is not None, "frames stopped arriving"
        indices.append(frame.index)
        last = frame
    rate = (source.frames_read - frames_before) / (time.monotonic() - start)

    assert 0.8 * CLIP_FPS <= rate <= 1.2 * CLIP_FPS, f"{rate:.1f} frames/s"
    assert 0.8 * CLIP_FPS <= source.fps() <= 1.25 * CLIP_FPS, f"fps() says {source.fps():.1f}"
    assert all(b > a for a, b in itertools.pairwise(indices)), indices
    assert len(indices) >= 30  # a consumer as fast as the camera gets nearly every frame of the 4 s
    assert not np.array_equal(first.image, last.image), "the picture never changed: not a live stream"
    assert source.reconnects == 0
    assert OPTIONS_ENV not in os.environ  # the UDP open put the process-wide options back


def test_mixed_transports_on_one_box(
    make_server: Callable[..., RtspServer],
    open_source: Callable[..., FrameSource],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A UDP-only camera and a TCP-only camera side by side, each opened with its own transport."""
    monkeypatch.delenv(OPTIONS_ENV, raising=False)
    udp, tcp = make_server(transport="udp"), make_server(transport="tcp")
    sources = [open_source(udp.url, transport="udp"), open_source(tcp.url, transport="tcp")]
    for source in sources:
        assert source.latest(timeout=CONNECT_S) is not None
        assert source.state == "connected"


def test_slow_consumer_gets_the_newest_frame_not_a_backlog(
    server: RtspServer, open_source: Callable[..., FrameSource]
) -> None:
    source = open_source(server.url)
    assert source.latest(timeout=CONNECT_S) is not None
    time.sleep(1.0)  # past the probe's burst
    previous = source.latest(timeout=2.0)
    assert previous is not None
    dropped_before = source.frames_dropped

    steps: list[int] = []
    ages: list[float] = []
    for _ in range(6):
        time.sleep(0.5)  # a detector that needs half a second per frame
        frame = source.latest(newer_than=previous.index, timeout=2.0)
        assert frame is not None
        ages.append(time.monotonic() - frame.mono_time)
        steps.append(frame.index - previous.index)
        previous = frame

    # ~5 frames arrive per 0.5 s; the consumer jumps over them instead of working through a queue.
    assert all(3 <= step <= 8 for step in steps), steps
    assert max(ages) < 0.35, f"stale frames handed out (ages {ages})"
    assert source.frames_dropped - dropped_before == sum(step - 1 for step in steps)


def test_server_killed_then_back_on_the_same_port(server: RtspServer, open_source: Callable[..., FrameSource]) -> None:
    source = open_source(server.url)
    assert source.latest(timeout=CONNECT_S) is not None
    assert source.reconnects == 0

    server.kill()
    wait_for(lambda: not source.connected, 5.0, "connected=False after the server was killed")
    frames_at_loss = source.frames_read
    time.sleep(1.0)  # a few reconnect attempts against a closed port
    assert reader_alive(source), "the reader thread died with the camera"
    assert not source.connected
    assert source.latest(newer_than=frames_at_loss, timeout=0.2) is None

    server.start()  # same port, same URL
    frame = source.latest(newer_than=frames_at_loss, timeout=CONNECT_S + 2.0)
    assert frame is not None, f"no frame after the server came back; server log:\n{server.log_tail()}"
    assert frame.image.shape == CLIP_SHAPE
    assert source.connected
    assert source.reconnects == 1
    assert source.state == "connected"
    assert camera_status(source).reconnects_1h == 1


def test_server_killed_reports_reconnecting_and_refused(
    server: RtspServer, open_source: Callable[..., FrameSource], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="polewatch.agent.capture")
    source = open_source(server.url)
    assert source.latest(timeout=CONNECT_S) is not None
    assert camera_status(source).state == "connected"
    assert source.nominal_fps == CLIP_FPS  # the stream says its rate; the grade compares with it

    server.kill()
    wait_for(lambda: source.last_error is not None and source.last_error.reason == "refused", 10.0, "refused")
    status = camera_status(source)
    assert (status.state, status.connected, status.quality, status.error) == ("reconnecting", False, "down", "refused")
    assert any(r.getMessage() == "camera connection lost; reconnecting" for r in caplog.records)


def test_url_that_never_answers_fails_after_its_time(
    open_source: Callable[..., FrameSource], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="polewatch.agent.capture")
    # A port that accepts connections (the kernel's backlog) and never says a word: a hung camera.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        source = open_source(f"rtsp://127.0.0.1:{port}/clip", open_timeout_s=1.0, failed_after_s=2.0)
        wait_for(lambda: source.last_error is not None, 10.0, "a diagnosis")
        assert source.last_error is not None and source.last_error.reason == "timeout"
        assert source.state in ("connecting", "failed")
        wait_for(lambda: source.state == "failed", 15.0, "state failed")
    failed = [r for r in caplog.records if r.getMessage().startswith("camera failed: the camera does not answer")]
    assert len(failed) == 1
    assert source.frames_read == 0
    assert reader_alive(source)


def test_nothing_listening_retries_quietly_and_stops_promptly(
    open_source: Callable[..., FrameSource], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="polewatch.agent.capture")
    source = open_source(f"rtsp://127.0.0.1:{free_port()}/clip", reconnect_max_s=0.5)

    assert source.latest(timeout=3.0) is None
    assert not source.connected
    assert source.frames_read == 0
    assert reader_alive(source)
    retries = [r for r in caplog.records if r.getMessage() == RETRY_MESSAGE]
    assert len(retries) >= 3, [r.getMessage() for r in caplog.records]

    start = time.monotonic()
    source.stop()
    assert time.monotonic() - start < 1.5
    assert not reader_alive(source)


def test_wrong_password_is_refused_and_never_logged(
    make_server: Callable[..., RtspServer], open_source: Callable[..., FrameSource], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="polewatch.agent.capture")
    server = make_server(username="viewer", password="right-password")
    wrong = open_source(server.url_with("viewer", "wrong-password"), reconnect_max_s=0.5)
    right = open_source(server.url)

    assert right.latest(timeout=CONNECT_S) is not None
    assert right.connected

    def retries() -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.getMessage() == RETRY_MESSAGE and getattr(r, "camera", None) == wrong.camera_id
        ]

    # On a loaded machine one refused attempt can take seconds: wait for the second, boundedly.
    wait_for(lambda: len(retries()) >= 2, 2 * CONNECT_S, "two refused attempts of the wrong password")
    assert not wrong.connected
    assert wrong.frames_read == 0
    # The camera is asked why (RTSP DESCRIBE): a wrong password is failed at once, with the reason.
    assert wrong.state == "failed"
    assert all(getattr(r, "reason", None) == "unauthorized" for r in retries())
    status = camera_status(wrong)
    assert (status.error, status.quality) == ("unauthorized", "down")
    assert "401 Unauthorized" in (status.error_detail or "")
    failed = [r for r in caplog.records if r.getMessage().startswith("camera failed:")]
    assert len(failed) == 1 and "check the credentials" in failed[0].getMessage()
    assert right.state == "connected"
    for record in caplog.records:
        assert "wrong-password" not in str(record.__dict__)
        assert "right-password" not in str(record.__dict__)


def test_stream_that_ends_is_reopened_and_counted(
    make_server: Callable[..., RtspServer], open_source: Callable[..., FrameSource]
) -> None:
    server = make_server(end_after_frames=40)  # every session ends after 4 s of video
    source = open_source(server.url)
    wait_for(lambda: source.frames_read > 40, 2 * CONNECT_S, "frames from a second session")
    assert source.reconnects >= 1


def test_frozen_stream_is_noticed_within_the_stall_timeout(
    server: RtspServer, open_source: Callable[..., FrameSource]
) -> None:
    source = open_source(server.url, stall_timeout_s=2.0)
    assert source.latest(timeout=CONNECT_S) is not None
    server.pause()  # SIGSTOP: the TCP connection stays open, nothing more arrives
    try:
        took = wait_for(lambda: not source.connected, 2.0 + 4.0, "connected=False after the stream froze")
    finally:
        server.resume()
    assert took >= 1.0  # not a coincidental disconnect: the stall was waited out
    assert source.stall_log.total == 1
    assert camera_status(source).stalls_1h == 1


def test_stream_whose_resolution_changes_is_followed_and_logged(
    make_server: Callable[..., RtspServer],
    open_source: Callable[..., FrameSource],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The camera's resolution is changed (its stream restarts, as IP cameras do): 768x576 → 384x288.

    Served as RTP/JPEG, where every frame carries its own size, from the clip's real frames.
    """
    caplog.set_level(logging.INFO, logger="polewatch.agent.capture")
    full, half = tmp_path / "full", tmp_path / "half"
    full.mkdir()
    half.mkdir()
    for i, image in enumerate(read_frames(SAMPLE_CLIP)[:30]):
        cv2.imwrite(str(full / f"{i:04d}.jpg"), image)
        cv2.imwrite(str(half / f"{i:04d}.jpg"), cv2.resize(image, (384, 288), interpolation=cv2.INTER_AREA))
    server = make_server(frames_dir=full)
    source = open_source(server.url)
    first = source.latest(timeout=CONNECT_S)
    assert first is not None and first.image.shape == CLIP_SHAPE

    server.stop()
    server.frames_dir = half
    server.start()
    wait_for(lambda: source.width == 384, 2 * CONNECT_S, "the new resolution")
    frame = source.latest(timeout=5.0)
    assert frame is not None and frame.image.shape == (288, 384, 3)
    assert (source.width, source.height, source.resolution_changes) == (384, 288, 1)
    assert source.state == "connected"
    changed = [r for r in caplog.records if r.getMessage() == "camera resolution changed from 768x576 to 384x288"]
    assert len(changed) == 1 and changed[0].levelno == logging.WARNING
    assert camera_status(source).width == 384
