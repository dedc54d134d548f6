"""The agent's main loop: cameras in, detections, rule events, camera health and health out.

Each camera has its own reader thread, its own detect loop and its own camera-health loop, so one
broken camera never stalls another and a slow detector never delays the news that a lens is
covered; the detector, the camera-health analysis and the outbox run in worker threads, so the event
loop (and with it the MQTT keepalive) never waits on a model, a picture or a disk. A camera's
rules run right after its tracker, on the same frame.

One job per module:

- `agent`: the `Agent` class: builds the parts, starts and stops cameras, does what the server asks.
- `camera_loops`: each camera's detect loop and camera-health loop, and what they put into the outbox.
- `camera_worker`: one camera's source, health checker and motion-gated detector.
- `health_report`: the periodic health report and the clock watch.
- `wire`: conversions of what the agent sees into message bodies.

Everything importable from `polewatch.agent.runtime` before the split still is.
"""

from .agent import SNAPSHOT_WAIT_S, Agent
from .camera_worker import CameraWorker, load_reference
from .health_report import CLOCK_SAMPLE_S, RateMeter
from .wire import camera_health_body, redaction_for, rule_event, snapshot_body

__all__ = [
    "CLOCK_SAMPLE_S",
    "SNAPSHOT_WAIT_S",
    "Agent",
    "CameraWorker",
    "RateMeter",
    "camera_health_body",
    "load_reference",
    "redaction_for",
    "rule_event",
    "snapshot_body",
]
