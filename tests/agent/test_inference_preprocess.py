"""Frame → tensor preprocessing and the way back for boxes, on constructed frames."""

from __future__ import annotations

import numpy as np
import pytest

from polewatch.agent.inference.metadata import InputSpec
from polewatch.agent.inference.preprocess import Preprocessor, geometry_for

MEAN = (103.53, 116.28, 123.675)
STD = (57.375, 57.12, 58.395)


def _spec(**changes: object) -> InputSpec:
    fields: dict[str, object] = {
        "name": "input",
        "width": 416,
        "height": 416,
        "channel_order": "BGR",
        "mean": MEAN,
        "std": STD,
        "resize": "letterbox",
        "pad_value": 114,
    }
    fields.update(changes)
    return InputSpec.model_validate(fields)


def test_letterbox_geometry_keeps_aspect_and_centres() -> None:
    landscape = geometry_for(_spec(), 768, 576)
    assert (landscape.left, landscape.top, landscape.width, landscape.height) == (0, 52, 416, 312)
    portrait = geometry_for(_spec(), 300, 600)
    assert (portrait.left, portrait.top, portrait.width, portrait.height) == (104, 0, 208, 416)
    stretched = geometry_for(_spec(resize="stretch"), 768, 576)
    assert (stretched.left, stretched.top, stretched.width, stretched.height) == (0, 0, 416, 416)


def test_tensor_is_normalised_in_model_channel_order_with_padding() -> None:
    frame = np.zeros((576, 768, 3), dtype=np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 10, 20, 30  # B, G, R
    bgr = Preprocessor(_spec())(frame)
    assert bgr.shape == (1, 3, 416, 416)
    assert bgr.dtype == np.float32
    for channel, value in enumerate((10, 20, 30)):
        assert bgr[0, channel, 200, 200] == pytest.approx((value - MEAN[channel]) / STD[channel], rel=1e-5)
        assert bgr[0, channel, 10, 200] == pytest.approx((114 - MEAN[channel]) / STD[channel], rel=1e-5)  # pad
    rgb = Preprocessor(_spec(channel_order="RGB", mean=(0, 0, 0), std=(255, 255, 255)))(frame)
    assert rgb[0, :, 200, 200].tolist() == pytest.approx([30 / 255, 20 / 255, 10 / 255])


def test_a_new_frame_size_repads_the_reused_tensor() -> None:
    preprocess = Preprocessor(_spec())
    white = np.full((576, 768, 3), 255, dtype=np.uint8)
    first = preprocess(white).copy()
    preprocess(np.full((600, 300, 3), 255, dtype=np.uint8))  # portrait: pads left and right instead
    again = preprocess(white)
    np.testing.assert_array_equal(first, again)
    assert again[0, 0, 10, 200] == pytest.approx((114 - MEAN[0]) / STD[0], rel=1e-5)


@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
@pytest.mark.parametrize("size", [(576, 768), (600, 300), (1080, 1920)])
def test_boxes_map_back_to_the_frame(resize: str, size: tuple[int, int]) -> None:
    height, width = size
    preprocess = Preprocessor(_spec(resize=resize))
    preprocess(np.zeros((height, width, 3), dtype=np.uint8))
    geometry = preprocess.geometry
    assert geometry is not None
    # A box drawn in frame pixels, moved into input pixels by hand, must come back unchanged.
    frame_box = np.array([[0.1 * width, 0.2 * height, 0.6 * width, 0.9 * height]], dtype=np.float32)
    input_box = frame_box.copy()
    input_box[:, 0::2] = input_box[:, 0::2] * geometry.scale_x + geometry.left
    input_box[:, 1::2] = input_box[:, 1::2] * geometry.scale_y + geometry.top
    np.testing.assert_allclose(preprocess.boxes_to_frame(input_box), frame_box, rtol=1e-5)


def test_boxes_are_clipped_to_the_frame() -> None:
    preprocess = Preprocessor(_spec())
    preprocess(np.zeros((576, 768, 3), dtype=np.uint8))
    boxes = np.array([[-20.0, 0.0, 430.0, 40.0]], dtype=np.float32)  # reaches into the top padding
    np.testing.assert_allclose(preprocess.boxes_to_frame(boxes), [[0.0, 0.0, 768.0, 0.0]], atol=1e-4)


def test_uint8_nhwc_input_is_the_resized_picture_in_model_channel_order() -> None:
    """TF Object Detection API graphs normalise inside: they get the pixels, RGB, stretched."""
    frame = np.zeros((60, 80, 3), dtype=np.uint8)
    frame[:, :40] = (255, 0, 0)  # blue on the left half (BGR)
    spec = _spec(width=40, height=30, layout="NHWC", dtype="uint8", channel_order="RGB", resize="stretch")
    tensor = Preprocessor(spec)(frame)
    assert tensor.shape == (1, 30, 40, 3) and tensor.dtype == np.uint8
    assert tuple(tensor[0, 10, 5]) == (0, 0, 255)  # blue is the last channel in RGB
    assert tuple(tensor[0, 10, 35]) == (0, 0, 0)


def test_unsupported_layout_and_dtype_pairs_are_refused() -> None:
    with pytest.raises(ValueError, match="input layout NCHW with dtype uint8 is not supported"):
        _spec(dtype="uint8")
