"""upscale: tiled SD upscale — a bigger image, with detail the model adds tile by tile.

1. Resize the image by ``upscale_factor``: with the super-resolution model of the models folders
   (``job.enlarge``, backend/upscalers.py) when there is one, else Lanczos.
2. Cut the big image into tiles of the model's native size (``width × height`` when given) that
   overlap by :func:`overlap_for` pixels, spread evenly so every tile has the same size.
3. Repaint each tile with img2img at a low strength (default 0.35: the picture stays, the detail
   sharpens), a few tiles per diffusers call (:func:`tiles_per_call`) so a GPU is kept busy without
   holding more than a couple of native-size images in memory at once.
4. Blend the tiles with feathered weights: each tile's weight ramps from ~0 at an edge it shares
   with a neighbour to 1 over the overlap, and the result is the weighted mean — no seam, because
   across any tile border the picture moves gradually from one tile's pixels to the next one's.

The alpha channel of the input is resized with it (a transparent layer stays transparent).
Steps are reported over all tiles; each preview shows the whole result with the tiles done so far.
"""
from __future__ import annotations

import math

import numpy as np

from ..imaging import Box, decode_image, resize
from ..previews import PreviewFrame
from .common import TaskRun, generate

#: Tiles repainted in one diffusers call: as many as fit in this many pixels (at least one, at most 4).
BATCH_PIXELS = 2 * 1024 * 1024
MAX_TILES_PER_CALL = 4


def run(job: TaskRun) -> list[np.ndarray]:
    p = job.params
    with job.timed("prepare"):
        source = decode_image(job.images["image"])
        width, height = p.width, p.height
        big = job.enlarge(source[..., :3], (width, height))[0] if job.enlarge else resize(source[..., :3], (width, height))
        alpha = resize(source[..., 3], (width, height))
        canvas = _pad_to_multiple(big, 8)
        calls, overlap = tile_calls(width, height, p.tile)
        per_call = len(calls[0])
        blender = TileBlender(canvas, overlap)
    from PIL import Image

    pipe = job.pipeline("img2img")
    for index, batch in enumerate(calls):
        with job.timed("prepare"):
            images = [Image.fromarray(np.ascontiguousarray(canvas[y0:y1, x0:x1])) for x0, y0, x1, y1 in batch]
            frame = PreviewFrame((width, height), box=_clip(batch[0], width, height),
                                 background=blender.image()[:height, :width])
        number = index * per_call
        seeds = [p.seed + number + i for i in range(len(batch))]  # each tile its own noise, repeatably
        rgb = generate(job, pipe, frame, seeds=seeds, call=(index, len(calls)), image=images, strength=p.strength)
        with job.timed("decode"):
            for box, pixels in zip(batch, rgb):
                blender.add(box, pixels)
    out = np.concatenate([blender.image()[:height, :width], alpha[..., None]], axis=2)
    return [np.ascontiguousarray(out)]


class TileBlender:
    """Accumulates repainted tiles over ``base`` (the resized image) as a feathered weighted mean.

    ``add(box, rgb)`` blends one tile in; ``image()`` is the result so far: the weighted mean of the
    tiles wherever one was added, ``base`` elsewhere."""

    def __init__(self, base: np.ndarray, overlap: int) -> None:
        self.base = base
        self.overlap = overlap
        self._sum = np.zeros(base.shape, np.float64)
        self._weight = np.zeros(base.shape[:2] + (1,), np.float64)

    def add(self, box: Box, rgb: np.ndarray) -> None:
        x0, y0, x1, y1 = box
        weight = feather_weights(box, self.base.shape[1], self.base.shape[0], self.overlap)[..., None]
        self._sum[y0:y1, x0:x1] += resize(rgb, (x1 - x0, y1 - y0)).astype(np.float64) * weight
        self._weight[y0:y1, x0:x1] += weight

    def image(self) -> np.ndarray:
        out = self.base.copy()
        covered = self._weight[..., 0] > 0
        out[covered] = np.clip(np.rint(self._sum[covered] / self._weight[covered]), 0, 255).astype(np.uint8)
        return out


def tile_calls(width: int, height: int, tile: tuple[int, int]) -> tuple[list[list[Box]], int]:
    """The tiles of a ``width × height`` result grouped into diffusers calls, and their overlap.

    Needs no pixels, so the engine counts the calls (and the steps they report) before the job runs.
    The tiles cover the canvas :func:`_pad_to_multiple` makes: sides rounded up to multiples of 8, at least 64.
    """
    canvas_w, canvas_h = max(64, -(-width // 8) * 8), max(64, -(-height // 8) * 8)
    tile = (min(tile[0], canvas_w), min(tile[1], canvas_h))
    overlap = overlap_for(min(tile))
    boxes = tile_boxes(canvas_w, canvas_h, tile, overlap)
    per_call = tiles_per_call(tile)
    return [boxes[i:i + per_call] for i in range(0, len(boxes), per_call)], overlap


def overlap_for(tile_side: int) -> int:
    """Pixels neighbouring tiles share: 64 for native-size tiles, a quarter of a small tile."""
    return max(8, min(64, tile_side // 4))


def tiles_per_call(tile: tuple[int, int]) -> int:
    return max(1, min(MAX_TILES_PER_CALL, BATCH_PIXELS // (tile[0] * tile[1])))


def tile_boxes(width: int, height: int, tile: tuple[int, int], overlap: int) -> list[Box]:
    """Boxes of ``tile`` size covering ``width × height``, overlapping by at least ``overlap``,
    spread evenly (row by row)."""
    xs = _positions(width, tile[0], overlap)
    ys = _positions(height, tile[1], overlap)
    return [(x, y, x + tile[0], y + tile[1]) for y in ys for x in xs]


def _positions(length: int, size: int, overlap: int) -> list[int]:
    if length <= size:
        return [0]
    count = math.ceil((length - overlap) / (size - overlap))
    return [round(i * (length - size) / (count - 1)) for i in range(count)]


def feather_weights(box: Box, width: int, height: int, overlap: int) -> np.ndarray:
    """A tile's blend weights: 1 inside, ramping (smoothstep) down toward each edge it shares with
    a neighbour over ``overlap`` pixels; edges on the image's border stay at 1. Never 0, so every
    pixel's weights sum to more than 0."""
    x0, y0, x1, y1 = box

    def ramp(length: int, start_open: bool, end_open: bool) -> np.ndarray:
        position = np.arange(length, dtype=np.float64)
        ramp_in = np.clip((position + 0.5) / overlap, 0.0, 1.0) if start_open else np.ones(length)
        ramp_out = np.clip((length - position - 0.5) / overlap, 0.0, 1.0) if end_open else np.ones(length)
        value = np.minimum(ramp_in, ramp_out)
        return value * value * (3.0 - 2.0 * value) + 1e-6

    across = ramp(x1 - x0, x0 > 0, x1 < width)
    down = ramp(y1 - y0, y0 > 0, y1 < height)
    return down[:, None] * across[None, :]


def _pad_to_multiple(rgb: np.ndarray, multiple: int) -> np.ndarray:
    """Edge-pad so both sides are multiples of ``multiple`` (and at least 64): the model's sizes."""
    height, width = rgb.shape[:2]
    pad_h = max(64, -(-height // multiple) * multiple) - height
    pad_w = max(64, -(-width // multiple) * multiple) - width
    if not pad_h and not pad_w:
        return rgb
    return np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def _clip(box: Box, width: int, height: int) -> Box:
    x0, y0, x1, y1 = box
    return min(x0, width - 1), min(y0, height - 1), min(x1, width), min(y1, height)
