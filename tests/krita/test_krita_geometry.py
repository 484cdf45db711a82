"""Canvas geometry (host-free): regions, generation sizes, placement, Expand, preview pacing."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from easel_krita.geometry import (
    Margins, Placement, PreviewThrottle, Rect, RegionError, expand_offset, expanded_canvas, fit_inside,
    generation_size, job_region, resize_arguments,
)

CANVAS = Rect(0, 0, 800, 600)


def test_rect_basics():
    r = Rect(10, 20, 30, 40)
    assert (r.right, r.bottom, r.area) == (40, 60, 1200)
    assert r.intersect(Rect(30, 50, 100, 100)) == Rect(30, 50, 10, 10)
    assert r.intersect(Rect(100, 100, 5, 5)).empty
    assert r.pad(5) == Rect(5, 15, 40, 50) and r.pad(-20).empty
    assert Rect(12, 25, 3, 3).relative_to(r) == Rect(2, 5, 3, 3)
    with pytest.raises(ValueError):
        Rect(0, 0, -1, 2)


def test_job_region_without_selection_is_the_canvas():
    assert job_region(CANVAS, None) == CANVAS


def test_job_region_pads_the_selection_and_clips_to_the_canvas():
    assert job_region(CANVAS, Rect(100, 100, 50, 60), context=20) == Rect(80, 80, 90, 100)
    assert job_region(CANVAS, Rect(-30, 580, 100, 100), context=10) == Rect(0, 570, 80, 30)


def test_job_region_refuses_a_selection_off_the_canvas():
    with pytest.raises(RegionError, match="outside the canvas"):
        job_region(CANVAS, Rect(900, 0, 10, 10))
    with pytest.raises(RegionError, match="empty"):
        job_region(Rect(0, 0, 0, 0), None)


@given(st.integers(1, 5000), st.integers(1, 5000), st.sampled_from([64, 512, 768, 1024]))
def test_generation_size_is_a_multiple_of_8_near_the_native_area_and_keeps_aspect(width, height, native):
    w, h = generation_size(width, height, native)
    assert w % 8 == 0 and h % 8 == 0 and 64 <= w <= 2048 and 64 <= h <= 2048
    if max(width, height) / min(width, height) < 4 and min(w, h) > 64:
        assert abs((w / h) - (width / height)) / (width / height) < 0.2
    if 64 <= width <= 2048 and 64 <= height <= 2048 and max(width, height) / min(width, height) < 4:
        assert 0.4 * native * native <= w * h <= 2.2 * native * native


def test_generation_size_keeps_a_region_near_the_native_size():
    assert generation_size(512, 512, 512) == (512, 512)
    assert generation_size(500, 520, 512) == (504, 520)
    assert generation_size(4096, 4096, 512) == (512, 512)
    assert generation_size(100, 50, 64) == (104, 64)  # within 1.5x of 64²: own size, rounded up, min 64
    assert generation_size(1000, 500, 64) == (96, 64)  # never below the server's 64 px minimum
    assert generation_size(20, 20, 64) == (64, 64)
    assert generation_size(20, 20, 512) == (512, 512)  # small selections are drawn at native size, then scaled


def test_placement_crop_and_scaling():
    p = Placement.for_job(Rect(80, 80, 90, 100), Rect(100, 100, 50, 60))
    assert p.crop == Rect(100, 100, 50, 60) and p.crop_in_region == Rect(20, 20, 50, 60)
    assert p.needs_scaling(64, 64) and not p.needs_scaling(90, 100)
    with pytest.raises(RegionError):
        Placement.for_job(Rect(0, 0, 10, 10), Rect(20, 20, 5, 5))
    with pytest.raises(ValueError):
        Placement(Rect(0, 0, 10, 10), Rect(5, 5, 10, 10))


def test_expand_grows_the_canvas_and_moves_content_by_left_top():
    margins = Margins(left=64, top=32, right=16, bottom=0)
    assert expanded_canvas(CANVAS, margins) == Rect(0, 0, 880, 632)
    assert expand_offset(margins) == (64, 32)
    assert resize_arguments(CANVAS, margins) == (-64, -32, 880, 632)
    with pytest.raises(RegionError, match="all four margins are 0"):
        expanded_canvas(CANVAS, Margins())
    with pytest.raises(ValueError):
        Margins(-1, 0, 0, 0)


def test_fit_inside():
    assert fit_inside(200, 100, 50, 50) == (50, 25)
    assert fit_inside(1, 1000, 10, 10) == (1, 10)


def test_preview_throttle_limits_the_share_of_the_main_thread():
    throttle = PreviewThrottle(budget=0.25)
    assert throttle.ready(0.0)
    throttle.drawn(1.0, 1.1)  # a 100 ms draw: the next may come 300 ms after it ended
    assert not throttle.ready(1.2) and throttle.ready(1.4 + 1e-9)
    assert throttle.wait_time(1.3) == pytest.approx(0.1)
    throttle.reset()
    assert throttle.ready(0.0)
    with pytest.raises(ValueError):
        PreviewThrottle(budget=0)
