"""depth2img: an image whose shapes follow a depth map (SD 2 depth models, 5-channel UNet; Flux.1
Depth, a control transformer that takes the depth map as a grey control image, near = white).

The depth map comes from the client (near = bright; Blender renders a real one). Without one the
depth is estimated from the image with a depth model that must already be on this machine; without
either model the job fails with ``model_unavailable`` naming what to download. Without an image the
generation starts from flat grey at full strength, so only the depth and the prompt shape it.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import invalid
from ..imaging import decode_depth, decode_image, opaque, resize
from ..models.flux_control import depth_image
from ..previews import PreviewFrame
from .common import TaskRun, generate


def run(job: TaskRun) -> list[np.ndarray]:
    import torch

    p = job.params
    with job.timed("prepare"):
        image = decode_image(job.images["image"]) if "image" in job.images else None
        depth = decode_depth(job.images["depth"]) if "depth" in job.images else None
        if depth is not None and float(depth.max() - depth.min()) <= 0.0:
            raise invalid("the depth map is flat (every pixel has the same depth); send a depth map with some range",
                          field="depth")
        size = (p.width, p.height)
        work = job.work_size(*size, p.work_area)
        if image is not None:
            init = Image.fromarray(resize(image[..., :3], work))
            strength = p.strength
        else:
            init = Image.new("RGB", work, (127, 127, 127))
            strength = 1.0
    model = job.model()
    if depth is None:
        with job.timed("prepare"):
            depth = job.estimate_depth(model, image[..., :3])
    pipe = job.pipeline("depth2img")
    if model.owner.root_roles.get(model.facts.kind) == "control":  # a control transformer (Flux.1 Depth)
        inputs = {"control_image": depth_image(depth).resize(work, Image.Resampling.BILINEAR), **job.size_inputs(work)}
    else:
        inputs = {"depth_map": torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))[None]}
    rgb = generate(job, pipe, PreviewFrame(size), area=(work, None), image=init, strength=strength, **inputs)
    with job.timed("decode"):
        return [opaque(resize(generated, size)) for generated in rgb]
