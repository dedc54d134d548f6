"""Box arithmetic shared by the decoders, the tracker and the tests.

Boxes are float arrays of shape [N, 4] holding x1, y1, x2, y2 (corners, pixels).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating]


def iou_matrix(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """IoU of every box in `a` against every box in `b`, shape [len(a), len(b)].

    Degenerate (zero-area) pairs give 0 rather than NaN so that greedy matching never picks them.
    """
    aa = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    bb = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(aa[:, None, 0], bb[None, :, 0])
    y1 = np.maximum(aa[:, None, 1], bb[None, :, 1])
    x2 = np.minimum(aa[:, None, 2], bb[None, :, 2])
    y2 = np.minimum(aa[:, None, 3], bb[None, :, 3])
    inter = np.clip(x2 - x1, 0.0, None) * np.clip(y2 - y1, 0.0, None)
    area_a = np.clip(aa[:, 2] - aa[:, 0], 0.0, None) * np.clip(aa[:, 3] - aa[:, 1], 0.0, None)
    area_b = np.clip(bb[:, 2] - bb[:, 0], 0.0, None) * np.clip(bb[:, 3] - bb[:, 1], 0.0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    result: npt.NDArray[np.float64] = out
    return result


def iou(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """IoU of two single boxes."""
    return float(iou_matrix(a, b)[0, 0])
