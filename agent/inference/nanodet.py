"""NanoDet (GFL head) decoding: per-stride class scores plus distribution-focal box distances.

For each stride the export has one output [1, n, C] of class scores (already through a sigmoid) and
one [1, n, 4*(reg_max+1)] of box-distance logits, n = cells of that stride's grid. The outputs'
names carry no meaning in the tf2onnx export, so they are told apart by shape.

The cell centre is `(x + offset) * stride` with the offset read from the sidecar. For the shipped
nanodet-m-416 export it was measured, not guessed: see models/MODEL_CARD.md.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .decoder import Candidates, Shape, best_class, class_columns, describe_outputs, dims_match
from .errors import ModelError


class NanoDetHead(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    strides: tuple[int, ...] = Field(min_length=1)
    reg_max: int = Field(ge=1)
    cell_centre_offset: float = Field(ge=0.0, lt=1.0)

    @field_validator("strides")
    @classmethod
    def _positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if min(value) < 1 or len(set(value)) != len(value):
            raise ValueError(f"strides must be distinct positive integers, got {value}")
        return value


class NanoDetDecoder:
    def __init__(
        self,
        head: NanoDetHead,
        input_width: int,
        input_height: int,
        num_classes: int,
        output_shapes: Mapping[str, Shape],
        classes: Collection[int] | None = None,
    ) -> None:
        self.head = head
        self.num_classes = num_classes
        bins = head.reg_max + 1
        if num_classes == 4 * bins:
            raise ModelError(
                f"cannot tell class outputs from box outputs: both have {num_classes} columns "
                f"({num_classes} labels, reg_max {head.reg_max})"
            )
        score_names: list[str] = []
        box_names: list[str] = []
        centres_x: list[npt.NDArray[np.float32]] = []
        centres_y: list[npt.NDArray[np.float32]] = []
        strides: list[npt.NDArray[np.float32]] = []
        for stride in head.strides:
            grid_w = math.ceil(input_width / stride)
            grid_h = math.ceil(input_height / stride)
            cells = grid_w * grid_h
            score_names.append(self._find(output_shapes, cells, num_classes, f"class scores at stride {stride}"))
            box_names.append(self._find(output_shapes, cells, 4 * bins, f"box distances at stride {stride}"))
            ys, xs = np.divmod(np.arange(cells, dtype=np.float32), np.float32(grid_w))
            centres_x.append(((xs + head.cell_centre_offset) * stride).astype(np.float32))
            centres_y.append(((ys + head.cell_centre_offset) * stride).astype(np.float32))
            strides.append(np.full(cells, stride, dtype=np.float32))
        self._output_names = score_names + box_names
        self._levels = len(head.strides)
        self._centre_x = np.concatenate(centres_x)
        self._centre_y = np.concatenate(centres_y)
        self._stride = np.concatenate(strides)
        total = self._stride.size
        self._scores = np.empty((total, num_classes), dtype=np.float32)
        self._distances = np.empty((total, 4 * bins), dtype=np.float32)
        self._bins = np.arange(bins, dtype=np.float32)
        self._columns = class_columns(classes, num_classes)

    @classmethod
    def from_metadata(
        cls,
        head: Mapping[str, object],
        input_width: int,
        input_height: int,
        num_classes: int,
        output_shapes: Mapping[str, Shape],
        classes: Collection[int] | None = None,
    ) -> NanoDetDecoder:
        try:
            parsed = NanoDetHead.model_validate(head)
        except ValidationError as exc:
            raise ModelError(f"sidecar 'head' is invalid for family nanodet: {exc}") from exc
        return cls(parsed, input_width, input_height, num_classes, output_shapes, classes)

    @property
    def output_names(self) -> list[str]:
        return list(self._output_names)

    @staticmethod
    def _find(shapes: Mapping[str, Shape], cells: int, columns: int, what: str) -> str:
        names = [name for name, shape in shapes.items() if dims_match(shape, (None, cells, columns))]
        if len(names) != 1:
            found = "none" if not names else f"{len(names)} ({names})"
            raise ModelError(
                f"the sidecar expects one output [1, {cells}, {columns}] for the {what}; the model has "
                f"{found}. Model outputs: {describe_outputs(shapes)}. Check input size, strides, reg_max "
                "and the number of labels in the sidecar."
            )
        return names[0]

    def decode(self, outputs: Sequence[npt.NDArray[np.float32]], score_threshold: float) -> Candidates:
        levels = self._levels
        np.concatenate([out.reshape(-1, self.num_classes) for out in outputs[:levels]], out=self._scores)
        class_ids, scores = best_class(self._scores, self._columns, axis=1)
        keep = np.flatnonzero(scores >= score_threshold)
        if keep.size == 0:
            return Candidates.empty()
        np.concatenate([out.reshape(-1, self._distances.shape[1]) for out in outputs[levels:]], out=self._distances)
        logits = self._distances[keep].reshape(keep.size, 4, self._bins.size)
        # Softmax over the bins then the expected bin: the distance in units of the stride.
        weights = np.exp(logits - logits.max(axis=2, keepdims=True))
        distances = (weights @ self._bins) / weights.sum(axis=2)
        distances *= self._stride[keep, None]
        cx = self._centre_x[keep]
        cy = self._centre_y[keep]
        boxes = np.stack(
            [cx - distances[:, 0], cy - distances[:, 1], cx + distances[:, 2], cy + distances[:, 3]], axis=1
        ).astype(np.float32, copy=False)
        return Candidates(boxes, scores[keep], class_ids[keep])
