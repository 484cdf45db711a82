"""What the next click will do (plugin_blender.plan): the model's native size at the render's
aspect, the steps, and the note on view transforms."""
from __future__ import annotations

import pytest

from plugin_blender.plan import FALLBACK_SIZE, colour_note, model_for, native_size, plan
from plugin_blender.request import RequestError
from protocol import ModelInfo

SD15 = ModelInfo("sd15", "SD 1.5", "base", "sd15", tasks=("txt2img", "img2img"), default_steps=25)
SDXL = ModelInfo("sdxl", "SDXL", "base", "sdxl", tasks=("txt2img",), default_width=1024, default_height=1024,
                 default_steps=30)
DEPTH = ModelInfo("depth", "SD 2 depth", "depth", "sd2", tasks=("depth2img",), default_width=768,
                  default_height=768, default_steps=40)


def test_native_size_keeps_the_models_area_at_the_renders_aspect():
    width, height = native_size(SD15, 16 / 9)
    assert (width % 8, height % 8) == (0, 0)
    assert abs(width / height - 16 / 9) < 0.03 and 0.95 < width * height / 512 ** 2 <= 1.0
    assert native_size(SDXL, 1.0) == (1024, 1024)
    assert native_size(None, 1.0) == FALLBACK_SIZE  # not connected yet: SD 1.5's


def test_plan_takes_the_model_for_the_task_and_its_default_steps():
    models = (SD15, SDXL, DEPTH)
    assert model_for(models, "", "depth2img") is DEPTH
    assert model_for(models, "sdxl", "txt2img") is SDXL
    assert model_for(models, "sdxl", "depth2img") is None and model_for((), "", "txt2img") is None
    first = plan("MODEL", (1920, 1080), (512, 512), 0, DEPTH)
    assert (first.width, first.height) == native_size(DEPTH, 1920 / 1080) and first.steps == 40
    assert first.line(4) == f"{first.width}×{first.height} · 40 steps · 4 views"
    assert plan("SCENE", (1920, 1080), (512, 512), 12, DEPTH).line() == "1920×1080 · 12 steps"
    unknown = plan("CUSTOM", (1920, 1080), (300, 200), 0, None)
    assert (unknown.width, unknown.height, unknown.steps) == (296, 200, None)
    assert unknown.line() == "296×200 · the model's steps (connect to see the model's defaults)"
    with pytest.raises(RequestError, match="64 to 4096"):
        plan("CUSTOM", (1920, 1080), (32, 512), 0, SD15)


def test_colour_note_explains_tone_mapping_view_transforms_only():
    assert colour_note("Standard") is None and colour_note("Raw") is None
    for transform in ("AgX", "Filmic", "Khronos PBR Neutral"):
        note = colour_note(transform)
        assert transform in note and "Standard" in note and "Bakes store the generated colours" in note
