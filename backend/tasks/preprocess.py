"""preprocess: run one control-image preprocessor (``params.preprocessor``) on an image.

The result is the control image at the input's size, opaque, for a client to show or insert as a
layer the painter can touch up, then send back as a ready control image. Transparent pixels of the
input are laid over white first (paper), so a sketch on an empty layer reads as lines on white.
Needs no diffusion model.
"""
from __future__ import annotations

import numpy as np

from ..imaging import decode_image, opaque
from .common import TaskRun


def run(job: TaskRun) -> list[np.ndarray]:
    assert job.preprocess is not None
    p = job.params
    with job.timed("prepare"):
        rgba = decode_image(job.images["image"])
        rgb = over_white(rgba)
    job.check_cancelled()
    with job.timed("preprocess"):
        control = job.preprocess(p.preprocessor, rgb, p.seed, job.images["image"].id)
    job.progress.step(1, 1)
    return [opaque(control)]


def over_white(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3:].astype(np.float32) / 255.0
    return np.clip(np.rint(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)), 0, 255).astype(np.uint8)
