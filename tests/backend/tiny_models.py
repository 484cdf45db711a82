"""Shared pieces of the engine tests: tiny real models built once per session, an engine over them,
a recording Progress, and payload builders.

No test lives here; test modules import the fixtures (``from tiny_models import ...``). The models
are diffusers' test shapes with random weights (backend.demo builds them), saved with
``save_pretrained`` into a session temp folder and loaded through the engine's normal code path.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

from backend.engine import Engine, EngineConfig, ModelSpec  # noqa: E402
from protocol import ImageFormat, ImagePayload, JobParams, SubmitJob  # noqa: E402


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    """Tiny models on disk: base, inpaint (9-ch), depth (5-ch), sdxl, and a single-file checkpoint
    of ``base`` (``single``) with its config-only folder (``single_config``)."""
    from backend import demo

    root = tmp_path_factory.mktemp("tiny-models")
    dirs = {kind: demo.build_tiny_model(root / kind, kind) for kind in ("base", "inpaint", "depth")}
    dirs["sdxl"] = demo.build_tiny_sdxl(root / "sdxl")
    dirs["single_config"] = root / "single-config"
    dirs["single"] = demo.write_single_file(dirs["base"], root / "single" / "tiny.safetensors", dirs["single_config"])
    return dirs


def specs(dirs: dict[str, Path]) -> tuple[ModelSpec, ...]:
    return (
        ModelSpec("tiny", str(dirs["base"])),
        ModelSpec("tiny-inpaint", str(dirs["inpaint"])),
        ModelSpec("tiny-depth", str(dirs["depth"])),
        ModelSpec("tiny-xl", str(dirs["sdxl"])),
        ModelSpec("tiny-single", str(dirs["single"]), config=str(dirs["single_config"])),
    )


@pytest.fixture(scope="session")
def engine(model_dirs, tmp_path_factory) -> Engine:
    """One engine over every tiny model, all kept loaded (cache of 5) so tests do not reload."""
    config = EngineConfig(models=specs(model_dirs), device="cpu", cache_size=5,
                          cache_folder=tmp_path_factory.mktemp("cache"))
    return Engine(config)


@dataclass
class Recorder:
    """A Progress that records every call; ``cancel_after`` makes ``cancelled()`` turn true once
    that many steps have been reported."""

    cancel_after: int | None = None
    wants: bool = True
    steps: list[tuple[int, int]] = field(default_factory=list)
    previews: list[tuple[int, int, int, int, bytes]] = field(default_factory=list)

    def cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.steps) >= self.cancel_after

    def step(self, step: int, total: int) -> None:
        self.steps.append((step, total))

    def wants_preview(self) -> bool:
        return self.wants

    def preview(self, step: int, total: int, width: int, height: int, jpeg: bytes) -> None:
        self.previews.append((step, total, width, height, jpeg))


@contextmanager
def cancelled_inside(module) -> Iterator[Recorder]:
    """A Recorder whose ``cancelled()`` turns true once ``module`` (a block of a model) has run:
    a cancel that arrives in the middle of a denoising step."""
    progress = Recorder()
    flag = []
    progress.cancelled = lambda: bool(flag)
    handle = module.register_forward_hook(lambda *_: flag.append(True))
    try:
        yield progress
    finally:
        handle.remove()


def submit(task: str, images: dict[str, ImagePayload] | None = None, **params) -> tuple[SubmitJob, dict[str, ImagePayload]]:
    """A SubmitJob for ``task`` with ``params`` (steps 2 and seed 1 unless given) and its images."""
    params.setdefault("steps", 2)
    params.setdefault("seed", 1)
    images = images or {}
    return SubmitJob("job-1", task, JobParams(**params), images={role: p.id for role, p in images.items()}), images


def run(engine: Engine, task: str, images: dict[str, ImagePayload] | None = None, progress: Recorder | None = None,
        **params):
    """prepare + run; returns (output, progress)."""
    progress = progress or Recorder()
    job, imgs = submit(task, images, **params)
    return engine.run(engine.prepare(job, imgs), progress), progress


def rgba_payload(width: int, height: int, seed: int = 0, alpha: int | None = 255) -> ImagePayload:
    """A random RGBA8 image; ``alpha=None`` gives random alpha too."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    if alpha is not None:
        pixels[..., 3] = alpha
    return ImagePayload(ImageFormat.RGBA8, width, height, pixels.tobytes())


def grey_payload(mask: np.ndarray) -> ImagePayload:
    height, width = mask.shape
    return ImagePayload(ImageFormat.GREY8, width, height, np.ascontiguousarray(mask, np.uint8).tobytes())


def depth_payload(depth: np.ndarray) -> ImagePayload:
    height, width = depth.shape
    return ImagePayload(ImageFormat.DEPTH32F, width, height, np.ascontiguousarray(depth, "<f4").tobytes())


def pixels(payload: ImagePayload) -> np.ndarray:
    """A result payload (rgba8 or png) as (H, W, 4) uint8."""
    from backend.imaging import decode_image

    return decode_image(payload)
