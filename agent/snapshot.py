"""A picture taken on request: the camera's newest frame as a JPEG in the box's state folder.

Written atomically (a half-written picture is never there to be fetched) and kept bounded: only the
newest `KEEP` pictures stay, because the state folder shares the SD card with the outbox.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2

from .capture.frame_metrics import Image
from .capture.source import Frame
from .state_files import write_atomic

KEEP = 50


def write_snapshot(
    frame: Frame,
    camera_id: str,
    directory: Path,
    name: str,
    *,
    max_width: int | None = None,
    quality: int = 85,
    image: Image | None = None,
) -> dict[str, Any]:
    """Encode and store one frame (or `image`, its redacted copy); returns what the acknowledgement reports."""
    image = frame.image if image is None else image
    height, width = int(image.shape[0]), int(image.shape[1])
    if max_width is not None and width > max_width:
        height = max(1, round(height * max_width / width))
        width = max_width
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"the frame of camera {camera_id} could not be encoded as JPEG")
    data = encoded.tobytes()
    path = directory / f"{camera_id}-{name}.jpg"
    write_atomic(path, data)
    _prune(directory)
    return {
        "camera_id": camera_id,
        "path": str(path),
        "bytes": len(data),
        "width": width,
        "height": height,
        "sha256": hashlib.sha256(data).hexdigest(),
        "frame_time": datetime.fromtimestamp(frame.wall_time, timezone.utc).isoformat(),
    }


def _prune(directory: Path, keep: int = KEEP) -> None:
    pictures = sorted(directory.glob("*.jpg"), key=lambda p: p.stat().st_mtime)
    for old in pictures[:-keep]:
        old.unlink(missing_ok=True)
