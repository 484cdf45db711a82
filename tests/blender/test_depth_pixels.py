"""Depth normalisation (plugin_blender.depth) and pixel-order conversions (plugin_blender.pixels)."""
from __future__ import annotations

import numpy as np
import pytest

from plugin_blender import pixels
from plugin_blender.depth import EmptyDepthError, depth_range, foreground, normalise_depth

BG = 1e10  # what Cycles writes where a ray hits nothing


def test_inverse_depth_is_bright_near_and_black_in_the_background():
    depth = np.array([[2.0, 4.0], [8.0, BG]])
    out = normalise_depth(depth)
    assert out.dtype == np.float32
    assert np.allclose(out, [[1.0, 0.5], [0.25, 0.0]])


def test_linear_depth_spans_one_to_the_floor():
    depth = np.array([[2.0, 4.0, 6.0, BG]])
    assert np.allclose(normalise_depth(depth, "linear"), [[1.0, 0.55, 0.1, 0.0]])


def test_flat_depth_is_all_bright_and_nonfinite_values_are_background():
    depth = np.array([[3.0, 3.0, np.inf, np.nan, -1.0, 0.0]])
    assert np.allclose(normalise_depth(depth, "linear"), [[1, 1, 0, 0, 0, 0]])
    assert foreground(depth).tolist() == [[True, True, False, False, False, False]]


def test_nearer_is_never_darker():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.1, 100, (16, 16))
    depth[rng.random((16, 16)) < 0.2] = BG
    for mode in ("inverse", "linear"):
        out = normalise_depth(depth, mode)
        fg = foreground(depth)
        order = np.argsort(depth[fg])
        assert np.all(np.diff(out[fg][order]) <= 1e-7)
        assert out[fg].min() > 0 and out[~fg].max() == 0 and out.max() == pytest.approx(1.0)


def test_an_empty_pass_says_what_to_do():
    with pytest.raises(EmptyDepthError, match="point the active camera"):
        normalise_depth(np.full((4, 4), BG))
    with pytest.raises(EmptyDepthError):
        depth_range(np.full((2, 2), np.nan))


def test_bad_modes_and_shapes():
    with pytest.raises(ValueError, match="'inverse' or 'linear'"):
        normalise_depth(np.ones((2, 2)), "log")
    with pytest.raises(ValueError, match="2-D"):
        normalise_depth(np.ones(4))


# -- pixels


def test_blender_pixels_become_top_down_rgba8():
    # A 2x2 Blender image: bottom row red, green; top row blue, white (half transparent).
    blender = np.array([[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 1], [1, 1, 1, 0.5]], np.float32).reshape(-1)
    data = pixels.blender_to_rgba8(blender, 2, 2)
    rows = np.frombuffer(data, np.uint8).reshape(2, 2, 4)
    assert rows[0, 0].tolist() == [0, 0, 255, 255]        # top-left is Blender's row 1, column 0
    assert rows[0, 1].tolist() == [255, 255, 255, 128]
    assert rows[1, 0].tolist() == [255, 0, 0, 255]
    assert np.allclose(pixels.rgba8_to_blender(data, 2, 2), np.round(blender * 255) / 255)


def test_rgba8_round_trips_exactly():
    data = np.random.default_rng(2).integers(0, 256, 5 * 3 * 4, dtype=np.uint8).tobytes()
    assert pixels.blender_to_rgba8(pixels.rgba8_to_blender(data, 5, 3), 5, 3) == data


def test_out_of_range_floats_are_clipped_and_rgb_gets_opaque_alpha():
    rgb = np.array([[1.5, -0.2, 0.5]], np.float32)
    assert list(pixels.blender_to_rgba8(rgb, 1, 1, channels=3)) == [255, 0, 128, 255]


def test_depth_goes_top_down_little_endian():
    depth = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)  # row 0 = bottom
    data = pixels.depth_to_depth32f(depth)
    assert np.frombuffer(data, "<f4").tolist() == [3.0, 4.0, 1.0, 2.0]
    assert np.array_equal(pixels.depth32f_to_depth(data, 2, 2), depth)


@pytest.mark.parametrize("call", [
    lambda: pixels.rgba8_to_blender(b"\0" * 7, 1, 2),
    lambda: pixels.blender_to_rgba8(np.zeros(12), 2, 2),
    lambda: pixels.depth32f_to_depth(b"\0" * 8, 3, 1),
    lambda: pixels.rgba8_to_blender(b"", 0, 0),
])
def test_wrong_sizes_are_refused(call):
    with pytest.raises(ValueError):
        call()
