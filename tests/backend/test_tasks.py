"""Task adapters' promises: what inpaint and outpaint leave untouched, sizes, depth without a depth
map, and the imaging helpers they are built from."""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend import demo
from backend.engine import Engine, EngineConfig, ModelSpec
from backend.errors import JobError
from backend.imaging import (
    composite, extend_canvas, feather_alpha, mask_box, outpaint_mask, working_size,
)
from protocol import ErrorCode, ImageFormat, ImagePayload, Margins
from tiny_models import (  # noqa: F401 - engine and model_dirs are fixtures
    Recorder, depth_payload, engine, grey_payload, model_dirs, pixels, rgba_payload, run,
)


def png_payload(rgba: np.ndarray) -> ImagePayload:
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, format="PNG")
    return ImagePayload(ImageFormat.PNG, rgba.shape[1], rgba.shape[0], out.getvalue())


# --------------------------------------------------------------------------- inpaint


@pytest.mark.parametrize("model", ["tiny", "tiny-inpaint"])
@pytest.mark.parametrize("shape", ["box", "soft", "edge"])
def test_inpaint_leaves_every_pixel_outside_the_mask_byte_identical(engine, model, shape):
    width, height = 96, 72
    source = rgba_payload(width, height, seed=3, alpha=None)  # random alpha too: it must survive as well
    original = pixels(source)
    mask = np.zeros((height, width), np.uint8)
    if shape == "box":
        mask[20:50, 30:70] = 255
    elif shape == "soft":  # a selection with soft edges: grey values count as "repaint partly"
        yy, xx = np.mgrid[:height, :width]
        mask = np.clip(255 - np.hypot(xx - 48, yy - 36) * 12, 0, 255).astype(np.uint8)
    else:  # touching the image border
        mask[:, :20] = 255
    output, _ = run(engine, "inpaint", {"image": source, "mask": grey_payload(mask)}, model=model,
                    width=64, height=64, batch_size=2)
    for payload in output.images:
        result = pixels(payload)
        assert result.shape == original.shape
        outside = mask == 0
        assert np.array_equal(result[outside], original[outside])
        inside = mask == 255
        if inside.sum() > 16:
            assert not np.array_equal(result[inside], original[inside])


def test_inpaint_png_input_and_result(engine):
    original = pixels(rgba_payload(64, 64, seed=5))
    mask = np.zeros((64, 64), np.uint8)
    mask[8:24, 40:60] = 255
    mask_png = io.BytesIO()
    Image.fromarray(mask, "L").save(mask_png, format="PNG")
    mask_payload = ImagePayload(ImageFormat.PNG, 64, 64, mask_png.getvalue())
    output, _ = run(engine, "inpaint", {"image": png_payload(original), "mask": mask_payload}, model="tiny",
                    width=64, height=64, result_format=ImageFormat.PNG)
    result = pixels(output.images[0])
    assert output.images[0].format is ImageFormat.PNG
    assert np.array_equal(result[mask == 0], original[mask == 0])


def test_inpaint_crops_to_the_mask_with_context(engine, monkeypatch):
    """The model sees the masked box plus context, scaled to the working area — not the whole canvas."""
    loaded, _ = engine.models.get("tiny")
    pipe = loaded.pipeline("inpaint")
    seen = {}
    original_call = type(pipe).__call__

    def spy(self, *args, **kwargs):
        seen["size"] = kwargs["image"].size
        seen["mask"] = np.asarray(kwargs["mask_image"])
        return original_call(self, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "__call__", spy)
    mask = np.zeros((256, 256), np.uint8)
    mask[100:132, 100:164] = 255  # 64 x 32 box; context 10 → 84 x 52 crop, scaled to ~64² area
    run(engine, "inpaint", {"image": rgba_payload(256, 256), "mask": grey_payload(mask)}, model="tiny",
        width=64, height=64, context=10)
    width, height = seen["size"]
    assert width % 8 == 0 and height % 8 == 0 and width > height
    assert abs(width / height - 84 / 52) < 0.25
    assert seen["mask"].max() == 255 and seen["mask"].min() == 0


