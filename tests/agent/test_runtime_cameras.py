"""The agent with broken cameras beside a good one: the good one is watched, the broken ones are
reported with their state and reason in the health messages, and nothing stops the agent."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import numpy.typing as npt

from polewatch.agent.config import parse_config
from polewatch.agent.inference import Detection, FrameError, load_detector
from polewatch.agent.runtime import Agent
from polewatch.protocol import KINDS, DetectionMessage, HealthMessage, decode
from support.footage import SAMPLE_CLIP
from support.ports import free_port


class Flaky:
    """The real NanoDet, failing on every third frame as a model given a frame it cannot take would."""

    def __init__(self) -> None:
        self.inner = load_detector()
        self.provider = self.inner.provider
        self.labels = self.inner.labels
        self.calls = 0

    @property
    def last_inference_ms(self) -> float:
        return self.inner.last_inference_ms

    @property
    def mean_inference_ms(self) -> float:
        return self.inner.mean_inference_ms

    def detect(self, frame_bgr: npt.NDArray[Any]) -> list[Detection]:
        self.calls += 1
        if self.calls % 3 == 0:
            raise FrameError("frame must be uint8 BGR (a test's broken frame)")
        return self.inner.detect(frame_bgr)


async def test_broken_cameras_are_reported_and_the_good_one_keeps_detecting(tmp_path: Path) -> None:
    config = parse_config(
        {
            "device_id": "pole-17",
            "state_dir": str(tmp_path / "state"),
            "mqtt": {"host": "127.0.0.1", "port": free_port(), "reconnect_max_s": 1},
            "cameras": [
                {"id": "good", "url": str(SAMPLE_CLIP), "loop": True},
                {"id": "off", "url": f"rtsp://127.0.0.1:{free_port()}/stream", "failed_after_s": 600},
                {"id": "usb", "url": "v4l2:///dev/video93"},
            ],
            "detect": {"fps": 5},
            "health_interval_s": 1,
        }
    )
    detector = Flaky()
    agent = Agent(config, detector=detector)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))

    def messages() -> list[Any]:
        return [decode(p.payload, kinds=KINDS) for p in agent.outbox.peek(5000)]

    def ready() -> bool:
        found = messages()
        healths = [m for m in found if isinstance(m, HealthMessage)]
        if not healths or not any(isinstance(m, DetectionMessage) for m in found):
            return False
        cams = {c.camera_id: c for c in healths[-1].body.cameras}
        return cams["off"].error == "refused" and cams["usb"].state == "failed" and cams["good"].fps > 0

    try:
        for _ in range(400):
            if ready() or task.done():
                break
            await asyncio.sleep(0.1)
        found = messages()
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)
    assert not task.done() or task.exception() is None, "the agent stopped"
    assert detector.calls >= 3, "the failing frames were reached"
    health = [m for m in found if isinstance(m, HealthMessage)][-1].body
    assert health.provider == "CPUExecutionProvider"  # the provider the detector really runs on
    cams = {c.camera_id: c for c in health.cameras}
    assert (cams["good"].state, cams["good"].source, cams["good"].connected) == ("connected", "file", True)
    assert cams["good"].quality in ("good", "fair")
    assert (cams["off"].state, cams["off"].error, cams["off"].quality) == ("connecting", "refused", "down")
    assert (cams["usb"].state, cams["usb"].error, cams["usb"].source) == ("failed", "no_such_device", "v4l2")
    detections = [m for m in found if isinstance(m, DetectionMessage)]
    assert detections and all(m.body.camera_id == "good" for m in detections)
