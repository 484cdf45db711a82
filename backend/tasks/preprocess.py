"""preprocess: run one control-image preprocessor (``params.preprocessor``) on an image.

The result is the control image at the input's size, opaque, for a client to show or insert as a
layer the painter can touch up, then send back as a ready control image. Transparent pixels of the
input are laid over white first (paper), so a sketch on an empty layer reads as lines on white.
Needs no diffusion model.
"""
from __future__ import annotations

import numpy as np

from ..imaging import decode_over_white, opaque, over_white  # noqa: F401 - over_white: engine imports it from here
from .common import TaskRun


def run(job: TaskRun) -> list[np.ndarray]:
    assert job.preprocess is not None
    p = job.params
    with job.timed("prepare"):
        rgb = decode_over_white(job.images["image"])
    job.check_cancelled()
    with job.timed("preprocess"):
        control = job.preprocess(p.preprocessor, rgb, p.seed, job.images["image"].id)
    job.progress.step(1, 1)
    return [opaque(control)]

