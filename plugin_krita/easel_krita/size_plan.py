"""Big canvases: generate at the model's size, then refine up to the area. No host, no Qt.

A model draws well near its native area (768² for SD 2, 1024² for SDXL) and poorly far from it.
Generate on a 4000×3000 canvas therefore makes a 768×576 picture first and then grows it to the
area through the server's tiled upscale (``upscale`` task: Lanczos, then img2img over overlapping
tiles, so detail is painted at the new size instead of stretched). The painter is told the plan
("768×576, then ×5.2 in 2 tiled passes") before anything is sent; there is never a silent stretch.

:func:`plan_size` decides; :class:`SizePlan` carries the decision and says it in a sentence.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .geometry import generation_size, scaled_size

#: The area ratio (region / first pass) above which the result is refined up instead of stretched:
#: below it the region is within ~1.4× per side of what the model drew and a resample is invisible.
REFINE_ABOVE_AREA = 2.0
#: The reference server's upscale task: factor 1..4 per job, a result of at most 4096² pixels.
MAX_PASS_FACTOR = 4.0
MAX_PASS_PIXELS = 4096 * 4096
#: A final resample below this (the passes' rounding, a slightly different aspect) is not worth a word.
NOTICEABLE_STRETCH = 1.05
#: Default largest side the plan works at (the settings dialog's "largest working size").
DEFAULT_LARGEST_SIDE = 4096


@dataclass(frozen=True, slots=True)
class SizePlan:
    """How a ``region`` (canvas pixels) is made: a first image at ``first``, then each factor of
    ``passes`` in turn through the tiled upscale, giving ``final``; ``final`` is placed over the
    region (a small resample when the two differ, named by :attr:`stretch`)."""

    region: tuple[int, int]
    first: tuple[int, int]
    passes: tuple[float, ...]
    final: tuple[int, int]

    @property
    def refines(self) -> bool:
        """Whether the plan has upscale passes after the first image."""
        return bool(self.passes)

    @property
    def factor(self) -> float:
        """How much larger ``final`` is than ``first`` (width)."""
        return self.final[0] / self.first[0]

    @property
    def stretch(self) -> float:
        """How much the final image is resampled to cover the region (1.0: pixel for pixel)."""
        return max(self.region[0] / self.final[0], self.region[1] / self.final[1])

    def sizes(self) -> list[tuple[int, int]]:
        """The image size after the first pass and after each upscale pass."""
        out = [self.first]
        for factor in self.passes:
            out.append(scaled_size(*out[-1], factor))
        return out

    def describe(self) -> str:
        """The plan in the painter's words, e.g. ``"768×576, then ×5.2 in 2 tiled passes"``."""
        first = f"{self.first[0]}×{self.first[1]}"
        if not self.passes:
            if self.stretch > NOTICEABLE_STRETCH:
                return f"{first}, scaled ×{self.stretch:.1f} to the {self.region[0]}×{self.region[1]} area"
            return first
        passes = "a tiled pass" if len(self.passes) == 1 else f"{len(self.passes)} tiled passes"
        text = f"{first}, then ×{self.factor:.1f} in {passes}"
        if self.stretch > NOTICEABLE_STRETCH:
            text += (f" to {self.final[0]}×{self.final[1]}, scaled ×{self.stretch:.1f} to the "
                     f"{self.region[0]}×{self.region[1]} area (largest working size)")
        return text


def plan_size(width: int, height: int, native: int, *, largest_side: int = DEFAULT_LARGEST_SIDE,
              max_pass_factor: float = MAX_PASS_FACTOR, max_pixels: int = MAX_PASS_PIXELS) -> SizePlan:
    """The plan for a ``width`` × ``height`` region and a model trained at ``native``² pixels.

    The first image is :func:`geometry.generation_size`. When the region's area is more than
    :data:`REFINE_ABOVE_AREA` times that, upscale passes (each at most ``max_pass_factor``, all
    equal) grow it to the region, capped at ``largest_side`` per side and ``max_pixels`` in all
    (the working size); anything beyond that cap is a final resample that :meth:`SizePlan.describe`
    names. Raises ``ValueError`` for a non-positive size or limit.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"a region must have a positive size, got {width}x{height}")
    if largest_side < 64 or max_pass_factor <= 1 or max_pixels < 64 * 64:
        raise ValueError("the largest working size must be at least 64 pixels and a pass must enlarge")
    first = generation_size(width, height, native)
    if width * height <= REFINE_ABOVE_AREA * first[0] * first[1]:
        return SizePlan((width, height), first, (), first)
    cap = min(1.0, largest_side / max(width, height), math.sqrt(max_pixels / (width * height)))
    target_width = max(first[0], math.floor(width * cap))
    total = target_width / first[0]
    if total <= 1.0 + 1e-9:  # the working size is no larger than the first image: nothing to refine
        return SizePlan((width, height), first, (), first)
    count = max(1, math.ceil(math.log(total) / math.log(max_pass_factor) - 1e-9))
    factor = total ** (1.0 / count)
    passes = tuple(factor for _ in range(count))
    size = first
    for step in passes:
        size = scaled_size(*size, step)
    while size[0] * size[1] > max_pixels or max(size) > largest_side:  # rounding crept over a cap
        passes = passes[:-1] + (passes[-1] * 0.995,)
        size = first
        for step in passes:
            size = scaled_size(*size, step)
    return SizePlan((width, height), first, passes, size)
