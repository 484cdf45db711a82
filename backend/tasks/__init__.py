"""One adapter per task. Each module has ``run(job: TaskRun) -> list[RGBA uint8 arrays]``."""
from __future__ import annotations

from typing import Callable

import numpy as np

from protocol.messages import Task

from ..params import ResolvedParams
from ..samplers import callback_steps
from . import depth2img, edit, img2img, inpaint, outpaint, preprocess, txt2img, upscale
from .common import JobSetup, Progress, TaskRun

ADAPTERS: dict[str, Callable[[TaskRun], list[np.ndarray]]] = {
    Task.TXT2IMG: txt2img.run,
    Task.IMG2IMG: img2img.run,
    Task.INPAINT: inpaint.run,
    Task.OUTPAINT: outpaint.run,
    Task.DEPTH2IMG: depth2img.run,
    Task.UPSCALE: upscale.run,
    Task.PREPROCESS: preprocess.run,
    Task.EDIT: edit.run,
}



def denoising_steps(params: ResolvedParams) -> int:
    """The steps a job reports, as ``step_preview.total`` counts them (``job_started.steps``).

    diffusers runs ``int(steps × strength)`` of the ``steps`` for a job with a strength (txt2img
    has strength 1), calling back once per step (twice but once for a second-order sampler);
    upscale makes one call per batch of tiles and counts over all of them; preprocess is one step.
    """
    if params.task == Task.PREPROCESS:
        return 1
    per_call = callback_steps(params.sampler, min(int(params.steps * params.strength), params.steps))
    if params.task == Task.UPSCALE:
        calls, _ = upscale.tile_calls(params.width, params.height, params.tile)
        return per_call * len(calls)
    return per_call


__all__ = ["ADAPTERS", "JobSetup", "Progress", "TaskRun", "denoising_steps"]
