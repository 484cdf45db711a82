"""Super-resolution models from the models folders drive the Upscale task's first pass (spandrel):
a tiny random ESRGAN (spandrel's own architecture class, 8 filters, 1 block, 2x) saved as
``.safetensors`` in a ComfyUI ``upscale_models`` folder is found, loaded by spandrel from its tensor
names, run in tiles that join without a seam, and changes what the tile pass starts from.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend import demo
from backend.engine import Engine, EngineConfig
from backend.imaging import resize
from backend.upscalers import SuperResolution, run_tiled
from protocol import JobParams, SubmitJob
from tiny_models import Recorder, pixels, rgba_payload


def write_esrgan(path: Path, scale: int = 2, seed: int = 0) -> Path:
    import torch
    from safetensors.torch import save_file
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    model = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_tiles_join_like_one_pass(tmp_path):
    path = write_esrgan(tmp_path / "esr.safetensors")
    sr = SuperResolution(lambda: [path], lambda: "cpu")
    model = sr.model()
    assert model is not None and model.scale == 2
    rgb = np.random.default_rng(1).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    whole = run_tiled(model, rgb, tile=512, pad=32)
    tiled = run_tiled(model, rgb, tile=24, pad=32)
    assert whole.shape == (140, 180, 3)
    assert np.abs(whole.astype(int) - tiled.astype(int)).max() <= 1
    out, used = sr.enlarge(rgb, (135, 105))  # 1.5x asked of a 2x model: scaled down after it ran
    assert used == "esr.safetensors" and out.shape == (105, 135, 3)
    assert np.array_equal(out, resize(whole, (135, 105)))


def test_without_a_model_the_first_pass_is_lanczos(tmp_path):
    sr = SuperResolution(lambda: [], lambda: "cpu")
    rgb = np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out, used = sr.enlarge(rgb, (60, 40))
    assert used == "lanczos" and np.array_equal(out, resize(rgb, (60, 40)))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    assert SuperResolution(lambda: [broken], lambda: "cpu").enlarge(rgb, (60, 40))[1] == "lanczos"


@pytest.fixture(scope="module")
def comfy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ComfyUI")
    demo.build_tiny_model(root / "models" / "diffusers" / "tiny-sd", "base")
    return root


def upscale(engine: Engine) -> np.ndarray:
    image = rgba_payload(48, 40, seed=4)
    submit = SubmitJob("up", "upscale", JobParams(prompt="detailed", upscale_factor=2, steps=4, seed=3, strength=0.25,
                                                  width=64, height=64), {"image": image.id})
    return pixels(engine.run(engine.prepare(submit, {"image": image}), Recorder()).images[0])


def test_the_upscale_task_starts_from_the_models_enlargement(comfy, tmp_path):
    plain = Engine(EngineConfig(models_dirs=(comfy,), device="cpu", cache_folder=tmp_path))
    assert plain.upscalers.model() is None
    before = upscale(plain)
    write_esrgan(comfy / "models" / "upscale_models" / "2x-tiny.safetensors", seed=5)
    engine = Engine(EngineConfig(models_dirs=(comfy,), device="cpu", cache_folder=tmp_path))
    assert engine.upscalers.model() is not None
    after = upscale(engine)
    assert after.shape == before.shape == (80, 96, 4)
    assert not np.array_equal(after[..., :3], before[..., :3])
    assert np.array_equal(after[..., 3], before[..., 3])  # alpha is resized the same way either way
