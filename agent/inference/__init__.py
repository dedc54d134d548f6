"""Object detection and tracking on the pole: ONNX models described by sidecar JSON files."""

from __future__ import annotations

from .detector import DEFAULT_MODEL, Detection, Detector, OnnxDetector, load_detector
from .errors import FrameError, ModelError
from .tracker import IouTracker, Track, TrackUpdate

__all__ = [
    "DEFAULT_MODEL",
    "Detection",
    "Detector",
    "FrameError",
    "IouTracker",
    "ModelError",
    "OnnxDetector",
    "Track",
    "TrackUpdate",
    "load_detector",
]
