"""The real agent, given a damaged video as its camera, tells the broker when each condition starts
and ends: one start and one end per damage, not one message per frame.

The video is the shipped clip damaged in turn (lens covered, picture frozen, camera knocked, focus
lost), written as MPEG-4 (lossy, with key frames, as a camera's stream is: the frozen stretch is
re-encoded, not copied) and played by FrameSource at its own 10 fps. The reference view is the
one `polewatch provision probe-camera --reference` saved. Debounce times are shortened to 1 s so
that the whole story fits in 25 s of real time; the defaults are tested on the footage's own clock
in test_camera_health.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import numpy.typing as npt
import pytest
import yaml

from polewatch.agent.config import load_config
from polewatch.agent.inference.detector import Detection as Found
from polewatch.agent.runtime import Agent
from polewatch.protocol import CameraHealth, decode, topics
from polewatch.provisioning.camera_probe import probe_camera
from support.brokers import USERS, BrokerProcess
from support.footage import (
    FOOTAGE_FPS,
    SAMPLE_CLIP,
    Damage,
    Image,
    black,
    defocused,
    iter_frames,
    knocked,
    write_video,
)

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]

# What happens to the camera, in seconds of the video (clean footage between and after).
FROZEN = "frozen"
STORY: list[tuple[str, float, float, Damage | str]] = [
    ("covered", 2.0, 5.0, black),
    ("frozen", 7.0, 10.0, FROZEN),
    ("shifted", 12.0, 15.0, knocked(dx=0.12, dy=0.05, degrees=4.0)),
    ("blurred", 17.0, 20.0, defocused),
]
LENGTH_S = 23.0


def damaged_frames() -> Iterator[Image]:
    held: Image | None = None
    for index, frame in enumerate(iter_frames(SAMPLE_CLIP)):
        t = index / FOOTAGE_FPS
        if t >= LENGTH_S:
            return
        damage = next((d for _, start, end, d in STORY if start <= t < end), None)
        if damage == FROZEN:
            held = frame if held is None else held
            yield held
            continue
        held = None
        yield damage(frame) if callable(damage) else frame


class NoDetector:
    """The detector is not under test here: it sees nothing, at no cost."""

    provider = "none"
    labels: tuple[str, ...] = ()
    last_inference_ms = 0.0
    mean_inference_ms = 0.0

    def detect(self, frame_bgr: npt.NDArray[Any]) -> list[Found]:
        return []


def _config(tmp_path: Path, broker: BrokerProcess, video: Path) -> Path:
    fast = {"start_after_s": 1.0, "end_after_s": 1.0}
    config = {
        "device_id": "pole-a",
        "state_dir": "state",
        "mqtt": {"host": broker.host, "port": broker.port, "username": "pole-a", "password": USERS["pole-a"],
                 "keepalive_s": 5, "reconnect_max_s": 1},
        "cameras": [{
            "id": "cam1",
            "url": video.name,
            "reference": "reference/cam1.jpg",  # relative to the config file, as on a pole
            "health": {
                "sample_fps": 4,
                "covered": fast,
                "frozen": fast,
                "blurred": fast,
                "shifted": {**fast, "check_every_s": 0.5},
                # This camera should deliver 25 fps; the file plays at 10: sustained low fps throughout.
                "low_fps": {**fast, "expected_fps": 25},
            },
        }],
        "detect": {"fps": 1},
        "health_interval_s": 60,
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def test_damaged_video_gives_one_start_and_one_end_per_damage_over_mqtt(
    mosquitto_broker: BrokerProcess, tmp_path: Path
) -> None:
    video = write_video(tmp_path / "damaged.mp4", damaged_frames())
    saved = probe_camera(str(SAMPLE_CLIP), frames=5, reference=tmp_path / "reference" / "cam1.jpg")
    assert saved.reference is not None and saved.reference.is_file()
    agent = Agent(load_config(_config(tmp_path, mosquitto_broker, video)), detector=NoDetector())
    assert agent.checkers["cam1"].reference is not None and not agent.checkers["cam1"].reference_learned

    received: list[CameraHealth] = []

    async def collect(client: aiomqtt.Client, until: tuple[str, str] | None) -> None:
        async for message in client.messages:
            body = decode(bytes(message.payload), topics.parse(message.topic.value)).body
            assert isinstance(body, CameraHealth)
            received.append(body)
            if (body.condition, body.phase) == until:
                return

    stop = asyncio.Event()
    async with aiomqtt.Client(
        mosquitto_broker.host, mosquitto_broker.port, username="tester", password=USERS["tester"]
    ) as client:
        await client.subscribe(topics.up("pole-a", "camera_health"), qos=1)
        running = asyncio.create_task(agent.run(stop))
        try:
            await asyncio.wait_for(collect(client, ("blurred", "end")), LENGTH_S + 20)
            # Anything sent after the last end would be a message too many: listen a little longer.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(collect(client, None), 1.5)
        finally:
            stop.set()
            await asyncio.wait_for(running, 15)

    story = [(b.condition, b.phase) for b in received]
    assert sorted(story) == sorted(
        [("low_fps", "start")]
        + [(condition, phase) for condition, *_ in STORY for phase in ("start", "end")]
    ), story
    starts: dict[str, CameraHealth] = {b.condition: b for b in received if b.phase == "start"}
    ends: dict[str, CameraHealth] = {b.condition: b for b in received if b.phase == "end"}
    assert starts["covered"].variant == ends["covered"].variant == "black"
    assert starts["low_fps"].value is not None and 8.0 <= starts["low_fps"].value <= 11.0

    # Each condition began where its damage began and ended where it ended, on the video's clock.
    origin = starts["covered"].since.timestamp() - STORY[0][1]
    for condition, begin, end, _ in STORY:
        start, finish = starts[condition], ends[condition]
        assert finish.since == start.since
        assert finish.until is not None
        began, cleared = start.since.timestamp() - origin, finish.until.timestamp() - origin
        assert begin - 0.01 <= began <= begin + 1.0, (condition, began)
        assert end - 0.5 <= cleared <= end + 1.0, (condition, cleared)
