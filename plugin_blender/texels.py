"""A mesh's UV layout as texels: which texel lies on which surface point, and filling the texels
no view saw. No ``bpy`` here.

:func:`rasterize` walks the mesh's triangles in UV space and, for every texel whose centre lies in
a triangle, interpolates the triangle's world positions and normals at that centre (barycentric
coordinates in UV space are exactly the ones on the surface: a UV map is piecewise linear). The
texture is square, ``size`` × ``size``, rows bottom-up like Blender's ``Image.pixels``; texel
(column c, row r) has its centre at UV ``((c + 0.5) / size, (r + 0.5) / size)``.

:func:`fill` gives unseen texels a colour: first ``margin`` rounds of dilation (each unseen texel
next to seen ones takes their mean, so UV island borders bleed outwards and filtering at seams
finds colour), then a push-pull pyramid for the rest (means of ever coarser blocks of seen texels, brought back
with bilinear upsampling: smooth, no blocks), so nothing stays black.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Texel centres this close outside a triangle (in barycentric units) still count as inside, so
#: texels on a shared edge are not lost to rounding.
EDGE_EPSILON = 1e-6
#: Rounds of dilation before the pyramid fill: the bake's margin around UV islands, in texels.
MARGIN = 8


@dataclass(frozen=True)
class Texels:
    """The texels that lie on the surface: ``index`` (M,) into the flattened ``size`` × ``size``
    texture (row-major, rows bottom-up), their world ``points`` (M, 3) and unit ``normals`` (M, 3)."""

    size: int
    index: np.ndarray
    points: np.ndarray
    normals: np.ndarray

    @property
    def covered(self) -> np.ndarray:
        """(size, size) bool: the texel lies on some triangle."""
        out = np.zeros(self.size * self.size, bool)
        out[self.index] = True
        return out.reshape(self.size, self.size)


def rasterize(uvs: np.ndarray, points: np.ndarray, normals: np.ndarray, size: int) -> Texels:
    """Texels of triangles given per corner: ``uvs`` (T, 3, 2), world ``points`` (T, 3, 3) and
    ``normals`` (T, 3, 3). A texel covered by several triangles (overlapping UVs) keeps the last.
    Raises ``ValueError`` on mismatched shapes or a size below 1."""
    uvs = np.asarray(uvs, np.float64)
    points = np.asarray(points, np.float64)
    normals = np.asarray(normals, np.float64)
    if size < 1:
        raise ValueError(f"the texture size must be at least 1, got {size}")
    if uvs.ndim != 3 or uvs.shape[1:] != (3, 2) or points.shape != (len(uvs), 3, 3) or normals.shape != points.shape:
        raise ValueError(f"expected (T, 3, 2) UVs and (T, 3, 3) points and normals, got {uvs.shape}, "
                         f"{points.shape}, {normals.shape}")
    found = np.full(size * size, -1, np.int64)
    weights = np.zeros((size * size, 3))
    texel = uvs * size - 0.5  # texel centres at integers
    for tri in range(len(uvs)):
        (x0, y0), (x1, y1), (x2, y2) = texel[tri]
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        if abs(area) < 1e-12:
            continue
        left, right = max(int(np.ceil(min(x0, x1, x2))), 0), min(int(np.floor(max(x0, x1, x2))), size - 1)
        bottom, top = max(int(np.ceil(min(y0, y1, y2))), 0), min(int(np.floor(max(y0, y1, y2))), size - 1)
        if left > right or bottom > top:
            continue
        xs, ys = np.meshgrid(np.arange(left, right + 1, dtype=np.float64), np.arange(bottom, top + 1, dtype=np.float64))
        b1 = ((xs - x0) * (y2 - y0) - (x2 - x0) * (ys - y0)) / area
        b2 = ((x1 - x0) * (ys - y0) - (xs - x0) * (y1 - y0)) / area
        b0 = 1.0 - b1 - b2
        inside = (b0 >= -EDGE_EPSILON) & (b1 >= -EDGE_EPSILON) & (b2 >= -EDGE_EPSILON)
        if not inside.any():
            continue
        flat = (ys[inside].astype(np.int64) * size + xs[inside].astype(np.int64))
        found[flat] = tri
        weights[flat] = np.stack([b0[inside], b1[inside], b2[inside]], axis=1)
    index = np.flatnonzero(found >= 0)
    tris, bary = found[index], weights[index]
    world = np.einsum("mk,mkc->mc", bary, points[tris])
    normal = np.einsum("mk,mkc->mc", bary, normals[tris])
    length = np.linalg.norm(normal, axis=1, keepdims=True)
    normal = np.divide(normal, length, out=np.zeros_like(normal), where=length > 0)
    return Texels(size, index, world, normal)


def _neighbour_sum(values: np.ndarray) -> np.ndarray:
    """Sum over the 8 neighbours (zero outside), for (H, W) or (H, W, C) arrays: a separable 3×3
    box sum (two passes of three terms) less the centre."""
    pad = [(1, 1), (1, 1)] + [(0, 0)] * (values.ndim - 2)
    padded = np.pad(values, pad)
    rows = padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]
    return rows[:-2] + rows[1:-1] + rows[2:] - values


def fill(image: np.ndarray, known: np.ndarray, margin: int = MARGIN) -> np.ndarray:
    """``image`` (H, W, C) with every texel where ``known`` (H, W) is false given a colour (module
    docstring). Known texels are returned unchanged. An image with no known texel is returned as is."""
    image = np.asarray(image, np.float32).copy()
    known = np.asarray(known, bool).copy()
    if not known.any() or known.all():
        return image
    for _ in range(margin):
        count = _neighbour_sum(known.astype(np.float32))
        frontier = ~known & (count > 0)
        if not frontier.any():
            break
        total = _neighbour_sum(np.where(known[..., None], image, 0.0))
        image[frontier] = total[frontier] / count[frontier][:, None]
        known |= frontier
    if known.all():
        return image
    image[~known] = _pull(image, known)[~known]
    return image


def _pull(image: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Push-pull: the known texels' mean over ever coarser 2×2 blocks, brought back to full size
    by bilinear upsampling; each unknown texel gets the finest level at which its block holds a
    known texel, smoothly interpolated."""
    height, width, channels = image.shape
    if height <= 1 and width <= 1:
        return image
    weight = known.astype(np.float64)
    colour = np.where(known[..., None], image, 0.0).astype(np.float64)
    # Pad to even sizes, then average 2×2 blocks weighted by how many texels are known.
    ph, pw = height + height % 2, width + width % 2
    weight = np.pad(weight, ((0, ph - height), (0, pw - width)))
    colour = np.pad(colour, ((0, ph - height), (0, pw - width), (0, 0)))
    w = weight.reshape(ph // 2, 2, pw // 2, 2).sum(axis=(1, 3))
    c = colour.reshape(ph // 2, 2, pw // 2, 2, channels).sum(axis=(1, 3))
    coarse_known = w > 0
    coarse = np.divide(c, w[..., None], out=np.zeros_like(c), where=coarse_known[..., None]).astype(np.float32)
    if not coarse_known.all():
        coarse = np.where(coarse_known[..., None], coarse, _pull(coarse, coarse_known))
    return np.where(known[..., None], image, _upsample(coarse, height, width))


def _upsample(coarse: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear 2× upsampling of (h, w, C) to (height, width, C), texel centres aligned (no blocks)."""
    def axis(size: int, coarse_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        position = np.clip((np.arange(size) + 0.5) / 2 - 0.5, 0, coarse_size - 1)
        low = np.floor(position).astype(np.int64)
        return low, np.minimum(low + 1, coarse_size - 1), (position - low).astype(np.float32)
    y0, y1, fy = axis(height, coarse.shape[0])
    x0, x1, fx = axis(width, coarse.shape[1])
    rows = coarse[y0] * (1 - fy)[:, None, None] + coarse[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
