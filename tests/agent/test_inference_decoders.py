"""NanoDet and YOLOv8 decoders on constructed output tensors, where the right answer is known exactly."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from polewatch.agent.inference.decoder import Candidates
from polewatch.agent.inference.errors import ModelError
from polewatch.agent.inference.nanodet import NanoDetDecoder, NanoDetHead
from polewatch.agent.inference.yolo import YoloV8Decoder

SIZE = 416
CLASSES = 80
REG_MAX = 10
STRIDES = (8, 16, 32)
# Named and ordered like the real export: names carry no meaning and the order is not by stride.
NANODET_SHAPES: dict[str, tuple[int, int, int]] = {
    "Identity_2:0": (1, 169, 80),
    "Identity_5:0": (1, 169, 44),
    "Identity_1:0": (1, 676, 80),
    "Identity:0": (1, 2704, 80),
    "Identity_4:0": (1, 676, 44),
    "Identity_3:0": (1, 2704, 44),
}


def _nanodet(offset: float = 0.5, classes: set[int] | None = None) -> NanoDetDecoder:
    head = NanoDetHead(strides=STRIDES, reg_max=REG_MAX, cell_centre_offset=offset)
    return NanoDetDecoder(head, SIZE, SIZE, CLASSES, NANODET_SHAPES, classes)


def _nanodet_outputs(decoder: NanoDetDecoder) -> dict[str, npt.NDArray[np.float32]]:
    outputs = {name: np.zeros(shape, dtype=np.float32) for name, shape in NANODET_SHAPES.items()}
    for tensor in outputs.values():
        if tensor.shape[2] == 4 * (REG_MAX + 1):
            tensor[...] = -50.0  # every bin unlikely unless a test says otherwise
    return outputs


def _set_cell(
    outputs: dict[str, npt.NDArray[np.float32]],
    stride: int,
    x: int,
    y: int,
    class_scores: dict[int, float],
    bins: tuple[int, int, int, int],
) -> None:
    grid = SIZE // stride
    cell = y * grid + x
    scores = next(t for t in outputs.values() if t.shape == (1, grid * grid, CLASSES))
    boxes = next(t for t in outputs.values() if t.shape == (1, grid * grid, 4 * (REG_MAX + 1)))
    for class_id, score in class_scores.items():
        scores[0, cell, class_id] = score
    for side, bin_index in enumerate(bins):
        boxes[0, cell, side * (REG_MAX + 1) + bin_index] = 50.0  # softmax ≈ one-hot on this bin


def _run(decoder: NanoDetDecoder, outputs: dict[str, npt.NDArray[np.float32]], threshold: float = 0.35) -> Candidates:
    return decoder.decode([outputs[name] for name in decoder.output_names], threshold)


def test_nanodet_finds_outputs_by_shape_in_stride_order() -> None:
    decoder = _nanodet()
    assert decoder.output_names == [
        "Identity:0",
        "Identity_1:0",
        "Identity_2:0",
        "Identity_3:0",
        "Identity_4:0",
        "Identity_5:0",
    ]


@pytest.mark.parametrize(("offset", "centre"), [(0.5, (56.0, 88.0)), (0.0, (48.0, 80.0))])
def test_nanodet_box_is_cell_centre_plus_expected_distances(offset: float, centre: tuple[float, float]) -> None:
    decoder = _nanodet(offset)
    outputs = _nanodet_outputs(decoder)
    # Stride 16, cell (3, 5); distances left 2, top 3, right 4, bottom 1 bins of 16 px.
    _set_cell(outputs, 16, 3, 5, {5: 0.9}, (2, 3, 4, 1))
    boxes, scores, class_ids = _run(decoder, outputs)
    cx, cy = centre
    np.testing.assert_allclose(boxes, [[cx - 32, cy - 48, cx + 64, cy + 16]], atol=1e-3)
    assert scores.tolist() == pytest.approx([0.9])
    assert class_ids.tolist() == [5]


def test_nanodet_distance_is_the_expected_value_over_bins() -> None:
    decoder = _nanodet()
    outputs = _nanodet_outputs(decoder)
    _set_cell(outputs, 32, 0, 0, {0: 0.8}, (0, 0, 0, 0))
    reg = next(t for t in outputs.values() if t.shape == (1, 169, 44))
    bins = REG_MAX + 1
    reg[0, 0, :bins] = -50.0
    reg[0, 0, 2] = reg[0, 0, 3] = 0.0  # left: half on bin 2, half on bin 3 → 2.5 bins
    reg[0, 0, bins : 2 * bins] = 0.0  # top: uniform over 0..10 → 5 bins
    boxes, _, _ = _run(decoder, outputs)
    assert boxes[0].tolist() == pytest.approx([16 - 2.5 * 32, 16 - 5 * 32, 16.0, 16.0], abs=1e-3)


def test_nanodet_threshold_and_class_selection() -> None:
    outputs = _nanodet_outputs(_nanodet())
    _set_cell(outputs, 8, 10, 20, {2: 0.9, 0: 0.4}, (1, 1, 1, 1))
    _set_cell(outputs, 8, 40, 40, {0: 0.3}, (1, 1, 1, 1))
    everything = _run(_nanodet(), outputs)
    assert everything.class_ids.tolist() == [2]
    people = _run(_nanodet(classes={0}), outputs)
    assert people.class_ids.tolist() == [0]
    assert people.scores.tolist() == pytest.approx([0.4])
    assert _run(_nanodet(), outputs, threshold=0.95).scores.size == 0


def test_nanodet_labels_that_do_not_match_outputs_are_refused() -> None:
    head = NanoDetHead(strides=STRIDES, reg_max=REG_MAX, cell_centre_offset=0.5)
    with pytest.raises(ModelError, match=r"\[1, 2704, 79\].*class scores at stride 8"):
        NanoDetDecoder(head, SIZE, SIZE, 79, NANODET_SHAPES)


def test_nanodet_wrong_reg_max_or_size_is_refused() -> None:
    with pytest.raises(ModelError, match=r"box distances at stride 8"):
        NanoDetDecoder(NanoDetHead(strides=STRIDES, reg_max=7, cell_centre_offset=0.5), SIZE, SIZE, 80, NANODET_SHAPES)
    with pytest.raises(ModelError, match=r"\[1, 1600, 80\]"):
        NanoDetDecoder(NanoDetHead(strides=STRIDES, reg_max=10, cell_centre_offset=0.5), 320, 320, 80, NANODET_SHAPES)


def test_nanodet_head_settings_are_validated() -> None:
    with pytest.raises(ModelError, match="head"):
        NanoDetDecoder.from_metadata({"strides": [8, 16, 32], "reg_max": 10}, SIZE, SIZE, 80, NANODET_SHAPES)
    with pytest.raises(ModelError, match="head"):
        NanoDetDecoder.from_metadata(
            {"strides": [8, 16, 32], "reg_max": 10, "cell_centre_offset": 1.5}, SIZE, SIZE, 80, NANODET_SHAPES
        )


def _yolo_output(anchors: int = 8400) -> npt.NDArray[np.float32]:
    return np.zeros((1, 4 + CLASSES, anchors), dtype=np.float32)


def test_yolov8_box_is_centre_and_size() -> None:
    decoder = YoloV8Decoder(CLASSES, {"output0": (1, 84, 8400)})
    out = _yolo_output()
    out[0, :4, 1234] = [100.0, 50.0, 20.0, 40.0]
    out[0, 4 + 3, 1234] = 0.7
    out[0, 4 + 0, 1234] = 0.5
    out[0, :4, 99] = [300.0, 300.0, 10.0, 10.0]
    out[0, 4 + 1, 99] = 0.2  # below threshold
    boxes, scores, class_ids = decoder.decode([out], 0.35)
    np.testing.assert_allclose(boxes, [[90.0, 30.0, 110.0, 70.0]])
    assert scores.tolist() == pytest.approx([0.7])
    assert class_ids.tolist() == [3]
    people = YoloV8Decoder(CLASSES, {"output0": (1, 84, 8400)}, classes=[0]).decode([out], 0.35)
    assert people.class_ids.tolist() == [0]
    assert people.scores.tolist() == pytest.approx([0.5])


def test_yolov8_accepts_symbolic_batch_and_anchor_dims() -> None:
    decoder = YoloV8Decoder(CLASSES, {"output0": ("batch", 84, "anchors")})
    assert decoder.output_names == ["output0"]
    assert decoder.decode([_yolo_output(100)], 0.35).scores.size == 0


def test_yolov8_wrong_or_transposed_output_is_refused() -> None:
    with pytest.raises(ModelError, match=r"looks transposed"):
        YoloV8Decoder(CLASSES, {"output0": (1, 8400, 84)})
    with pytest.raises(ModelError, match=r"needs one output \[1, 84, N\].*Identity"):
        YoloV8Decoder(CLASSES, NANODET_SHAPES)