def test_inpaint_with_an_empty_mask_is_refused(engine):
    with pytest.raises(JobError) as caught:
        run(engine, "inpaint", {"image": rgba_payload(64, 64), "mask": grey_payload(np.zeros((64, 64), np.uint8))},
            model="tiny")
    assert caught.value.code is ErrorCode.INVALID_PARAMETER and "the mask is empty" in caught.value.message


# --------------------------------------------------------------------------- outpaint


@pytest.mark.parametrize("margins", [Margins(left=32), Margins(top=16, bottom=24), Margins(8, 8, 8, 8)])
def test_outpaint_keeps_the_original_outside_the_seam_band(engine, margins):
    width, height, band = 64, 48, 8
    source = rgba_payload(width, height, seed=9)
    original = pixels(source)
    output, _ = run(engine, "outpaint", {"image": source}, model="tiny", margins=margins, feather=band,
                    width=64, height=64)
    result = pixels(output.images[0])
    assert result.shape == (height + margins.top + margins.bottom, width + margins.left + margins.right, 4)
    inner = result[margins.top:margins.top + height, margins.left:margins.left + width]
    # Pixels farther than the band from every extended edge are the original bytes.
    keep = np.ones((height, width), bool)
    if margins.left:
        keep[:, :band] = False
    if margins.right:
        keep[:, width - band:] = False
    if margins.top:
        keep[:band, :] = False
    if margins.bottom:
        keep[height - band:, :] = False
    assert np.array_equal(inner[keep], original[keep])
    # The new area was painted (opaque, and not the bare edge extension).
    assert (result[..., 3] == 255).all() or not (original[..., 3] == 255).all()
    if margins.left:
        assert not np.array_equal(result[:, :margins.left, :3], np.repeat(result[:, margins.left:margins.left + 1, :3],
                                                                          margins.left, axis=1))


def test_outpaint_mask_and_canvas():
    margins = Margins(left=4, top=0, right=0, bottom=2)
    mask = outpaint_mask((14, 8), margins, band=3)  # inner image 10 x 6
    assert (mask[:, :4] == 255).all() and (mask[6:, :] == 255).all()
    inner = mask[:6, 4:]
    assert (inner[:4, 0] > inner[:4, 1]).all() and (inner[:4, 2:] == 0).all()  # fades in from the left edge
    assert (inner[:4, 3:] == 0).all() and (inner[5, 3:] > 0).all()  # no band along top and right; one at the bottom
    rgba = np.random.default_rng(0).integers(0, 256, (6, 10, 4), dtype=np.uint8)
    canvas = extend_canvas(rgba, margins, seed=1)
    assert canvas.shape == (8, 14, 4) and np.array_equal(canvas[:6, 4:], rgba)


# --------------------------------------------------------------------------- depth2img


def test_depth2img_without_depth_map_names_what_to_download(engine):
    """Offline with no depth estimator in the cache: a typed error at once, never a download or a hang."""
    start = time.monotonic()
    with pytest.raises(JobError) as caught:
        run(engine, "depth2img", {"image": rgba_payload(64, 64)}, model="tiny-depth")
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE
    assert "Intel/dpt-hybrid-midas" in caught.value.message and "hf download" in caught.value.message
    assert time.monotonic() - start < 60  # a generous bound that only a network wait would exceed


def test_depth2img_flat_depth_is_refused(engine):
    with pytest.raises(JobError) as caught:
        run(engine, "depth2img", {"depth": depth_payload(np.ones((64, 64), np.float32))}, model="tiny-depth")
    assert caught.value.code is ErrorCode.INVALID_PARAMETER and "flat" in caught.value.message


def test_depth2img_follows_the_depth_map(engine, monkeypatch):
    """The client's depth reaches the pipeline (near = bright, non-finite background made far)."""
    loaded, _ = engine.models.get("tiny-depth")
    pipe = loaded.pipeline("depth2img")
    seen = {}
    original_call = type(pipe).__call__

    def spy(self, *args, **kwargs):
        seen["depth"] = kwargs["depth_map"].numpy()
        return original_call(self, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "__call__", spy)
    depth = np.tile(np.linspace(1, 0, 64, dtype=np.float32), (64, 1))
    depth[:8, :8] = np.inf  # a renderer's "no hit"
    run(engine, "depth2img", {"depth": depth_payload(depth)}, model="tiny-depth", width=64, height=64)
    sent = seen["depth"][0]
    assert sent.shape == (64, 64) and np.isfinite(sent).all()
    assert sent[20, 0] > sent[20, 63] and sent[0, 0] == depth[np.isfinite(depth)].min()


