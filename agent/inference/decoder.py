"""What a model family's decoder must provide, and helpers they share.

A decoder turns raw model outputs into scored candidate boxes in model-input pixels. Letterbox
undoing, NMS and the Detection objects are common to every family and live in detector.py.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

# Shape of one model output as onnxruntime reports it: ints for fixed dims, str/None for symbolic.
Shape = Sequence[int | str | None]


class Candidates(NamedTuple):
    boxes: npt.NDArray[np.float32]  # [N, 4] x1, y1, x2, y2 in model-input pixels
    scores: npt.NDArray[np.float32]  # [N]
    class_ids: npt.NDArray[np.intp]  # [N], indices into the model's labels

    @classmethod
    def empty(cls) -> Candidates:
        return cls(np.empty((0, 4), dtype=np.float32), np.empty(0, dtype=np.float32), np.empty(0, dtype=np.intp))


class Decoder(Protocol):
    @property
    def output_names(self) -> list[str]:
        """The session outputs to request, in the order decode() expects them."""
        ...

    def decode(self, outputs: Sequence[npt.NDArray[np.float32]], score_threshold: float) -> Candidates: ...


def class_columns(wanted: Collection[int] | None, num_classes: int) -> npt.NDArray[np.intp] | None:
    """Sorted score columns to look at, or None for all of them (then no per-frame copy is made)."""
    if wanted is None:
        return None
    columns = np.array(sorted(set(wanted)), dtype=np.intp)
    if columns.size == 0:
        raise ValueError("at least one class must be selected")
    if columns[0] < 0 or columns[-1] >= num_classes:
        raise ValueError(f"class ids must be within [0, {num_classes}), got {columns.tolist()}")
    return None if columns.size == num_classes else columns


def best_class(
    scores: npt.NDArray[np.float32], columns: npt.NDArray[np.intp] | None, axis: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
    """Per candidate: the best class (as a model class id) and its score, over the selected columns.

    One class per box (the best), as Ultralytics and NanoDet's demo do: a pole reports what it sees,
    not every plausible reading of the same box.
    """
    if columns is not None:
        scores = np.take(scores, columns, axis=axis)
    best = np.argmax(scores, axis=axis)
    conf = np.take_along_axis(scores, np.expand_dims(best, axis), axis=axis).squeeze(axis)
    if columns is not None:
        best = columns[best]
    return best.astype(np.intp, copy=False), conf


def describe_outputs(shapes: Mapping[str, Shape]) -> str:
    return ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())


def dims_match(shape: Shape, expected: Sequence[int | None]) -> bool:
    """Whether `shape` is `expected`; None in `expected` accepts any dim, a symbolic dim matches only None."""
    if len(shape) != len(expected):
        return False
    return all(want is None or have == want for have, want in zip(shape, expected, strict=True))
