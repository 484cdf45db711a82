"""inpaint: repaint where the mask is white; every pixel where it is black stays byte-identical.

1. crop to the mask's bounding box plus ``context`` pixels around it (the model sees the
   surroundings it must match, not the whole canvas);
2. scale the crop to the working area (aspect kept, multiples of 8; 16 for Flux) and generate there —
   with an inpainting model (9-channel UNet, Flux Fill), or with an ordinary model through diffusers'
   latent-blending path;
3. scale back and composite with the mask feathered *inward*, so the blend never reaches outside it.

Control images (result coordinates) are cut to the same crop and scaled to the same size as the image.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import invalid
from ..imaging import composite, decode_image, decode_mask, feather_alpha, grow_box, mask_box, resize
from ..previews import PreviewFrame
from .common import TaskRun, generate


def run(job: TaskRun) -> list[np.ndarray]:
    p = job.params
    with job.timed("prepare"):
        image = decode_image(job.images["image"])
        mask = decode_mask(job.images["mask"])
        box = mask_box(mask)
        if box is None:
            raise invalid("the mask is empty, so there is nothing to repaint; paint the area to change in white",
                          field="mask")
        short_side = min(box[2] - box[0], box[3] - box[1])
        feather = p.feather if p.feather is not None else min(32, max(2, short_side // 16))
        alpha = feather_alpha(mask, feather)
    return repaint(job, image, mask, alpha)


def auto_context(box: tuple[int, int, int, int]) -> int:
    """Context pixels around a masked box: a third of its longer side, at least 32."""
    return max(32, max(box[2] - box[0], box[3] - box[1]) // 3)


def repaint(job: TaskRun, image: np.ndarray, mask: np.ndarray, alpha: np.ndarray) -> list[np.ndarray]:
    """Regenerate the nonzero area of ``mask`` in ``image`` (RGBA) and blend it in by ``alpha``
    (zero outside the mask). Shared with outpaint, which builds its own canvas, mask and alpha."""
    p = job.params
    height, width = image.shape[:2]
    with job.timed("prepare"):
        box = mask_box(mask)
        context = p.context if p.context is not None else auto_context(box)
        crop = grow_box(box, context, width, height)
        x0, y0, x1, y1 = crop
        crop_size = (x1 - x0, y1 - y0)
        work = job.work_size(*crop_size, p.work_area)
        init = Image.fromarray(resize(image[y0:y1, x0:x1, :3], work))
        # The model repaints everything the mask touches; the soft edge comes from the composite.
        hard = np.where(mask[y0:y1, x0:x1] > 0, 255, 0).astype(np.uint8)
        model_mask = Image.fromarray(resize(hard, work, smooth=False))
        frame = PreviewFrame((width, height), box=crop, background=image, alpha=alpha)
    pipe = job.pipeline("inpaint")
    controls = job.control_inputs("control_image", work, crop)
    rgb = generate(job, pipe, frame, area=(work, crop), image=init, mask_image=model_mask, width=work[0],
                   height=work[1], strength=p.strength, **controls)
    with job.timed("decode"):
        return [composite(image, resize(generated, crop_size), alpha, crop) for generated in rgb]
