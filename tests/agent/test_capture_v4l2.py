"""USB/V4L2 cameras: what can be tested on a machine without a video device.

This sandbox has no /dev/video* and cannot load v4l2loopback (no modprobe, no kernel modules), so a
real frame from a V4L2 device is not tested here; what is: the URL forms, OpenCV's V4L2 backend
being present, and a missing or wrong device giving the right state and log line without harming
another camera.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import cv2
import pytest

from polewatch.agent.capture.source import FrameSource, source_kind, v4l2_device
from polewatch.agent.config import ConfigError, parse_config
from polewatch.agent.health import camera_status
from support.footage import SAMPLE_CLIP


def wait_for(check: Callable[[], object], timeout: float, what: str) -> None:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def open_source() -> Iterator[Callable[..., FrameSource]]:
    sources: list[FrameSource] = []

    def make(url: str, **options: Any) -> FrameSource:
        options.setdefault("reconnect_max_s", 0.5)
        source = FrameSource(f"cam{len(sources) + 1}", url, **options)
        sources.append(source)
        source.start()
        return source

    yield make
    for source in sources:
        source.stop(timeout=10)


def test_url_forms() -> None:
    assert source_kind("v4l2:///dev/video2") == "v4l2"
    assert v4l2_device("v4l2:///dev/video2") == "/dev/video2"
    assert v4l2_device("v4l2://1") == "/dev/video1"
    assert source_kind("rtsp://cam/1") == "rtsp"
    assert source_kind("http://cam/mjpg") == "http"
    assert source_kind("/videos/a.mp4") == "file"
    assert cv2.videoio_registry.hasBackend(cv2.CAP_V4L2), "OpenCV without its V4L2 backend cannot read USB cameras"


def test_missing_device_fails_at_once_and_another_camera_runs_on(
    open_source: Callable[..., FrameSource], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="polewatch.agent.capture")
    usb = open_source("v4l2:///dev/video97")
    clip = open_source(str(SAMPLE_CLIP), loop=True)
    wait_for(lambda: usb.state == "failed", 5.0, "state failed")
    assert usb.last_error is not None and usb.last_error.reason == "no_such_device"
    status = camera_status(usb)
    assert (status.source, status.state, status.error) == ("v4l2", "failed", "no_such_device")
    failed = [r for r in caplog.records if r.getMessage().startswith("camera failed: the video device does not exist")]
    assert len(failed) == 1 and failed[0].levelno == logging.ERROR
    assert clip.latest(timeout=10.0) is not None and clip.state == "connected"


def test_a_device_that_is_not_a_camera_is_retried_then_failed(open_source: Callable[..., FrameSource]) -> None:
    source = open_source("v4l2:///dev/null", failed_after_s=1.0)
    wait_for(lambda: source.last_error is not None, 5.0, "a diagnosis")
    assert source.last_error is not None and source.last_error.reason == "undecodable"
    wait_for(lambda: source.state == "failed", 10.0, "state failed after failed_after_s")
    assert source.frames_read == 0


def _config(url: str, **camera: Any) -> dict[str, Any]:
    return {
        "device_id": "pole-1",
        "state_dir": "/tmp/x",
        "mqtt": {"host": "localhost"},
        "cameras": [{"id": "cam1", "url": url, **camera}],
    }


def test_config_accepts_device_urls_and_refuses_bad_ones() -> None:
    assert parse_config(_config("v4l2:///dev/video0")).cameras[0].url == "v4l2:///dev/video0"
    assert parse_config(_config("v4l2://0")).cameras[0].url == "v4l2://0"
    with pytest.raises(ConfigError, match="a v4l2 url names a device"):
        parse_config(_config("v4l2://camera"))
    with pytest.raises(ConfigError, match="transport applies to rtsp:// cameras only"):
        parse_config(_config("v4l2://0", transport="udp"))
    assert parse_config(_config("rtsp://cam/1", transport="udp")).cameras[0].transport == "udp"
    with pytest.raises(ConfigError, match=r"cameras\.0\.transport"):
        parse_config(_config("rtsp://cam/1", transport="sctp"))
