"""Tiled SD upscale: sizes, tiles and their batching, seam-free blending, progress over all tiles,
previews of the whole result, cancellation, and the checks of its parameters.

The seam test has two halves. The blending itself is tested on tiles whose colours disagree
(each tile is the smooth picture plus its own offset, the way real tiles drift): feathered, the
result moves between them gradually, where stitching them edge to edge leaves a step. End to end,
the tiny random model's tiles are noise, so there the test bounds the change across every tile
border by the change inside tiles.
"""
from __future__ import annotations

import numpy as np
import pytest

from backend.errors import JobCancelledError, JobError
from backend.previews import preview_size
from backend.tasks.upscale import (
    MAX_TILES_PER_CALL, TileBlender, feather_weights, overlap_for, tile_boxes, tiles_per_call,
)
from protocol import ErrorCode, ImageFormat, ImagePayload, JobParams, LoraWeight, SubmitJob
from tiny_guidance import guided_dirs, guided_engine, smooth_image  # noqa: F401 - fixtures
from tiny_models import Recorder, model_dirs, pixels, rgba_payload  # noqa: F401 - fixture


def upscale(engine, payload: ImagePayload, progress: Recorder | None = None, **params):
    params.setdefault("model", "tiny")
    params.setdefault("steps", 4)
    params.setdefault("seed", 5)
    submit = SubmitJob("up", "upscale", JobParams(**params), images={"image": payload.id})
    progress = progress or Recorder()
    return engine.run(engine.prepare(submit, {"image": payload}), progress), progress


# --------------------------------------------------------------------------- tiles


