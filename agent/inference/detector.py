"""Object detection on BGR frames with an ONNX model described by its sidecar JSON.

`load_detector()` is the one entry point: it reads `<model>.json` beside `<model>.onnx`, checks the
sidecar against the model, and returns a detector whose `detect()` does preprocess → inference →
decode → class-wise NMS and returns boxes in the original frame's pixels.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from .decoder import Decoder, Shape
from .errors import ModelError
from .metadata import ModelMetadata, load_metadata, sha256_of, sidecar_path
from .nanodet import NanoDetDecoder
from .nms import batched_nms
from .preprocess import Preprocessor, check_frame
from .session import create_session, resolve_threads
from .tf_od_api import TfOdApiDecoder
from .yolo import YoloV8Decoder

DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "nanodet-m-416.onnx"

# Exponential moving average weight of the newest inference time: about the last 20 frames count, so
# the health figure follows thermal throttling or a busy CPU instead of averaging it away.
MEAN_WEIGHT = 0.05

# (head settings, input width, input height, number of labels, output shapes by name, selected class ids)
DecoderFactory = Callable[[Mapping[str, object], int, int, int, Mapping[str, Shape], Collection[int] | None], Decoder]

FAMILIES: dict[str, DecoderFactory] = {
    "nanodet": NanoDetDecoder.from_metadata,
    "yolov8": YoloV8Decoder.from_metadata,
    "tf_od_api": TfOdApiDecoder.from_metadata,
}


@dataclass(frozen=True, slots=True)
class Detection:
    """One object in a frame; coordinates are pixels of the frame given to detect()."""

    label: str
    class_id: int
    score: float
    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)


@runtime_checkable
class Detector(Protocol):
    """What the agent needs from a detector; fakes in other components' tests may implement just this."""

    @property
    def provider(self) -> str:
        """The onnxruntime execution provider actually in use (for health reports)."""
        ...

    @property
    def labels(self) -> tuple[str, ...]: ...

    @property
    def last_inference_ms(self) -> float: ...

    @property
    def mean_inference_ms(self) -> float: ...

    def detect(self, frame_bgr: npt.NDArray[Any]) -> list[Detection]:
        """Objects in an (H, W, 3) uint8 BGR frame, best score first; FrameError for anything else."""
        ...


