"""Class-wise NMS (OpenCV's NMSBoxesBatched behind batched_nms) on constructed boxes.

These pin down the OpenCV behaviours the detector relies on: float IoU, strict threshold,
no cross-class suppression, best-first order, and the cap on results applied after NMS.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from polewatch.agent.inference.boxes import iou, iou_matrix
from polewatch.agent.inference.nms import MAX_CANDIDATES, batched_nms


def _arrays(
    boxes: list[list[float]], scores: list[float], classes: list[int]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.intp]]:
    return (
        np.array(boxes, dtype=np.float32).reshape(-1, 4),
        np.array(scores, dtype=np.float32),
        np.array(classes, dtype=np.intp),
    )


def _reference_nms(
    boxes: npt.NDArray[np.float32],
    scores: npt.NDArray[np.float32],
    classes: npt.NDArray[np.intp],
    threshold: float,
) -> list[int]:
    """Textbook greedy NMS, per class, for comparison only."""
    kept: list[int] = []
    for index in np.argsort(-scores, kind="stable").tolist():
        if all(classes[k] != classes[index] or iou(boxes[k], boxes[index]) <= threshold for k in kept):
            kept.append(index)
    return kept


def test_overlapping_boxes_of_one_class_keep_the_best() -> None:
    boxes, scores, classes = _arrays([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], [0.8, 0.9, 0.7], [0, 0, 0])
    assert batched_nms(boxes, scores, classes, 0.5).tolist() == [1, 2]


def test_overlapping_boxes_of_different_classes_are_both_kept() -> None:
    boxes, scores, classes = _arrays([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], [0, 7])
    assert batched_nms(boxes, scores, classes, 0.5).tolist() == [0, 1]


def test_iou_is_computed_on_float_boxes_and_the_threshold_is_strict() -> None:
    # 20x20 boxes 2.5 px apart: IoU 17.5² / (800 - 17.5²) = 0.6203; truncated to integers it would be 0.68.
    boxes, scores, classes = _arrays([[10.2, 10.2, 30.2, 30.2], [12.7, 12.7, 32.7, 32.7]], [0.9, 0.8], [0, 0])
    overlap = iou(boxes[0], boxes[1])
    assert overlap == pytest.approx(0.62025, abs=1e-4)
    assert batched_nms(boxes, scores, classes, overlap - 1e-3).tolist() == [0]
    assert batched_nms(boxes, scores, classes, overlap + 1e-3).tolist() == [0, 1]


def test_results_are_best_first_and_capped_after_nms() -> None:
    # Box 1 is a duplicate of box 0; a cap applied before NMS would lose box 2.
    boxes, scores, classes = _arrays(
        [[0, 0, 10, 10], [0, 0, 10, 10.5], [100, 100, 110, 110], [200, 200, 210, 210]],
        [0.9, 0.85, 0.7, 0.6],
        [0] * 4,
    )
    assert batched_nms(boxes, scores, classes, 0.5, max_detections=2).tolist() == [0, 2]


def test_empty_input_gives_empty_output() -> None:
    boxes, scores, classes = _arrays([], [], [])
    result = batched_nms(boxes, scores, classes, 0.5)
    assert result.dtype == np.intp
    assert result.shape == (0,)


def test_invalid_threshold_is_refused() -> None:
    boxes, scores, classes = _arrays([[0, 0, 1, 1]], [0.5], [0])
    with pytest.raises(ValueError, match="iou_threshold"):
        batched_nms(boxes, scores, classes, 1.5)


def test_agrees_with_textbook_nms_on_random_boxes() -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        n = 60
        corners = rng.uniform(0, 200, size=(n, 2))
        sizes = rng.uniform(5, 60, size=(n, 2))
        boxes = np.concatenate([corners, corners + sizes], axis=1).astype(np.float32)
        scores = rng.permutation(np.linspace(0.05, 0.99, n)).astype(np.float32)  # distinct scores
        classes = rng.integers(0, 3, size=n).astype(np.intp)
        for threshold in (0.3, 0.5, 0.7):
            assert batched_nms(boxes, scores, classes, threshold).tolist() == _reference_nms(
                boxes, scores, classes, threshold
            )


def test_iou_matrix_handles_disjoint_nested_and_degenerate_boxes() -> None:
    a = [[0, 0, 10, 10], [0, 0, 0, 0]]
    b = [[0, 0, 10, 10], [20, 20, 30, 30], [2, 2, 8, 8], [0, 0, 0, 0]]
    expected = [[1.0, 0.0, 0.36, 0.0], [0.0, 0.0, 0.0, 0.0]]
    assert iou_matrix(a, b) == pytest.approx(np.array(expected))


def test_candidates_beyond_the_cap_are_the_lowest_scoring_ones() -> None:
    # OpenCV's top_k caps the candidates before NMS: a flood of boxes costs at most MAX_CANDIDATES².
    n = MAX_CANDIDATES + 500
    corners = np.stack([np.arange(n) * 10.0, np.zeros(n)], axis=1)
    boxes = np.concatenate([corners, corners + 5.0], axis=1).astype(np.float32)  # disjoint
    scores = np.linspace(0.01, 0.99, n).astype(np.float32)
    kept = batched_nms(boxes, scores, np.zeros(n, dtype=np.intp), 0.5, max_detections=n)
    assert kept.tolist() == list(range(n - 1, n - 1 - MAX_CANDIDATES, -1))
