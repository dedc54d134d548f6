"""YOLOv8-style decoding (Ultralytics export without NMS): one output [1, 4 + C, N].

Each of the N anchors holds cx, cy, w, h in input pixels followed by C class scores (no objectness).
This is the layout most user-brought models have; the repo never ships a YOLOv8 model (AGPL-3.0),
and the packaging test guards that by refusing any wheel file named like one, hence this module's name.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, ValidationError

from .decoder import Candidates, Shape, best_class, class_columns, describe_outputs, dims_match
from .errors import ModelError


class YoloV8Head(BaseModel):
    """Nothing to configure: the head decodes itself inside the graph."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class YoloV8Decoder:
    def __init__(
        self,
        num_classes: int,
        output_shapes: Mapping[str, Shape],
        classes: Collection[int] | None = None,
    ) -> None:
        self.num_classes = num_classes
        names = [name for name, shape in output_shapes.items() if dims_match(shape, (None, 4 + num_classes, None))]
        if len(names) != 1:
            transposed = [
                name for name, shape in output_shapes.items() if dims_match(shape, (None, None, 4 + num_classes))
            ]
            hint = (
                f" Output {transposed[0]} looks transposed ([1, N, {4 + num_classes}]); export without transposing."
                if transposed
                else ""
            )
            raise ModelError(
                f"a yolov8 model with {num_classes} labels needs one output [1, {4 + num_classes}, N]; "
                f"model outputs: {describe_outputs(output_shapes)}.{hint} Check the labels in the sidecar."
            )
        self._output_names = names
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
    ) -> YoloV8Decoder:
        try:
            YoloV8Head.model_validate(head)
        except ValidationError as exc:
            raise ModelError(f"sidecar 'head' is invalid for family yolov8: {exc}") from exc
        return cls(num_classes, output_shapes, classes)

    @property
    def output_names(self) -> list[str]:
        return list(self._output_names)

    def decode(self, outputs: Sequence[npt.NDArray[np.float32]], score_threshold: float) -> Candidates:
        out = outputs[0][0]  # [4 + C, N]
        class_ids, scores = best_class(out[4:], self._columns, axis=0)
        keep = np.flatnonzero(scores >= score_threshold)
        if keep.size == 0:
            return Candidates.empty()
        cx, cy, w, h = out[:4, keep]
        half_w = w / 2
        half_h = h / 2
        boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1).astype(np.float32, copy=False)
        return Candidates(boxes, scores[keep], class_ids[keep])
