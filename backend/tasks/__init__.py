"""One adapter per task. Each module has ``run(job: TaskRun) -> list[RGBA uint8 arrays]``."""
from __future__ import annotations

from typing import Callable

import numpy as np

from protocol.messages import Task

from . import depth2img, img2img, inpaint, outpaint, preprocess, txt2img, upscale
from .common import JobSetup, Progress, TaskRun

ADAPTERS: dict[str, Callable[[TaskRun], list[np.ndarray]]] = {
    Task.TXT2IMG: txt2img.run,
    Task.IMG2IMG: img2img.run,
    Task.INPAINT: inpaint.run,
    Task.OUTPAINT: outpaint.run,
    Task.DEPTH2IMG: depth2img.run,
    Task.UPSCALE: upscale.run,
    Task.PREPROCESS: preprocess.run,
}

__all__ = ["ADAPTERS", "JobSetup", "Progress", "TaskRun"]
