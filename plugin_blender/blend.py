"""Blending several projected views into one colour per surface point. No ``bpy`` here.

A :class:`View` is one generated image with the camera and the depth pass it was made from. For a
surface point (world position and unit normal) each view gets a weight

    weight = facing × visible × edge

* **facing**: ``(cos θ − GRAZING) / (1 − GRAZING)`` clamped to [0, 1], θ the angle between the
  normal and the direction to the camera: a face seen head-on counts fully, one seen at a grazing
  angle (where the image is stretched) not at all;
* **visible**: the point is in front of the camera, inside the frame and not hidden in the view's
  depth pass (against the deepest of the four pixel centres around it, see :func:`_depth_limit`);
* **edge**: smoothstep of the distance (in pixels) to the frame's border and to the nearest depth
  discontinuity of the view (a silhouette, where a depth map cannot say which side a point is on),
  over :func:`feather_px` pixels: views fade out towards their edges instead of ending in a seam.

The blended colour is the weighted mean of the views' bilinear samples; points no view weighs are
*unseen* (weight 0). Everything here is deterministic (no random numbers, fixed order of views).

:func:`reproject` turns the views done so far into the start image and mask of the next view:
each pixel of the new view is lifted to the surface with the new depth pass and coloured by the
earlier views; the mask is 255 exactly where they saw nothing (the new pixels to generate).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .projection import MIN_CLIP_W, CameraProjection
from .visibility import BACKGROUND_DEPTH, DEPTH_TOLERANCE, facing_cosine, sample_nearest

#: Cosine of the view angle at and below which a view adds nothing (≈ 84°).
GRAZING = 0.1
#: Views fade in from the frame's border and from depth discontinuities over this fraction of the
#: image's shorter side (at least :data:`MIN_FEATHER_PX` pixels).
FEATHER = 0.02
MIN_FEATHER_PX = 2
#: A pixel whose inverse depth bends by more than this fraction of itself against its neighbours
#: marks a discontinuity (a silhouette, or one surface ending in front of another).
DISCONTINUITY = 0.02
#: A pixel counts as already textured when the earlier views' total weight reaches this.
KNOWN_WEIGHT = 0.02


@dataclass(frozen=True, eq=False)
class View:
    """One generated image, ``(height, width, channels)`` floats with rows bottom-up, with the
    camera and the planar depth pass ((height, width), rows bottom-up) it was made from."""

    camera: CameraProjection
    depth: np.ndarray
    image: np.ndarray

    def __post_init__(self) -> None:
        shape = (self.camera.height, self.camera.width)
        if np.shape(self.depth) != shape:
            raise ValueError(f"the depth pass is {np.shape(self.depth)}, the camera projects onto {shape}")
        if np.ndim(self.image) != 3 or np.shape(self.image)[:2] != shape:
            raise ValueError(f"the image is {np.shape(self.image)}, expected {shape} + (channels,)")
        object.__setattr__(self, "image", np.asarray(self.image, np.float32))
        object.__setattr__(self, "depth", np.asarray(self.depth, np.float64))
        object.__setattr__(self, "feather", feather_px(self.camera.width, self.camera.height))
        object.__setattr__(self, "_reliable", edge_distance(self.depth, self.feather))
        object.__setattr__(self, "_safe_depth", np.where(np.isfinite(self.depth), self.depth, 0.0))


def feather_px(width: int, height: int) -> int:
    """How many pixels a view fades in over at its edges (module docstring)."""
    return max(MIN_FEATHER_PX, round(FEATHER * min(width, height)))


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def edge_distance(depth: np.ndarray, reach: int) -> np.ndarray:
    """Per pixel (rows bottom-up): how many pixels (chessboard distance, capped at ``reach``) to
    the nearest depth discontinuity or background pixel."""
    depth = np.asarray(depth, np.float64)
    background = ~(np.isfinite(depth) & (depth < BACKGROUND_DEPTH))
    # 1 / planar depth is affine across the image of a plane: its second difference is zero on any
    # flat surface, however slanted, small on curved ones, and large where one surface ends in front
    # of another.
    inverse = np.where(background, 0.0, 1.0 / np.where(background, 1.0, depth))
    padded = np.pad(inverse, 1, mode="edge")
    height, width = depth.shape
    centre = padded[1:-1, 1:-1]
    curvature = np.maximum(np.abs(padded[1:-1, 2:] - 2 * centre + padded[1:-1, :-2]),
                           np.abs(padded[2:, 1:-1] - 2 * centre + padded[:-2, 1:-1]))
    edge = (curvature > DISCONTINUITY * centre) | background
    distance = np.full(depth.shape, float(reach))
    front = edge
    for step in range(reach):
        distance[front & (distance > step)] = step
        padded = np.pad(front, 1)
        front = np.zeros_like(front)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                front |= padded[1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
    return distance


def sample_bilinear(image: np.ndarray, pixel: np.ndarray) -> np.ndarray:
    """(N, C) samples of ``image`` ((H, W, C), rows bottom-up) at continuous pixel coordinates
    ((N, 2), x right, y up; texel centres at i + 0.5), clamped at the border — what an Image
    Texture node with Linear interpolation does."""
    height, width = image.shape[:2]
    x = np.clip(pixel[:, 0] - 0.5, 0, width - 1)
    y = np.clip(pixel[:, 1] - 0.5, 0, height - 1)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def _depth_limit(depth: np.ndarray, pixel: np.ndarray) -> np.ndarray:
    """The largest depth among the 2×2 pixel centres around each continuous ``pixel``: a slanted
    surface's depth changes within a pixel by more than any fixed tolerance, and a point that passes
    only by this leeway lies within a pixel of a silhouette, where the edge factor already weighs
    it near zero."""
    height, width = depth.shape
    x0 = np.clip(np.floor(pixel[:, 0] - 0.5).astype(np.int64), 0, width - 1)
    y0 = np.clip(np.floor(pixel[:, 1] - 0.5).astype(np.int64), 0, height - 1)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    return np.maximum.reduce([depth[y0, x0], depth[y0, x1], depth[y1, x0], depth[y1, x1]])


def _weigh(view: View, points: np.ndarray, normals: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N,) weights, and the indices of the points with weight > 0 with their pixel coordinates.
    The camera transform runs once per point, and only for points turned towards the camera."""
    camera = view.camera
    weight = np.zeros(len(points))
    facing = np.clip((facing_cosine(normals, points, camera) - GRAZING) / (1.0 - GRAZING), 0.0, 1.0)
    index = np.flatnonzero(facing > 0)
    clip = camera.clip(points[index])
    w = clip[:, 3]
    ahead = w > MIN_CLIP_W
    index, clip, w = index[ahead], clip[ahead], w[ahead]
    uv = (clip[:, :2] / w[:, None] + 1.0) * 0.5
    inside = np.all((uv >= 0.0) & (uv <= 1.0), axis=1)
    index, uv = index[inside], uv[inside]
    pixel = uv * np.array([camera.width, camera.height], dtype=np.float64)
    own = camera.planar_depth(points[index])
    seen = own <= _depth_limit(view._safe_depth, pixel) * (1.0 + DEPTH_TOLERANCE)  # type: ignore[attr-defined]
    index, pixel = index[seen], pixel[seen]
    border = np.minimum.reduce([pixel[:, 0], pixel[:, 1], camera.width - pixel[:, 0], camera.height - pixel[:, 1]])
    reliable = sample_nearest(view._reliable, pixel)  # type: ignore[attr-defined]
    edge = _smoothstep(np.minimum(border, reliable + 0.5) / view.feather)  # type: ignore[attr-defined]
    weight[index] = facing[index] * edge
    positive = weight[index] > 0
    return weight, index[positive], pixel[positive]


