"""Frame → model input, and model-input boxes → frame boxes.

The frame loop calls this on every frame, so the input tensor is allocated once and the constant
padding of a letterboxed input is written only when the frame size changes: per frame, only the
resized picture is normalised, straight into the tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from .errors import FrameError
from .metadata import InputSpec


@dataclass(frozen=True)
class Geometry:
    """Where a frame of a given size lands inside the model input."""

    frame_width: int
    frame_height: int
    left: int
    top: int
    width: int  # of the resized picture inside the input
    height: int

    @property
    def scale_x(self) -> float:
        return self.width / self.frame_width

    @property
    def scale_y(self) -> float:
        return self.height / self.frame_height


def geometry_for(spec: InputSpec, frame_width: int, frame_height: int) -> Geometry:
    if spec.resize == "stretch":
        return Geometry(frame_width, frame_height, 0, 0, spec.width, spec.height)
    ratio = min(spec.width / frame_width, spec.height / frame_height)
    width = max(1, min(spec.width, round(frame_width * ratio)))
    height = max(1, min(spec.height, round(frame_height * ratio)))
    return Geometry(
        frame_width,
        frame_height,
        (spec.width - width) // 2,
        (spec.height - height) // 2,
        width,
        height,
    )


def check_frame(frame: object) -> npt.NDArray[np.uint8]:
    if not isinstance(frame, np.ndarray):
        raise FrameError(f"frame must be a numpy array (H, W, 3) uint8 BGR, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise FrameError(f"frame must be uint8 BGR as OpenCV decodes it, got dtype {frame.dtype}")
    if frame.ndim != 3 or frame.shape[2] != 3:
        hint = " (grayscale? convert with cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))" if frame.ndim == 2 else ""
        if frame.ndim == 3 and frame.shape[2] == 4:
            hint = " (BGRA? convert with cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR))"
        raise FrameError(f"frame must have shape (H, W, 3), got {frame.shape}{hint}")
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise FrameError(f"frame is empty: shape {frame.shape}")
    checked: npt.NDArray[np.uint8] = frame
    return checked


class Preprocessor:
    """Turns BGR uint8 frames into the model's input tensor, reusing one buffer."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self.tensor: npt.NDArray[np.float32] = np.zeros((1, 3, spec.height, spec.width), dtype=np.float32)
        # uint8 NHWC models (TF Object Detection API) take the resized pixels as they are.
        self.raw: npt.NDArray[np.uint8] | None = (
            np.full((1, spec.height, spec.width, 3), spec.pad_value, dtype=np.uint8) if spec.dtype == "uint8" else None
        )
        std = np.asarray(spec.std, dtype=np.float32)
        self._scale = (1.0 / std).astype(np.float32)
        self._offset = (np.asarray(spec.mean, dtype=np.float32) / std).astype(np.float32)
        # Tensor channel c is taken from frame channel _source[c].
        self._source = (0, 1, 2) if spec.channel_order == "BGR" else (2, 1, 0)
        self._pad = ((spec.pad_value - np.asarray(spec.mean, dtype=np.float32)) / std).astype(np.float32)
        self.geometry: Geometry | None = None
        self._resized: npt.NDArray[np.uint8] = np.empty((0, 0, 3), dtype=np.uint8)

    def __call__(self, frame: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32] | npt.NDArray[np.uint8]:
        """The input tensor for `frame`; it is this object's buffer, overwritten by the next call."""
        height, width = frame.shape[:2]
        geometry = self.geometry
        if geometry is None or geometry.frame_width != width or geometry.frame_height != height:
            geometry = self._set_geometry(width, height)
        resized = cv2.resize(
            frame, (geometry.width, geometry.height), dst=self._resized, interpolation=cv2.INTER_LINEAR
        )
        if resized is not self._resized:  # OpenCV reallocated (never seen; kept for safety)
            self._resized[...] = resized
        rows = slice(geometry.top, geometry.top + geometry.height)
        cols = slice(geometry.left, geometry.left + geometry.width)
        if self.raw is not None:
            inside = self.raw[0, rows, cols]
            if self.spec.channel_order == "RGB":
                cv2.cvtColor(self._resized, cv2.COLOR_BGR2RGB, dst=inside)
            else:
                inside[...] = self._resized
            return self.raw
        for channel, source in enumerate(self._source):
            plane = self.tensor[0, channel, rows, cols]
            np.multiply(self._resized[:, :, source], self._scale[channel], out=plane, dtype=np.float32)
            np.subtract(plane, self._offset[channel], out=plane)
        return self.tensor

    def _set_geometry(self, width: int, height: int) -> Geometry:
        geometry = geometry_for(self.spec, width, height)
        self._resized = np.empty((geometry.height, geometry.width, 3), dtype=np.uint8)
        if self.raw is not None:
            self.raw[...] = self.spec.pad_value
        for channel in range(3):
            self.tensor[0, channel] = self._pad[channel]
        self.geometry = geometry
        return geometry

    def boxes_to_frame(self, boxes: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Map x1,y1,x2,y2 boxes from input pixels to pixels of the last frame, clipped to it (in place)."""
        geometry = self.geometry
        if geometry is None:
            raise RuntimeError("boxes_to_frame called before any frame was preprocessed")
        boxes[:, 0::2] -= geometry.left
        boxes[:, 0::2] /= geometry.scale_x
        boxes[:, 1::2] -= geometry.top
        boxes[:, 1::2] /= geometry.scale_y
        np.clip(boxes[:, 0::2], 0.0, geometry.frame_width, out=boxes[:, 0::2])
        np.clip(boxes[:, 1::2], 0.0, geometry.frame_height, out=boxes[:, 1::2])
        return boxes
