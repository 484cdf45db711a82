"""edit: change an image by an instruction ("make the sky stormy"), with an instruction-edit model
(Flux.1 Kontext, kind ``edit``; a Flux.2 Klein model).

The image is scaled to the working area (its aspect kept, sides multiples of the family's 16), the
model redraws it following the prompt while it looks at the image, and the result is scaled back:
it has the input's size. Every step runs (there is no strength: the image conditions the model,
it is not the starting noise).
"""
from __future__ import annotations

import inspect

import numpy as np
from PIL import Image

from ..imaging import decode_image, opaque, resize
from ..previews import PreviewFrame
from .common import TaskRun, generate


def run(job: TaskRun) -> list[np.ndarray]:
    p = job.params
    with job.timed("prepare"):
        source = decode_image(job.images["image"])
        height, width = source.shape[:2]
        work = job.work_size(width, height, p.work_area)
        init = Image.fromarray(resize(source[..., :3], work))
    pipe = job.pipeline("edit")
    # Kontext rescales to max_area and would pick one of its preferred sizes: ask for exactly the
    # working size (Flux.2 Klein takes the image as a reference at its own size, and has neither argument).
    sizing = {"max_area": work[0] * work[1], "_auto_resize": False}
    accepted = inspect.signature(pipe.__call__).parameters
    rgb = generate(job, pipe, PreviewFrame((width, height)), image=init, width=work[0], height=work[1],
                   **{name: value for name, value in sizing.items() if name in accepted})
    with job.timed("decode"):
        return [opaque(resize(image, (width, height))) for image in rgb]
