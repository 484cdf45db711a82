"""img2img: repaint a whole image, keeping ``1 - strength`` of it.

The image is scaled to the working area (its aspect kept, sides multiples of 8 — 16 for Flux), repainted, and
scaled back: the result has the input's size. Control images are scaled with it.
"""
from __future__ import annotations

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
    pipe = job.pipeline("img2img")
    controls = job.control_inputs("control_image", work)
    if controls:
        controls.update(width=work[0], height=work[1])
    controls.update(job.size_inputs(work))
    if job.family.img2img_by_inpaint:  # its img2img is the inpaint pipeline repainting everything
        controls["mask_image"] = Image.new("L", work, 255)
    rgb = generate(job, pipe, PreviewFrame((width, height)), area=(work, None), image=init, strength=p.strength,
                   **controls)
    with job.timed("decode"):
        return [opaque(resize(image, (width, height))) for image in rgb]
