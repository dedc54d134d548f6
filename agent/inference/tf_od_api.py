"""TF Object Detection API graphs: boxes, scores and classes come out already decoded (and NMS'd).

Outputs `detection_boxes` [1, N, 4] (normalised y1, x1, y2, x2 of the model input), `detection_scores`
[1, N], `detection_classes` [1, N] (label-map ids as floats, 1-based for COCO-style label maps) and
`num_detections` [1]. tf2onnx keeps the graph's names (with ":0"), so outputs are found by name,
which the sidecar may override. Nothing to decode but units: normalised → input pixels, label-map
id → index into the sidecar's labels.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .decoder import Candidates, Shape, class_columns, describe_outputs
from .errors import ModelError


class TfOdApiHead(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    boxes: str = "detection_boxes:0"
    scores: str = "detection_scores:0"
    classes: str = "detection_classes:0"
    count: str = "num_detections:0"
    # The label map's first id: 1 for every TF OD API COCO/person model (0 is "background").
    class_id_offset: int = Field(default=1, ge=0)


class TfOdApiDecoder:
    def __init__(
        self,
        head: TfOdApiHead,
        input_width: int,
        input_height: int,
        num_classes: int,
        output_shapes: Mapping[str, Shape],
        classes: Collection[int] | None = None,
    ) -> None:
        names = [head.boxes, head.scores, head.classes, head.count]
        missing = [name for name in names if name not in output_shapes]
        if missing:
            raise ModelError(
                f"a tf_od_api model needs outputs {names}; missing {missing}; model outputs: "
                f"{describe_outputs(output_shapes)}. Name them in the sidecar's 'head'."
            )
        self.head = head
        self.num_classes = num_classes
        self._scale = np.array([input_height, input_width, input_height, input_width], dtype=np.float32)
        self._output_names = names
        columns = class_columns(classes, num_classes)
        self._wanted = None if columns is None else set(columns.tolist())

    @classmethod
    def from_metadata(
        cls,
        head: Mapping[str, object],
        input_width: int,
        input_height: int,
        num_classes: int,
        output_shapes: Mapping[str, Shape],
        classes: Collection[int] | None = None,
    ) -> TfOdApiDecoder:
        try:
            parsed = TfOdApiHead.model_validate(head)
        except ValidationError as exc:
            raise ModelError(f"sidecar 'head' is invalid for family tf_od_api: {exc}") from exc
        return cls(parsed, input_width, input_height, num_classes, output_shapes, classes)

    @property
    def output_names(self) -> list[str]:
        return list(self._output_names)

    def decode(self, outputs: Sequence[npt.NDArray[np.float32]], score_threshold: float) -> Candidates:
        boxes, scores, classes, count = outputs
        n = int(np.asarray(count).reshape(-1)[0]) if np.asarray(count).size else 0
        scores = np.asarray(scores[0][:n], dtype=np.float32)
        class_ids = np.rint(np.asarray(classes[0][:n])).astype(np.intp) - self.head.class_id_offset
        keep = (scores >= score_threshold) & (class_ids >= 0) & (class_ids < self.num_classes)
        if self._wanted is not None:
            keep &= np.isin(class_ids, list(self._wanted))
        index = np.flatnonzero(keep)
        if index.size == 0:
            return Candidates.empty()
        yx = np.asarray(boxes[0][:n][index], dtype=np.float32) * self._scale  # y1, x1, y2, x2 in input pixels
        xyxy = yx[:, [1, 0, 3, 2]].astype(np.float32, copy=False)
        return Candidates(np.ascontiguousarray(xyxy), scores[index], class_ids[index])
