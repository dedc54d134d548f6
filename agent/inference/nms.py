"""Class-wise non-maximum suppression.

OpenCV's `cv2.dnn.NMSBoxesBatched` is used rather than a hand-written loop: it is C++, already a
dependency of the agent, and it was checked (tests/test_nms.py) to compute IoU on float boxes
(Rect2d, no integer truncation), to suppress only boxes whose IoU is strictly above the threshold,
never to suppress across classes, and to treat `top_k` as a cap on candidates *before* NMS. The last
point is why the cap on the number of results is applied here, after NMS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

# Candidates fed to NMS at most. NMS is quadratic; a scene that produces more candidates than this
# above the score threshold is noise, and the highest-scoring ones are the ones worth keeping.
MAX_CANDIDATES = 2000

# OpenCV's stubs declare Python sequences, but the binding takes numpy arrays directly (no per-box
# Python objects), which is what the hot path wants.
_nms_boxes_batched: Callable[..., Any] = cv2.dnn.NMSBoxesBatched


def batched_nms(
    boxes_xyxy: npt.NDArray[np.floating],
    scores: npt.NDArray[np.floating],
    class_ids: npt.NDArray[np.integer],
    iou_threshold: float,
    max_detections: int = 300,
) -> npt.NDArray[np.intp]:
    """Indices of the boxes kept, best score first; boxes of different classes never suppress each other."""
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be within [0, 1], got {iou_threshold}")
    n = len(boxes_xyxy)
    if n == 0:
        return np.empty(0, dtype=np.intp)
    xywh = np.array(boxes_xyxy, dtype=np.float64).reshape(n, 4)
    xywh[:, 2:] -= xywh[:, :2]
    # The score threshold is 0: decoders filter by score before NMS, where it is cheaper.
    kept = _nms_boxes_batched(
        xywh,
        np.ascontiguousarray(scores, dtype=np.float32),
        np.ascontiguousarray(class_ids, dtype=np.int32),
        0.0,
        float(iou_threshold),
        1.0,
        MAX_CANDIDATES,
    )
    return np.asarray(kept, dtype=np.intp).reshape(-1)[:max_detections]