def test_tiles_cover_the_image_evenly_with_the_overlap():
    boxes = tile_boxes(1000, 600, (512, 512), 64)
    assert {(x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes} == {(512, 512)}
    covered = np.zeros((600, 1000), int)
    for x0, y0, x1, y1 in boxes:
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    xs = sorted({b[0] for b in boxes})
    assert xs[0] == 0 and xs[-1] == 1000 - 512 and all(b - a <= 512 - 64 for a, b in zip(xs, xs[1:]))
    assert tile_boxes(300, 200, (512, 512), 64) == [(0, 0, 512, 512)]  # smaller than a tile: one tile


def test_a_small_gpu_holds_few_tiles_at_once():
    assert tiles_per_call((512, 512)) == MAX_TILES_PER_CALL == 4
    assert tiles_per_call((1024, 1024)) == 2  # SDXL's native tiles: two 1024² images at a time
    assert tiles_per_call((2048, 2048)) == 1
    assert overlap_for(512) == 64 and overlap_for(128) == 32 and overlap_for(16) == 8


def test_feather_weights_ramp_only_toward_neighbours():
    weights = feather_weights((0, 0, 128, 128), 256, 128, 32)  # a neighbour on the right only
    assert weights[:, 0].min() > 0.99 and weights[0, :96].min() > 0.99  # image borders are not faded
    assert weights[64, -1] < 0.01 and np.all(np.diff(weights[64, 96:]) < 0)
    assert weights.min() > 0


def test_blending_tiles_that_disagree_leaves_no_seam():
    """Tiles = a smooth picture + a per-tile offset of up to ±24 levels. Feathered, no step between
    neighbouring pixels is larger than the picture's own slope plus a couple of levels; stitched
    edge to edge, the offsets show as steps of tens of levels."""
    height, width = 192, 320
    base = pixels(smooth_image(width, height))[..., :3]
    boxes = tile_boxes(width, height, (128, 128), 32)
    offsets = np.random.default_rng(0).uniform(-24, 24, len(boxes))
    blender = TileBlender(base, 32)
    stitched = base.astype(float).copy()
    for (x0, y0, x1, y1), offset in zip(boxes, offsets):
        tile = np.clip(base[y0:y1, x0:x1].astype(float) + offset, 0, 255)
        blender.add((x0, y0, x1, y1), np.rint(tile).astype(np.uint8))
        stitched[y0:y1, x0:x1] = tile

    def largest_step(image: np.ndarray) -> float:
        image = image.astype(float)
        return max(np.abs(np.diff(image, axis=0)).max(), np.abs(np.diff(image, axis=1)).max())

    own_slope = largest_step(base)
    assert largest_step(blender.image()) <= own_slope + 3
    assert largest_step(stitched) > own_slope + 10  # what a seam looks like, for comparison


# --------------------------------------------------------------------------- end to end


def test_upscale_doubles_the_size_and_keeps_the_alpha(guided_engine):
    source = pixels(rgba_payload(48, 40, seed=3, alpha=None))
    payload = ImagePayload(ImageFormat.RGBA8, 48, 40, source.tobytes())
    output, _ = upscale(guided_engine, payload)
    result = pixels(output.images[0])
    assert result.shape == (80, 96, 4)
    from PIL import Image

    expected_alpha = np.asarray(Image.fromarray(source[..., 3]).resize((96, 80), Image.Resampling.LANCZOS))
    assert np.array_equal(result[..., 3], expected_alpha)


@pytest.mark.parametrize("model", ["tiny", "tiny-xl"])
def test_tile_borders_are_no_rougher_than_tile_interiors(guided_engine, model):
    payload = smooth_image(128, 96)
    output, progress = upscale(guided_engine, payload, model=model, width=128, height=128, upscale_factor=2.0)
    result = pixels(output.images[0])[..., :3].astype(float)
    height, width = result.shape[:2]
    assert (width, height) == (256, 192)
    boxes = tile_boxes(width, height, (128, 128), overlap_for(128))
    assert len(boxes) == 6
    across_x = np.abs(np.diff(result, axis=1)).mean(axis=(0, 2))  # change between column i and i+1
    across_y = np.abs(np.diff(result, axis=0)).mean(axis=(1, 2))
    borders_x = sorted({x0 for x0, _, _, _ in boxes if x0} | {x1 for _, _, x1, _ in boxes if x1 < width})
    borders_y = sorted({y0 for _, y0, _, _ in boxes if y0} | {y1 for _, _, _, y1 in boxes if y1 < height})
    for across, borders in ((across_x, borders_x), (across_y, borders_y)):
        typical = np.median(across)
        assert all(across[b - 1] <= 1.5 * typical + 3 for b in borders), (across[[b - 1 for b in borders]], typical)


def test_progress_runs_over_all_tiles_and_previews_show_the_whole_result(guided_engine):
    payload = smooth_image(128, 96)
    output, progress = upscale(guided_engine, payload, width=64, height=64, steps=6, upscale_factor=1.5)
    # 192x144 in 64² tiles with 16 px overlap: 4 x 3 tiles, 4 per call -> 3 calls of int(6 * 0.35) = 2 steps
    totals = {total for _, total in progress.steps}
    assert totals == {6} and [s for s, _ in progress.steps] == list(range(1, 7))
    assert pixels(output.images[0]).shape == (144, 192, 4)
    assert progress.previews and all((w, h) == preview_size(192, 144) for _, _, w, h, _ in progress.previews)


def test_cancel_between_tiles(guided_engine):
    with pytest.raises(JobCancelledError) as caught:
        upscale(guided_engine, smooth_image(128, 96), Recorder(cancel_after=3), width=64, height=64, steps=6,
                upscale_factor=1.5)
    assert caught.value.step == 3 and caught.value.total == 6


def test_upscale_with_a_lora_and_the_default_strength(guided_engine):
    payload = smooth_image(64, 64)
    plain, _ = upscale(guided_engine, payload)
    styled, _ = upscale(guided_engine, payload, loras=(LoraWeight("style", 1.0),))
    assert not np.array_equal(pixels(plain.images[0]), pixels(styled.images[0]))
    prepared = guided_engine.prepare(SubmitJob("u", "upscale", JobParams(model="tiny"), images={"image": payload.id}),
                                     {"image": payload})
    assert prepared.params.strength == 0.35 and prepared.params.upscale_factor == 2.0
    assert prepared.params.tile == (512, 512) and (prepared.width, prepared.height) == (128, 128)


@pytest.mark.parametrize("params, message", [
    ({"upscale_factor": 0.5}, "upscale_factor must be between 1 and 4, got 0.5"),
    ({"upscale_factor": 4.5}, "upscale_factor must be between 1 and 4, got 4.5"),
    ({"batch_size": 2}, "upscale makes one image; send batch_size 1, got 2"),
    ({"width": 100}, "width must be a multiple of 8, got 100; use 96 or 104"),
])
def test_bad_upscale_parameters(guided_engine, params, message):
    with pytest.raises(JobError) as caught:
        upscale(guided_engine, smooth_image(64, 64), **params)
    assert caught.value.code is ErrorCode.INVALID_PARAMETER and caught.value.message.startswith(message)


def test_a_result_too_large_says_which_factor_fits(guided_engine):
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("1", (3000, 2000)).save(out, format="PNG")  # only its header is read before refusing
    with pytest.raises(JobError) as caught:
        upscale(guided_engine, ImagePayload(ImageFormat.PNG, 3000, 2000, out.getvalue()), upscale_factor=2.0)
    assert caught.value.message == ("upscaling 3000x2000 by 2 gives 6000x4000, more than 16777216 pixels; use "
                                    "upscale_factor 1.67 or less, or a smaller image")


def test_upscale_factor_belongs_to_upscale_only(guided_engine):
    with pytest.raises(JobError, match="upscale_factor is for the upscale task; leave it out of a txt2img job"):
        guided_engine.prepare(SubmitJob("j", "txt2img", JobParams(model="tiny", upscale_factor=2.0)), {})
    with pytest.raises(JobError) as caught:
        guided_engine.prepare(SubmitJob("j", "upscale", JobParams(model="tiny-inpaint"), images={"image": "x"}),
                              {"image": smooth_image(64, 64)})
    assert caught.value.code is ErrorCode.UNSUPPORTED  # an inpainting model cannot upscale
