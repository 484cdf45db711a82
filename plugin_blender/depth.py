"""Depth pass normalisation: a rendered Z pass in, a depth map for a depth-guided model out.
No ``bpy`` here.

Arrays are (height, width) planar depths in scene units, in whatever row order the caller uses
(normalisation is per pixel, so order does not matter). Cycles and Workbench write 1e10 where a
ray hits nothing; anything at or beyond :data:`BACKGROUND_DEPTH`, non-finite or not positive is
background.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

#: Depths at or beyond this are background (the renderers write 1e10 there).
BACKGROUND_DEPTH = 1e9

#: How depth becomes brightness: ``inverse`` (disparity, what MiDaS/DPT-trained depth models
#: saw) or ``linear`` (even steps in scene units).
DepthMode = Literal["inverse", "linear"]

#: In ``linear`` mode the farthest surface gets this brightness, so it stays apart from the
#: background (0).
LINEAR_FLOOR = 0.1


class EmptyDepthError(ValueError):
    """The depth pass holds no surface: nothing is in front of the camera."""


def foreground(depth: np.ndarray) -> np.ndarray:
    """Boolean mask of the pixels that hit a surface."""
    depth = np.asarray(depth)
    with np.errstate(invalid="ignore"):
        return np.isfinite(depth) & (depth > 0.0) & (depth < BACKGROUND_DEPTH)


def depth_range(depth: np.ndarray) -> tuple[float, float]:
    """Nearest and farthest surface depth. Raises :class:`EmptyDepthError` if there is none."""
    mask = foreground(depth)
    if not mask.any():
        raise EmptyDepthError("nothing is in front of the camera: the depth pass is empty; "
                              "point the active camera at the objects to texture")
    values = np.asarray(depth)[mask]
    return float(values.min()), float(values.max())


def normalise_depth(depth: np.ndarray, mode: DepthMode = "inverse") -> np.ndarray:
    """A float32 map in [0, 1]: near is bright (1 at the nearest surface), background is 0.

    ``inverse``: ``nearest / depth`` — relative disparity, the convention depth models are trained
    on; far surfaces fade towards the background. ``linear``: the depth range mapped linearly onto
    [1, :data:`LINEAR_FLOOR`]. A single flat depth maps to 1. Raises :class:`EmptyDepthError`
    when no pixel hit a surface, ``ValueError`` for an unknown mode or a non-2-D array.
    """
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"a depth pass is a 2-D array, got shape {depth.shape}")
    near, far = depth_range(depth)
    mask = foreground(depth)
    out = np.zeros(depth.shape, dtype=np.float64)
    if mode == "inverse":
        out[mask] = near / depth[mask]
    elif mode == "linear":
        span = far - near
        if span <= 0.0:
            out[mask] = 1.0
        else:
            out[mask] = 1.0 - (depth[mask] - near) / span * (1.0 - LINEAR_FLOOR)
    else:
        raise ValueError(f"depth mode must be 'inverse' or 'linear', got {mode!r}")
    return np.clip(out, 0.0, 1.0).astype(np.float32)
