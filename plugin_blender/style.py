"""The style reference: one picture that guides every view of a texture by example. No ``bpy`` here.

The panel's *Style Reference* is an image datablock (or a file opened as one). When a texture job
starts, its pixels are read once (:func:`reference_of`) — cropped to nothing, bounded to
:data:`~.clientkit.guides.REFERENCE_MAX_SIDE` px a side — and the same
:class:`~.request.ReferenceInput` goes with every view, so the views share one look; the server
reads it through its reference adapter (IP-Adapter for SD, Redux for Flux: its default for the
model's family). The picture is uploaded once: every view names the same content id.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .clientkit.guides import fit_within
from .pixels import blender_to_rgba8
from .protocol import ImageFormat, ImagePayload
from .request import ReferenceInput, RequestError


def reference_of(settings: Any) -> ReferenceInput | None:
    """The style reference of ``settings`` (the scene's ``EaselSettings``), or ``None`` when none
    is set or its weight is 0. Raises :class:`RequestError` for an image without pixels."""
    image = getattr(settings, "style_reference", None)
    if image is None or settings.style_weight <= 0:
        return None
    width, height = (int(v) for v in image.size)
    channels = int(image.channels)
    if width < 1 or height < 1 or channels not in (1, 3, 4):
        raise RequestError(f"the style reference {image.name!r} has no pixels (is its file missing?); "
                           "open another image or clear the field")
    flat = np.empty(width * height * channels, np.float32)
    image.pixels.foreach_get(flat)
    rgba = blender_to_rgba8(flat, width, height, channels)
    size = fit_within(width, height)
    if size != (width, height):
        rows = np.frombuffer(rgba, np.uint8).reshape(height, width, 4)
        ys = ((2 * np.arange(size[1]) + 1) * height // (2 * size[1]))[:, None]  # each target pixel's centre
        xs = ((2 * np.arange(size[0]) + 1) * width // (2 * size[0]))[None, :]
        rgba = np.ascontiguousarray(rows[ys, xs]).tobytes()  # nearest: the adapters see 224-384 px anyway
    return ReferenceInput(ImagePayload.build(ImageFormat.RGBA8, *size, rgba), weight=round(float(settings.style_weight), 3))