def depth_engine(model_dirs, tmp_path, estimator, **config) -> Engine:
    return Engine(EngineConfig(models=(ModelSpec("tiny-depth", str(model_dirs["depth"])),), device="cpu",
                               cache_folder=tmp_path / "cache", depth_estimator=str(estimator), **config))


def pickle_only_dpt(tmp_path) -> Path:
    """A DPT folder whose weights are only a pickle-based pytorch_model.bin (an older download)."""
    import torch
    from transformers import DPTForDepthEstimation

    folder = demo.build_tiny_dpt(tmp_path / "dpt-bin")
    torch.save(DPTForDepthEstimation.from_pretrained(str(folder)).state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def test_depth2img_estimates_depth_with_a_safetensors_dpt(model_dirs, tmp_path):
    fresh = depth_engine(model_dirs, tmp_path, demo.build_tiny_dpt(tmp_path / "dpt"))
    output, _ = run(fresh, "depth2img", {"image": rgba_payload(48, 40)}, model="tiny-depth", width=64, height=64, steps=2)
    assert (output.images[0].width, output.images[0].height) == (48, 40) and fresh._depth is not None


def test_depth2img_never_unpickles_a_dpt_without_the_unsafe_flag(model_dirs, tmp_path):
    folder = pickle_only_dpt(tmp_path)
    fresh = depth_engine(model_dirs, tmp_path, folder)
    with pytest.raises(JobError) as caught:
        run(fresh, "depth2img", {"image": rgba_payload(48, 40)}, model="tiny-depth", width=64, height=64, steps=2)
    err = caught.value
    assert err.code is ErrorCode.MODEL_UNAVAILABLE and err.details["field"] == "depth"
    assert "pytorch_model.bin, a pickle-based file" in err.message and "--allow-unsafe-checkpoints" in err.message
    assert fresh._depth is None
    trusting = depth_engine(model_dirs, tmp_path, folder, allow_unsafe_checkpoints=True)
    output, _ = run(trusting, "depth2img", {"image": rgba_payload(48, 40)}, model="tiny-depth", width=64, height=64,
                    steps=2)
    assert output.images[0].width == 48 and trusting._depth is not None


# --------------------------------------------------------------------------- imaging helpers


def test_feather_fades_inward_only():
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 255
    alpha = feather_alpha(mask, 6)
    assert (alpha[mask == 0] == 0).all()
    assert alpha[20, 20] == 1.0 and 0 < alpha[10, 20] < alpha[13, 20] < alpha[16, 20] <= 1.0
    border = np.zeros((20, 20), np.uint8)
    border[:, :10] = 255
    assert feather_alpha(border, 4)[10, 0] == 1.0  # the image border is not an edge of the mask


def test_composite_copies_untouched_bytes():
    original = np.random.default_rng(1).integers(0, 256, (16, 16, 4), dtype=np.uint8)
    generated = np.zeros((8, 8, 3), np.uint8)
    alpha = np.zeros((16, 16), np.float32)
    alpha[4:8, 4:8] = 1.0
    alpha[8, 8] = 0.5
    out = composite(original, generated, alpha, (4, 4, 12, 12))
    touched = alpha > 0
    assert np.array_equal(out[~touched], original[~touched])
    assert (out[4:8, 4:8, :3] == 0).all() and (out[4:8, 4:8, 3] == 255).all()


def test_working_size_keeps_aspect_and_multiples_of_8():
    assert working_size(512, 512, 512 * 512, 2048) == (512, 512)
    w, h = working_size(1000, 500, 512 * 512, 2048)
    assert w % 8 == 0 and h % 8 == 0 and abs(w / h - 2) < 0.05 and abs(w * h - 512 * 512) < 0.05 * 512 * 512
    assert working_size(10000, 10, 512 * 512, 2048) == (2048, 64)  # extreme strips stay in bounds
    assert mask_box(np.zeros((4, 4), np.uint8)) is None
