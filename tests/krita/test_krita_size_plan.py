"""The big-canvas plan (size_plan.py): first image at the model's size, tiled passes up to the area."""
from __future__ import annotations

import pytest

from easel_krita.geometry import generation_size, scaled_size
from easel_krita.size_plan import MAX_PASS_FACTOR, MAX_PASS_PIXELS, plan_size


def test_a_region_near_the_native_size_is_one_pass_without_a_plan_sentence():
    plan = plan_size(768, 576, 768)
    assert not plan.refines and plan.first == plan.final == (768, 576)
    assert plan.describe() == "768×576"


def test_a_4000x3000_canvas_is_generated_at_the_native_area_then_refined_up_to_the_area():
    plan = plan_size(4000, 3000, 768)
    assert plan.first == generation_size(4000, 3000, 768)
    first_w, first_h = plan.first
    assert abs(first_w * first_h - 768 * 768) / (768 * 768) < 0.05  # the model's own area
    assert plan.refines and all(1 < f <= MAX_PASS_FACTOR for f in plan.passes)
    # the passes, rounded as the server rounds them, reach the area (never the 26x stretch of issue 13)
    assert plan.sizes()[-1] == plan.final
    assert plan.stretch < 1.01
    assert plan.final[0] * plan.final[1] <= MAX_PASS_PIXELS
    text = plan.describe()
    assert text.startswith(f"{first_w}×{first_h}, then ×{plan.factor:.1f} in ")
    assert f"×{4000 / first_w:.1f}" in text or abs(plan.factor - 4000 / first_w) < 0.1


def test_the_demo_model_on_a_big_canvas_needs_several_passes_each_within_the_server_limit():
    plan = plan_size(4000, 3000, 152)
    assert len(plan.passes) >= 3 and max(plan.passes) <= MAX_PASS_FACTOR
    assert "tiled passes" in plan.describe()
    size = plan.first
    for factor in plan.passes:
        size = scaled_size(*size, factor)
    assert size == plan.final and plan.stretch < 1.02


def test_the_largest_working_size_caps_the_passes_and_the_sentence_names_the_remaining_scale():
    plan = plan_size(8000, 6000, 768, largest_side=2048)
    assert max(plan.final) <= 2048
    assert plan.stretch > 3.5
    assert "largest working size" in plan.describe() and "8000×6000" in plan.describe()


def test_the_server_pixel_cap_holds_even_when_rounding_creeps_up():
    plan = plan_size(4097, 4097, 512, largest_side=8192)
    assert plan.final[0] * plan.final[1] <= MAX_PASS_PIXELS


@pytest.mark.parametrize("args", [(0, 10, 512), (10, -1, 512)])
def test_bad_sizes_are_refused_with_a_sentence(args):
    with pytest.raises(ValueError, match="positive size"):
        plan_size(*args)


def test_a_working_size_no_larger_than_the_first_image_means_no_passes():
    plan = plan_size(3000, 3000, 768, largest_side=512)
    assert not plan.refines and "scaled" in plan.describe()
