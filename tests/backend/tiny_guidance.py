"""Shared pieces of the guidance tests (ControlNet, LoRA, embeddings, prompts, upscale, SDXL, SD 2):
tiny random models and add-ons built once per session, and an engine over all of them.

No test lives here. Like ``tiny_models``, everything is made offline by ``backend.demo``'s builders
(diffusers' test shapes, random weights), written to disk in the formats users download, and loaded
through the engine's normal code paths. HF_HUB_OFFLINE=1.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

from backend.engine import Engine, EngineConfig, ModelSpec  # noqa: E402
from protocol import ImageFormat, ImagePayload  # noqa: E402
from tiny_models import model_dirs  # noqa: E402,F401 - re-exported fixture


@pytest.fixture(scope="session")
def guided_dirs(model_dirs, tmp_path_factory) -> dict[str, Path]:  # noqa: F811 - the fixture above
    """``model_dirs`` plus: ``cn`` / ``cn_xl`` (ControlNets for the SD and SDXL models), ``sd2``
    (v-prediction, 1024-wide text features), ``loras`` (``style`` with text-encoder layers, ``ink``,
    ``xl-style`` for SDXL, ``sub/deep`` in a subfolder), ``embeddings`` (``sparkle``: 2 vectors for
    SD; ``glow``: SDXL's two-part layout)."""
    from backend import demo

    root = tmp_path_factory.mktemp("guided")
    dirs = dict(model_dirs)
    dirs["cn"] = demo.build_tiny_controlnet(root / "canny-sd", model_dirs["base"], seed=1)
    dirs["cn_xl"] = demo.build_tiny_controlnet(root / "canny-xl", model_dirs["sdxl"], seed=2)
    dirs["sd2"] = demo.build_tiny_sd2(root / "sd2")
    loras = root / "loras"
    demo.build_tiny_lora(model_dirs["base"], loras / "style.safetensors", seed=3, text_encoder=True)
    demo.build_tiny_lora(model_dirs["base"], loras / "ink.safetensors", seed=4)
    demo.build_tiny_lora(model_dirs["base"], loras / "sub" / "deep.safetensors", seed=5)
    demo.build_tiny_lora(model_dirs["sdxl"], loras / "xl-style.safetensors", seed=6)
    dirs["loras"] = loras
    embeddings = root / "embeddings"
    demo.build_tiny_embedding(embeddings / "sparkle.safetensors", (32,), vectors=2, seed=7)
    demo.build_tiny_embedding(embeddings / "glow.safetensors", (32, 32), vectors=1, seed=8)
    dirs["embeddings"] = embeddings
    return dirs


def guided_specs(dirs: dict[str, Path]) -> tuple[ModelSpec, ...]:
    return (
        ModelSpec("tiny", str(dirs["base"])),
        ModelSpec("tiny-inpaint", str(dirs["inpaint"])),
        ModelSpec("tiny-xl", str(dirs["sdxl"])),
        ModelSpec("tiny-sd2", str(dirs["sd2"])),
        ModelSpec("canny", str(dirs["cn"])),
        ModelSpec("canny-xl", str(dirs["cn_xl"])),
        ModelSpec("depth-cn", str(dirs["cn"])),  # the same weights under a name that says depth
    )


def guided_engine_for(dirs: dict[str, Path], cache: Path, **overrides) -> Engine:
    settings = dict(models=guided_specs(dirs), device="cpu", cache_size=4, cache_folder=cache,
                    lora_dirs=(dirs["loras"],), embedding_dirs=(dirs["embeddings"],))
    settings.update(overrides)
    return Engine(EngineConfig(**settings))


@pytest.fixture(scope="session")
def guided_engine(guided_dirs, tmp_path_factory) -> Engine:
    """One engine over every guided model and add-on folder, models kept loaded between tests."""
    return guided_engine_for(guided_dirs, tmp_path_factory.mktemp("guided-cache"))


def square_image(width: int, height: int, seed: int = 0) -> ImagePayload:
    """An opaque image: a dark background with a bright square in the middle (strong, known edges)."""
    pixels = np.full((height, width, 4), 30, np.uint8)
    pixels[..., 3] = 255
    pixels[height // 4:3 * height // 4, width // 4:3 * width // 4, :3] = 220
    pixels[..., 0] = np.clip(pixels[..., 0].astype(int) + seed, 0, 255)
    return ImagePayload(ImageFormat.RGBA8, width, height, pixels.tobytes())


def smooth_image(width: int, height: int) -> ImagePayload:
    """A smooth colour gradient (no edges at all): a seam shows on it at once."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.empty((height, width, 4), np.uint8)
    pixels[..., 0] = np.rint(40 + 160 * x / max(1, width - 1))
    pixels[..., 1] = np.rint(60 + 120 * y / max(1, height - 1))
    pixels[..., 2] = np.rint(120 + 60 * np.sin(x / width * np.pi) * np.cos(y / height * np.pi))
    pixels[..., 3] = 255
    return ImagePayload(ImageFormat.RGBA8, width, height, pixels.tobytes())
