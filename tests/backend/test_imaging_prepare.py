"""Layer preparation in uint8 (backend/imaging.py): the same pixels the float32 formulas gave.

The references below are the float32 code these functions replaced, kept here as the definition
of the expected pixels; every (colour, alpha) pair of 8-bit values is checked, so rounding cannot
differ anywhere.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from backend.imaging import decode_control, decode_over_white, opaque, over_white
from backend.tasks.preprocess import over_white as over_white_of_the_task
from protocol import ImageFormat, ImagePayload


def float_over_white(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3:].astype(np.float32) / 255.0
    return np.clip(np.rint(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)), 0, 255).astype(np.uint8)


def float_control(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3:].astype(np.float32) / 255.0
    return np.clip(np.rint(rgba[..., :3] * alpha), 0, 255).astype(np.uint8)


def every_pair() -> np.ndarray:
    """256×256 RGBA: row = alpha, column = colour; the three channels shifted so they differ."""
    colour = np.arange(256, dtype=np.uint8)
    rgba = np.empty((256, 256, 4), np.uint8)
    rgba[..., 0] = colour[None, :]
    rgba[..., 1] = np.roll(colour, 85)[None, :]
    rgba[..., 2] = np.roll(colour, 170)[None, :]
    rgba[..., 3] = colour[:, None]
    return rgba


def payload(rgba: np.ndarray, fmt: ImageFormat = ImageFormat.RGBA8) -> ImagePayload:
    height, width = rgba.shape[:2]
    if fmt is ImageFormat.PNG:
        out = io.BytesIO()
        Image.fromarray(rgba, "RGBA").save(out, format="PNG")
        return ImagePayload(fmt, width, height, out.getvalue())
    return ImagePayload(fmt, width, height, rgba.tobytes())


def test_over_white_equals_the_float_formula_for_every_colour_and_alpha():
    rgba = every_pair()
    out = over_white(rgba)
    assert out.dtype == np.uint8 and out.shape == (256, 256, 3)
    np.testing.assert_array_equal(out, float_over_white(rgba))
    assert over_white_of_the_task is over_white  # the preprocess task and ControlNet units use this one


@pytest.mark.parametrize("fmt", [ImageFormat.RGBA8, ImageFormat.PNG])
def test_decode_over_white_reads_the_payload_and_leaves_its_bytes_alone(fmt):
    rgba = np.ascontiguousarray(np.concatenate([every_pair(), every_pair()[:, ::-1]], axis=0))  # 512×256
    image = payload(rgba, fmt)
    before = bytes(image.data)
    np.testing.assert_array_equal(decode_over_white(image), float_over_white(rgba))
    assert image.data == before


def test_an_opaque_layer_is_its_rgb_and_a_transparent_one_is_white():
    rgba = every_pair()
    rgba[..., 3] = 255
    np.testing.assert_array_equal(over_white(rgba), rgba[..., :3])
    rgba[..., 3] = 0
    assert (over_white(rgba) == 255).all()
    one = np.array([[[10, 20, 30, 128]]], np.uint8)  # a 1×1 layer
    np.testing.assert_array_equal(over_white(one), float_over_white(one))


def test_a_control_picture_counts_transparent_as_black_as_the_float_formula_did():
    rgba = every_pair()
    np.testing.assert_array_equal(decode_control(payload(rgba)), float_control(rgba))


def test_a_result_made_opaque_keeps_its_pixels_and_gets_alpha_255():
    """backend.imaging.opaque (OpenCV for uint8) against the NumPy concatenation it replaced, on a
    contiguous image, views with strides (a crop, every other pixel, flipped) and a 1×1 image."""
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (67, 45, 3), dtype=np.uint8)
    for image in (rgb, rgb[3:50, 5:40], rgb[::2, ::3], rgb[::-1, ::-1], rgb[:1, :1]):
        expected = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2)
        out = opaque(image)
        assert out.dtype == np.uint8 and out.flags.c_contiguous
        np.testing.assert_array_equal(out, expected)
    floats = rgb.astype(np.float32)  # other dtypes keep NumPy's promotion
    assert opaque(floats).dtype == np.float32 and (opaque(floats)[..., 3] == 255).all()