class OnnxDetector:
    """A Detector over one onnxruntime session, shared by every camera of the agent.

    detect() is thread-safe by serialising calls: the input tensor and decode buffers are reused
    between frames, and the session already uses all the cores it was given, so running two frames at
    once would only make both slower.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        metadata: ModelMetadata,
        decoder: Decoder,
        *,
        score_threshold: float,
        iou_threshold: float,
        max_detections: int = 100,
        model_path: Path | None = None,
        class_agnostic: bool = False,
    ) -> None:
        self.session = session
        self.metadata = metadata
        self.decoder = decoder
        self.model_path = model_path
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.max_detections = max_detections
        # Per-class NMS (default) keeps a person and a bicycle under them; class-agnostic keeps only
        # the best box where a model calls one object by two names (NanoDet's car / truck).
        self.class_agnostic = class_agnostic
        self.labels: tuple[str, ...] = tuple(metadata.labels)
        self.input_name = metadata.input.name
        self.preprocess = Preprocessor(metadata.input)
        self.provider: str = session.get_providers()[0]
        self._output_names = decoder.output_names
        self.last_inference_ms = 0.0
        self.mean_inference_ms = 0.0
        self.last_detect_ms = 0.0
        self.frames = 0
        self._lock = threading.Lock()

    def detect(self, frame_bgr: npt.NDArray[Any]) -> list[Detection]:
        # Typed as any array because that is what OpenCV's stubs say cv2 returns; the dtype and shape
        # are checked at run time instead.
        frame = check_frame(frame_bgr)
        with self._lock:
            started = time.perf_counter()
            tensor = self.preprocess(frame)
            before_run = time.perf_counter()
            outputs = self.session.run(self._output_names, {self.input_name: tensor})
            after_run = time.perf_counter()
            detections = self._postprocess(outputs)
            self._record((after_run - before_run) * 1000.0, (time.perf_counter() - started) * 1000.0)
        return detections

    def warm_up(self, runs: int = 2) -> None:
        """Run on a blank frame so that the first real frame is not the slow one; stats are untouched."""
        blank = np.zeros((self.metadata.input.height, self.metadata.input.width, 3), dtype=np.uint8)
        with self._lock:
            tensor = self.preprocess(blank)
            for _ in range(runs):
                self.session.run(self._output_names, {self.input_name: tensor})

    def _postprocess(self, outputs: list[npt.NDArray[np.float32]]) -> list[Detection]:
        candidates = self.decoder.decode(outputs, self.score_threshold)
        if candidates.scores.size == 0:
            return []
        groups = np.zeros_like(candidates.class_ids) if self.class_agnostic else candidates.class_ids
        keep = batched_nms(candidates.boxes, candidates.scores, groups, self.iou_threshold, self.max_detections)
        boxes = self.preprocess.boxes_to_frame(candidates.boxes[keep])
        labels = self.labels
        return [
            Detection(labels[class_id], class_id, score, x1, y1, x2, y2)
            for (x1, y1, x2, y2), score, class_id in zip(
                boxes.tolist(),
                candidates.scores[keep].tolist(),
                candidates.class_ids[keep].tolist(),
                strict=True,
            )
            if x2 > x1 and y2 > y1  # a box wholly inside the letterbox padding clips to nothing
        ]

    def _record(self, inference_ms: float, detect_ms: float) -> None:
        self.last_inference_ms = inference_ms
        self.last_detect_ms = detect_ms
        self.frames += 1
        if self.frames == 1:
            self.mean_inference_ms = inference_ms
        else:
            self.mean_inference_ms += MEAN_WEIGHT * (inference_ms - self.mean_inference_ms)


def load_detector(
    model_path: Path | None = None,
    *,
    score_threshold: float = 0.35,
    iou_threshold: float = 0.5,
    labels: Collection[str] | None = None,
    threads: int | None = None,
    trt_cache_dir: Path | None = None,
    class_agnostic: bool = False,
    providers: Sequence[str] | None = None,
) -> OnnxDetector:
    """A detector for `model_path` (default: the shipped NanoDet-m), configured by its sidecar JSON.

    `labels` restricts what is reported (e.g. {"person", "car"}); `threads` defaults to the cores
    available, capped at 4; `trt_cache_dir` is where TensorRT keeps built engines (only used where
    TensorRT is available; default ~/.cache/polewatch/tensorrt); `class_agnostic` runs NMS across
    classes; `providers` restricts the execution providers tried (`agent bench` compares them).
    Raises ModelError (a ValueError) naming the problem when the model or its sidecar is missing,
    malformed, or does not match.
    """
    path = Path(DEFAULT_MODEL if model_path is None else model_path)
    if not 0.0 < score_threshold <= 1.0:
        raise ValueError(f"score_threshold must be within (0, 1], got {score_threshold}")
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be within (0, 1], got {iou_threshold}")
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    metadata = load_metadata(sidecar_path(path))
    factory = FAMILIES.get(metadata.family)
    if factory is None:
        raise ModelError(
            f"model sidecar {sidecar_path(path)} names family {metadata.family!r}; known families: {sorted(FAMILIES)}"
        )
    class_ids = _class_ids(metadata, labels)
    threads = resolve_threads(threads)
    data = path.read_bytes()
    if metadata.sha256 is not None and sha256_of(data) != metadata.sha256:
        raise ModelError(
            f"model file {path} has sha256 {sha256_of(data)} but its sidecar says {metadata.sha256}: "
            "the file is corrupt or the sidecar belongs to another model"
        )
    try:
        session = create_session(data, threads, trt_cache_dir=trt_cache_dir, only=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        raise ModelError(f"onnxruntime cannot load model file {path}: {exc}") from exc
    _check_input(session, metadata, path)
    output_shapes: dict[str, Shape] = {out.name: tuple(out.shape) for out in session.get_outputs()}
    spec = metadata.input
    decoder = factory(metadata.head, spec.width, spec.height, len(metadata.labels), output_shapes, class_ids)
    return OnnxDetector(
        session,
        metadata,
        decoder,
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        model_path=path,
        class_agnostic=class_agnostic,
    )


def _class_ids(metadata: ModelMetadata, labels: Collection[str] | None) -> list[int] | None:
    if labels is None:
        return None
    if isinstance(labels, str):
        raise ValueError(f"labels must be a collection of names, not the string {labels!r}")
    index = {label: i for i, label in enumerate(metadata.labels)}
    unknown = sorted(set(labels) - index.keys())
    if unknown:
        raise ValueError(f"unknown labels {unknown}; model {metadata.name!r} knows: {', '.join(metadata.labels)}")
    if not labels:
        raise ValueError("labels is empty: pass None to report every class")
    return [index[label] for label in labels]


def _check_input(session: ort.InferenceSession, metadata: ModelMetadata, path: Path) -> None:
    spec = metadata.input
    inputs = {inp.name: inp for inp in session.get_inputs()}
    where = f"model {path.name} and its sidecar disagree"
    if spec.name not in inputs:
        raise ModelError(f"{where}: sidecar input name {spec.name!r}, model inputs {sorted(inputs)}")
    if len(inputs) != 1:
        raise ModelError(f"model {path.name} has {len(inputs)} inputs {sorted(inputs)}; only one is supported")
    model_input = inputs[spec.name]
    want_type = "tensor(float)" if spec.dtype == "float32" else "tensor(uint8)"
    if model_input.type != want_type:
        raise ModelError(
            f"{where}: sidecar input {spec.layout} {spec.dtype}, model input {spec.name!r} is {model_input.type}"
        )
    expected = (1, 3, spec.height, spec.width) if spec.layout == "NCHW" else (1, spec.height, spec.width, 3)
    dims = f"[1, 3, {spec.height}, {spec.width}]" if spec.layout == "NCHW" else f"[1, {spec.height}, {spec.width}, 3]"
    shape = tuple(model_input.shape)
    if len(shape) != 4 or any(
        isinstance(have, int) and have != want for have, want in zip(shape, expected, strict=True)
    ):
        raise ModelError(f"{where}: sidecar input {dims}, model input {list(shape)}")
