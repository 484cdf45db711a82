"""Which parts of a mesh the camera saw: facing and occlusion tests against the depth pass.
No ``bpy`` here.

The same rule runs twice: here in numpy (to report what was textured, to skip objects the camera
cannot see, and in tests), and per shading point in the projection material (see
``texturing.py``), which compares the point's planar depth with the depth pass at its projected
pixel. Keep :data:`DEPTH_TOLERANCE` the one both use.

Depth passes are (height, width) arrays with rows bottom-up, as rendered.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .depth import BACKGROUND_DEPTH
from .projection import CameraProjection

#: A point counts as unoccluded when its depth is at most the depth pass's value times
#: ``1 + DEPTH_TOLERANCE`` — room for the pass being sampled at pixel centres, so a slanted surface
#: is not hidden behind itself, and small enough that a surface just behind another stays hidden.
DEPTH_TOLERANCE = 0.005

#: Faces whose normal is closer than this cosine to perpendicular to the view are not facing
#: (0 = anything turned towards the camera at all).
MIN_FACING_COSINE = 0.0


def transform_points(matrix: Any, points: Any) -> np.ndarray:
    """(N, 3) ``points`` transformed by the 4×4 affine ``matrix``."""
    m = np.asarray(matrix, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return p @ m[:3, :3].T + m[:3, 3]


def transform_normals(matrix: Any, normals: Any) -> np.ndarray:
    """(N, 3) unit normals transformed by the inverse transpose of ``matrix`` (right under
    non-uniform scale). Zero normals (degenerate faces) stay zero."""
    m = np.asarray(matrix, dtype=np.float64)[:3, :3]
    n = np.asarray(normals, dtype=np.float64).reshape(-1, 3) @ np.linalg.inv(m)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return np.divide(n, length, out=np.zeros_like(n), where=length > 0)


def facing_cosine(normals: Any, points: Any, camera: CameraProjection) -> np.ndarray:
    """(N,) cosine between world-space unit ``normals`` at ``points`` and the direction to the camera.

    Perspective cameras look from their position; orthographic ones along their axis.
    """
    normals = np.asarray(normals, dtype=np.float64).reshape(-1, 3)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if camera.orthographic:
        to_camera = np.broadcast_to(-camera.forward, points.shape)
    else:
        to_camera = camera.position - points
    length = np.linalg.norm(to_camera, axis=1)
    return np.einsum("ij,ij->i", normals, to_camera) / np.where(length > 0, length, 1.0)


def facing(normals: Any, centres: Any, camera: CameraProjection,
           min_cosine: float = MIN_FACING_COSINE) -> np.ndarray:
    """Boolean (F,): the face (world-space unit ``normals`` and ``centres``) turns towards the camera."""
    return facing_cosine(normals, centres, camera) > min_cosine


def sample_nearest(image: np.ndarray, pixel: Any) -> np.ndarray:
    """Values of a (height, width) ``image`` (rows bottom-up) at continuous ``pixel`` coordinates
    ((N, 2), x right, y up), nearest texel — the depth texture's 'Closest' lookup. NaN outside."""
    image = np.asarray(image)
    height, width = image.shape
    pixel = np.asarray(pixel, dtype=np.float64).reshape(-1, 2)
    out = np.full(len(pixel), np.nan)
    with np.errstate(invalid="ignore"):
        inside = np.all(np.isfinite(pixel), axis=1) & (pixel[:, 0] >= 0) & (pixel[:, 1] >= 0) \
            & (pixel[:, 0] <= width) & (pixel[:, 1] <= height)
    cols = np.clip(np.floor(pixel[inside, 0]).astype(np.int64), 0, width - 1)
    rows = np.clip(np.floor(pixel[inside, 1]).astype(np.int64), 0, height - 1)
    out[inside] = image[rows, cols]
    return out


def unoccluded(points: Any, camera: CameraProjection, depth_pass: np.ndarray,
               tolerance: float = DEPTH_TOLERANCE) -> np.ndarray:
    """Boolean (N,): the world point lies inside the frame, in front of the camera, and no
    nearer surface in ``depth_pass`` hides it."""
    depth_pass = np.asarray(depth_pass)
    if depth_pass.shape != (camera.height, camera.width):
        raise ValueError(f"the depth pass is {depth_pass.shape[1]}x{depth_pass.shape[0]} but the camera "
                         f"projects onto {camera.width}x{camera.height}")
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    seen = sample_nearest(depth_pass, camera.pixel(points))
    own = camera.planar_depth(points)
    with np.errstate(invalid="ignore"):
        return camera.in_front(points) & camera.in_frame(points) & np.isfinite(seen) \
            & (own <= seen * (1.0 + tolerance))


@dataclass(frozen=True)
class FaceVisibility:
    """Per-face verdicts for one mesh (world space)."""

    facing: np.ndarray       # bool (F,): turned towards the camera
    seen: np.ndarray         # bool (F,): facing, and some sample of it is unoccluded in the frame

    @property
    def seen_count(self) -> int:
        return int(self.seen.sum())


def face_visibility(corner_points: np.ndarray, corner_faces: np.ndarray, normals: np.ndarray,
                    centres: np.ndarray, camera: CameraProjection, depth_pass: np.ndarray,
                    tolerance: float = DEPTH_TOLERANCE) -> FaceVisibility:
    """Which faces the camera saw.

    ``corner_points`` (C, 3) are the world positions of every face corner and ``corner_faces`` (C,)
    the face each belongs to; ``normals``/``centres`` (F, 3) are per face, world space. A face is
    seen when it is facing and its centre or any corner (pulled 1 % towards the centre, so an edge
    shared with an occluder does not decide it) passes :func:`unoccluded`.
    """
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
    corner_faces = np.asarray(corner_faces, dtype=np.int64).reshape(-1)
    corners = np.asarray(corner_points, dtype=np.float64).reshape(-1, 3)
    faces_facing = facing(normals, centres, camera)
    pulled = corners + (centres[corner_faces] - corners) * 0.01
    seen = unoccluded(centres, camera, depth_pass, tolerance).copy()
    corner_seen = unoccluded(pulled, camera, depth_pass, tolerance)
    np.logical_or.at(seen, corner_faces[corner_seen], True)
    return FaceVisibility(faces_facing, faces_facing & seen)


def background_mask(depth_pass: np.ndarray) -> np.ndarray:
    """Boolean mask of pixels where the camera saw nothing."""
    depth_pass = np.asarray(depth_pass)
    with np.errstate(invalid="ignore"):
        return ~(np.isfinite(depth_pass) & (depth_pass < BACKGROUND_DEPTH))
