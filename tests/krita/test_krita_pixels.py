"""Pixel buffers (host-free): channel swap, crop, masks — checked against per-pixel references."""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings, strategies as st

from easel_krita import pixels


def _reference_scale(alpha: bytes, mask: bytes) -> bytes:
    return bytes((a * m + 127) // 255 for a, m in zip(alpha, mask))


def test_swap_red_blue_moves_channels_and_round_trips():
    bgra = bytes([1, 2, 3, 4, 10, 20, 30, 40])
    assert pixels.swap_red_blue(bgra) == bytes([3, 2, 1, 4, 30, 20, 10, 40])
    data = os.urandom(4 * 999)
    assert pixels.swap_red_blue(pixels.swap_red_blue(data)) == data


def test_swap_rejects_partial_pixels():
    with pytest.raises(ValueError, match="4-byte"):
        pixels.swap_red_blue(b"\x00" * 6)


@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 600))
@settings(max_examples=40, deadline=None)
def test_chunked_swap_equals_whole_swap(width, height, max_bytes):
    data = os.urandom(width * height * 4)
    assert pixels.swap_red_blue_chunked(data, width, height, max_bytes) == pixels.swap_red_blue(data)


def test_row_chunks_cover_every_row_once_within_the_limit():
    chunks = list(pixels.row_chunks(100, 37, max_bytes=100 * 4 * 5))
    assert chunks[0] == (0, 5) and sum(rows for _, rows in chunks) == 37
    assert [first for first, _ in chunks] == list(range(0, 37, 5))
    # a row wider than the limit still makes progress, one row at a time
    assert list(pixels.row_chunks(1000, 3, max_bytes=10)) == [(0, 1), (1, 1), (2, 1)]


def test_crop_takes_the_block():
    width, height = 5, 4
    data = bytes(range(width * height))  # one byte per pixel, value = index
    assert pixels.crop(data, width, height, 1, 2, 3, 2, bpp=1) == bytes([11, 12, 13, 16, 17, 18])
    assert pixels.crop(data, width, height, 0, 0, 5, 4, bpp=1) == data
    with pytest.raises(ValueError, match="does not fit"):
        pixels.crop(data, width, height, 3, 0, 3, 1, bpp=1)


@given(st.binary(min_size=1, max_size=300), st.data())
@settings(max_examples=60, deadline=None)
def test_scale_alpha_matches_the_per_pixel_product(alpha, data):
    values = st.sampled_from([0, 255]) | st.integers(0, 255)
    mask = bytes(data.draw(st.lists(values, min_size=len(alpha), max_size=len(alpha))))
    assert pixels.scale_alpha(alpha, mask) == _reference_scale(alpha, mask)


def test_scale_alpha_fast_paths():
    alpha = os.urandom(1000)
    assert pixels.scale_alpha(alpha, b"\xff" * 1000) == alpha
    assert pixels.scale_alpha(alpha, b"\x00" * 1000) == bytes(1000)
    binary = bytes(255 if i % 3 else 0 for i in range(1000))
    assert pixels.scale_alpha(alpha, binary) == _reference_scale(alpha, binary)


def test_apply_mask_makes_unselected_pixels_transparent_and_keeps_colour():
    width, height = 3, 1
    bgra = bytes([10, 20, 30, 255]) * 3
    mask = bytes([0, 128, 255])
    out = pixels.apply_mask(bgra, mask, width, height)
    assert out[3::4] == bytes([0, 128, 255])
    assert out[0::4] == bgra[0::4] and out[1::4] == bgra[1::4] and out[2::4] == bgra[2::4]


def test_apply_mask_checks_sizes():
    with pytest.raises(ValueError, match="must hold"):
        pixels.apply_mask(b"\x00" * 8, b"\xff", 2, 1)


def test_mask_bounds_and_emptiness():
    width, height = 6, 5
    mask = bytearray(width * height)
    assert pixels.mask_is_empty(bytes(mask)) and pixels.mask_bounds(bytes(mask), width, height) is None
    mask[1 * width + 2] = 255
    mask[3 * width + 4] = 7
    assert pixels.mask_bounds(bytes(mask), width, height) == (2, 1, 3, 3)


def test_large_buffer_converts_without_a_python_loop_per_pixel():
    """A 2048² selection with a feathered edge band: only the band takes the per-pixel path.
    (No timing assertion; this guards correctness at a realistic size.)"""
    width = height = 2048
    alpha = b"\xff" * (width * height)
    row_full, row_edge = b"\xff" * width, bytes(range(256)) * (width // 256)
    mask = row_edge * 4 + row_full * (height - 8) + row_edge * 4
    out = pixels.scale_alpha(alpha, mask)
    assert out[:width] == bytes(range(256)) * (width // 256)
    assert out[8 * width:9 * width] == row_full
