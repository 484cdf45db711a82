"""outpaint: extend the canvas by the margins and paint the new area so it continues the image.

The new area is pre-filled (the border pixels stretched outward, blurred, lightly noised) so the
model starts from the right colours; the repaint covers the new area plus a seam band of
``feather`` pixels inside the original along each extended edge, blended with a ramp. Beyond the
band, and along edges that were not extended, the original pixels are copied byte for byte.
"""
from __future__ import annotations

import numpy as np

from ..imaging import decode_image, extend_canvas, outpaint_mask
from .common import TaskRun
from .inpaint import repaint


def run(job: TaskRun) -> list[np.ndarray]:
    p = job.params
    margins = p.margins
    with job.timed("prepare"):
        image = decode_image(job.images["image"])
        height, width = image.shape[:2]
        canvas = extend_canvas(image, margins, p.seed)
        band = p.feather if p.feather is not None else seam_band(width, height)
        mask = outpaint_mask((canvas.shape[1], canvas.shape[0]), margins, band)
        alpha = mask.astype(np.float32) / 255.0
    return repaint(job, canvas, mask, alpha)


def seam_band(width: int, height: int) -> int:
    """Default seam band: an eighth of the image's shorter side, 8 to 64 pixels."""
    return max(8, min(64, min(width, height) // 8))
