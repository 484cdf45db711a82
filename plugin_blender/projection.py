"""Camera projection math for projecting a generated image onto meshes. No ``bpy`` here.

A :class:`CameraProjection` is a camera frozen at one moment: Blender's world→camera matrix
(``camera.matrix_world.inverted()``) and camera→clip matrix (``camera.calc_matrix_camera(...)``,
OpenGL conventions: the camera looks down −Z, clip ``w`` is the planar depth for a perspective
camera and 1 for an orthographic one) for an image of ``width`` × ``height`` pixels.

Image conventions follow Blender: UV (0, 0) is the bottom-left corner of the image, (1, 1) the
top-right; pixel coordinates run right and *up* from the bottom-left corner, so pixel (column c,
row r counted from the bottom) has its centre at ``(c + 0.5, r + 0.5)`` — the same order as
``Image.pixels`` and the rows of a rendered pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Clip ``w`` at or below this counts as behind the camera (no projection exists there).
MIN_CLIP_W = 1e-6


def _matrix(value: Any, name: str) -> np.ndarray:
    matrix = np.array(value, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"{name} must be a 4x4 matrix, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{name} holds a non-finite number: {matrix.tolist()}")
    return matrix


def _points(points: Any) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"points must be an (N, 3) array, got shape {array.shape}")
    return array


@dataclass(frozen=True, eq=False)
class CameraProjection:
    """World → camera → clip → NDC → UV for one camera and image size.

    Raises ``ValueError`` when a matrix is not 4×4 and finite, the view cannot be inverted, or the
    size is not positive.
    """

    view: np.ndarray
    projection: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        view = _matrix(self.view, "view")
        projection = _matrix(self.projection, "projection")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        if abs(np.linalg.det(view[:3, :3])) < 1e-12:
            raise ValueError("the view matrix cannot be inverted (a camera scaled to zero?)")
        object.__setattr__(self, "view", view)
        object.__setattr__(self, "projection", projection)

    # -- the camera itself

    @property
    def orthographic(self) -> bool:
        """True for an orthographic camera (clip ``w`` does not depend on depth)."""
        return bool(abs(self.projection[3, 2]) < 1e-12 and abs(self.projection[3, 3] - 1.0) < 1e-12)

    @property
    def position(self) -> np.ndarray:
        """The camera's origin in world space."""
        return np.linalg.inv(self.view)[:3, 3]

    @property
    def forward(self) -> np.ndarray:
        """The unit direction the camera looks along, in world space (its −Z axis)."""
        axis = -np.linalg.inv(self.view)[:3, 2]
        return axis / np.linalg.norm(axis)

    # -- points

    def to_camera(self, points: Any) -> np.ndarray:
        """(N, 3) world points in camera space (the camera looks down −Z)."""
        pts = _points(points)
        return pts @ self.view[:3, :3].T + self.view[:3, 3]

    def planar_depth(self, points: Any) -> np.ndarray:
        """Distance of each point in front of the camera along its view axis — what Cycles and
        Workbench write into the Z pass. Negative behind the camera."""
        return -self.to_camera(points)[:, 2]

    def clip(self, points: Any) -> np.ndarray:
        """(N, 4) homogeneous clip coordinates. Linear in the world position, so they interpolate
        exactly across a triangle (unlike UVs, which need the divide by ``w`` first)."""
        cam = self.to_camera(points)
        return cam @ self.projection[:, :3].T + self.projection[:, 3]

    def homogeneous_uv(self, points: Any) -> np.ndarray:
        """(N, 3) ``(u·w, v·w, w)``: the UV before the perspective divide.

        Interpolate these linearly (as a renderer does with a mesh attribute) and divide the first
        two by the third, and you get the exact projected UV at every point of a face — no affine
        warping on large faces seen at an angle.
        """
        clip = self.clip(points)
        w = clip[:, 3]
        return np.stack([(clip[:, 0] + w) * 0.5, (clip[:, 1] + w) * 0.5, w], axis=1)

    def in_front(self, points: Any) -> np.ndarray:
        """Boolean (N,): the point is in front of the camera, where a projection exists."""
        return self.clip(points)[:, 3] > MIN_CLIP_W

    def uv(self, points: Any) -> np.ndarray:
        """(N, 2) projected UV (0..1 inside the frame). Points behind the camera get NaN."""
        clip = self.clip(points)
        w = clip[:, 3]
        ahead = w > MIN_CLIP_W
        safe = np.where(ahead, w, 1.0)
        uv = np.stack([(clip[:, 0] / safe + 1.0) * 0.5, (clip[:, 1] / safe + 1.0) * 0.5], axis=1)
        uv[~ahead] = np.nan
        return uv

    def pixel(self, points: Any) -> np.ndarray:
        """(N, 2) continuous pixel coordinates (x right, y up from the bottom-left corner)."""
        return self.uv(points) * np.array([self.width, self.height], dtype=np.float64)

    def in_frame(self, points: Any) -> np.ndarray:
        """Boolean (N,): in front of the camera and inside the image."""
        uv = self.uv(points)
        with np.errstate(invalid="ignore"):
            return np.all((uv >= 0.0) & (uv <= 1.0), axis=1)

    # -- rays (the inverse direction, for tests and sampling)

    def pixel_centres(self) -> np.ndarray:
        """(height, width, 2) UV of every pixel centre, rows bottom-up."""
        u = (np.arange(self.width) + 0.5) / self.width
        v = (np.arange(self.height) + 0.5) / self.height
        uu, vv = np.meshgrid(u, v)
        return np.stack([uu, vv], axis=-1)

    def unproject(self, uv: Any, depth: Any) -> np.ndarray:
        """World points at planar ``depth`` behind the image points ``uv`` ((N, 2) and (N,))."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        depth = np.asarray(depth, dtype=np.float64).reshape(-1)
        ndc = uv * 2.0 - 1.0
        inverse = np.linalg.inv(self.projection)
        # A point on the ray at the near plane (ndc z = -1), then scaled to the wanted depth.
        clip = np.concatenate([ndc, -np.ones((len(ndc), 1)), np.ones((len(ndc), 1))], axis=1)
        cam = clip @ inverse.T
        cam = cam[:, :3] / cam[:, 3:4]
        if self.orthographic:
            cam[:, 2] = -depth
        else:
            cam = cam * (depth / -cam[:, 2])[:, None]
        world = np.linalg.inv(self.view)
        return cam @ world[:3, :3].T + world[:3, 3]

    # -- serialisation (kept with a job so its result is projected with the camera it was made for)

    def to_dict(self) -> dict[str, Any]:
        return {"view": self.view.tolist(), "projection": self.projection.tolist(),
                "width": self.width, "height": self.height}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CameraProjection":
        return cls(np.array(data["view"]), np.array(data["projection"]), int(data["width"]), int(data["height"]))