def view_weights(view: View, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """(N,) weight of ``view`` at world ``points`` with unit ``normals`` (module docstring)."""
    points = np.asarray(points, np.float64).reshape(-1, 3)
    return _weigh(view, points, np.asarray(normals, np.float64).reshape(-1, 3))[0]


@dataclass(frozen=True)
class Blend:
    """Blended colours at N points: ``colour`` (N, C), the total ``weight`` (N,) (0: unseen) and
    each view's ``weights`` (V, N) and ``samples`` (V, N, C), for measurements."""

    colour: np.ndarray
    weight: np.ndarray
    weights: np.ndarray
    samples: np.ndarray

    @property
    def seen(self) -> np.ndarray:
        return self.weight > 0


def blend(views: Sequence[View], points: np.ndarray, normals: np.ndarray) -> Blend:
    """The weighted mean of the ``views`` at world ``points`` with unit ``normals``."""
    points = np.asarray(points, np.float64).reshape(-1, 3)
    normals = np.asarray(normals, np.float64).reshape(-1, 3)
    if not views:
        raise ValueError("blending needs at least one view")
    channels = views[0].image.shape[2]
    weights = np.zeros((len(views), len(points)))
    samples = np.zeros((len(views), len(points), channels), np.float32)
    for index, view in enumerate(views):
        if view.image.shape[2] != channels:
            raise ValueError("every view's image must have the same number of channels")
        weights[index], hit, pixel = _weigh(view, points, normals)
        if len(hit):
            samples[index, hit] = sample_bilinear(view.image, pixel)
    total = weights.sum(axis=0)
    colour = np.einsum("vn,vnc->nc", weights, samples) / np.where(total > 0, total, 1.0)[:, None]
    return Blend(colour.astype(np.float32), total, weights, samples)


def depth_normals(camera: CameraProjection, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points (H, W, 3) behind every pixel of a depth pass (rows bottom-up) and unit normals
    estimated from their neighbours (central differences, turned towards the camera). Background
    pixels get NaN points and zero normals."""
    height, width = depth.shape
    points = camera.unproject(camera.pixel_centres().reshape(-1, 2), depth.reshape(-1)).reshape(height, width, 3)
    background = ~(np.isfinite(depth) & (depth < BACKGROUND_DEPTH))
    points[background] = np.nan
    padded = np.pad(points, ((1, 1), (1, 1), (0, 0)), mode="edge")
    dx = padded[1:-1, 2:] - padded[1:-1, :-2]
    dy = padded[2:, 1:-1] - padded[:-2, 1:-1]
    # One-sided differences where a neighbour is background or across a discontinuity.
    dx = np.where(np.isfinite(dx), dx, np.nan_to_num(padded[1:-1, 2:] - points) + np.nan_to_num(points - padded[1:-1, :-2]))
    dy = np.where(np.isfinite(dy), dy, np.nan_to_num(padded[2:, 1:-1] - points) + np.nan_to_num(points - padded[:-2, 1:-1]))
    normals = np.cross(dx, dy)
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    normals = np.divide(normals, length, out=np.zeros_like(normals), where=np.isfinite(length) & (length > 0))
    towards = (camera.position - np.nan_to_num(points)) if not camera.orthographic else -camera.forward
    flip = np.einsum("hwc,hwc->hw", normals, np.broadcast_to(towards, normals.shape)) < 0
    normals[flip] *= -1
    normals[background] = 0.0
    return points, normals


def reproject(views: Sequence[View], camera: CameraProjection, depth: np.ndarray,
              fill: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The start image and inpainting mask of a new view (``camera`` and its depth pass, rows
    bottom-up) from the ``views`` done so far.

    Returns ``(image, mask)``: image (H, W, C) float, rows bottom-up — what the earlier views
    textured, blended, seen from the new camera, and ``fill`` grey where they saw nothing; mask
    (H, W) uint8 — 0 where a pixel is already textured (total weight ≥ :data:`KNOWN_WEIGHT`),
    255 elsewhere (new surface, and the background)."""
    height, width = depth.shape
    points, normals = depth_normals(camera, np.asarray(depth, np.float64))
    channels = views[0].image.shape[2] if views else 4
    image = np.full((height * width, channels), fill, np.float32)
    mask = np.full(height * width, 255, np.uint8)
    foreground = np.isfinite(points.reshape(-1, 3)).all(axis=1)
    if views and foreground.any():
        result = blend(views, points.reshape(-1, 3)[foreground], normals.reshape(-1, 3)[foreground])
        known = result.weight >= KNOWN_WEIGHT
        index = np.flatnonzero(foreground)[known]
        image[index] = result.colour[known]
        mask[index] = 0
    return image.reshape(height, width, channels), mask.reshape(height, width)
