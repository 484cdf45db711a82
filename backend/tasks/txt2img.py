"""txt2img: a prompt in, ``batch_size`` images of ``width × height`` out (guided by the job's
control units, when it has any, each image stretched to the result's size)."""
from __future__ import annotations

import numpy as np

from ..imaging import opaque
from ..previews import PreviewFrame
from .common import TaskRun, generate


def run(job: TaskRun) -> list[np.ndarray]:
    """Generate the job's images; returns opaque RGBA arrays of the requested size."""
    p = job.params
    pipe = job.pipeline("txt2img")
    controls = job.control_inputs("image", (p.width, p.height))
    rgb = generate(job, pipe, PreviewFrame((p.width, p.height)), area=((p.width, p.height), None), width=p.width,
                   height=p.height, **controls)
    return [opaque(image) for image in rgb]
