"""Canvas geometry with no host: rectangles, the region a job covers, generation sizes, where a
preview or a result lands, and how an expanded canvas relates to the old one.

Coordinates are document pixels, x to the right and y down, origin at the canvas's top-left
corner (Krita's convention). Every function here is pure and cheap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rect:
    """An axis-aligned rectangle; ``width``/``height`` may be 0 (an empty rectangle)."""

    x: int
    y: int
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.width < 0 or self.height < 0:
            raise ValueError(f"a rectangle cannot have a negative size, got {self.width}x{self.height}")

    @property
    def right(self) -> int:
        """One past the last column."""
        return self.x + self.width

    @property
    def bottom(self) -> int:
        """One past the last row."""
        return self.y + self.height

    @property
    def empty(self) -> bool:
        return self.width == 0 or self.height == 0

    @property
    def area(self) -> int:
        return self.width * self.height

    def intersect(self, other: "Rect") -> "Rect":
        """The overlap of the two; an empty rectangle (at ``self``'s corner) when they do not meet."""
        x0, y0 = max(self.x, other.x), max(self.y, other.y)
        x1, y1 = min(self.right, other.right), min(self.bottom, other.bottom)
        if x1 <= x0 or y1 <= y0:
            return Rect(self.x, self.y, 0, 0)
        return Rect(x0, y0, x1 - x0, y1 - y0)

    def pad(self, pixels: int) -> "Rect":
        """Grown by ``pixels`` on every side (shrunk when negative, never below empty)."""
        width = max(0, self.width + 2 * pixels)
        height = max(0, self.height + 2 * pixels)
        return Rect(self.x - pixels, self.y - pixels, width, height)

    def translate(self, dx: int, dy: int) -> "Rect":
        return Rect(self.x + dx, self.y + dy, self.width, self.height)

    def contains(self, other: "Rect") -> bool:
        return self.x <= other.x and self.y <= other.y and other.right <= self.right and other.bottom <= self.bottom

    def relative_to(self, outer: "Rect") -> "Rect":
        """This rectangle in ``outer``'s coordinates (``outer``'s corner becomes the origin)."""
        return Rect(self.x - outer.x, self.y - outer.y, self.width, self.height)

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.width, self.height)

    @classmethod
    def of_size(cls, width: int, height: int) -> "Rect":
        return cls(0, 0, width, height)


class RegionError(ValueError):
    """The selection or canvas cannot be turned into a job (empty, outside the canvas). The message
    says what the painter should do."""


def job_region(canvas: Rect, selection: Rect | None, context: int = 0) -> Rect:
    """The canvas area a job reads and writes.

    Without a selection that is the whole canvas. With one it is the selection's bounds grown by
    ``context`` pixels (the surroundings an inpaint needs to match), clipped to the canvas.
    Raises :class:`RegionError` when the selection does not touch the canvas.
    """
    if canvas.empty:
        raise RegionError("the canvas is empty; open or create an image first")
    if selection is None:
        return canvas
    inside = selection.intersect(canvas)
    if inside.empty:
        raise RegionError("the selection lies outside the canvas; select an area on the image or deselect all")
    return inside.pad(max(0, context)).intersect(canvas)


def generation_size(width: int, height: int, native: int, multiple: int = 8,
                    min_side: int = 64, max_side: int = 2048) -> tuple[int, int]:
    """The size to generate at for a ``width`` x ``height`` region with a model trained at
    ``native`` x ``native`` pixels.

    Models draw well near their native area and poorly far from it, so the region is scaled (keeping
    its aspect) to about ``native``² pixels, each side rounded to ``multiple`` and kept within
    ``min_side``..``max_side`` (the server's limits for txt2img sizes). Regions within a factor of 1.5 of the native area keep their own size (rounded up),
    so a selection the size the model likes is generated 1:1 and lands without resampling.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"a region must have a positive size, got {width}x{height}")
    if native <= 0 or multiple <= 0:
        raise ValueError("native size and multiple must be positive")
    area, target = width * height, native * native
    scale = 1.0 if target / 1.5 <= area <= target * 1.5 else math.sqrt(target / area)

    def side(value: int) -> int:
        scaled = value * scale
        rounded = int(math.ceil(scaled / multiple - 1e-9)) * multiple
        low = int(math.ceil(min_side / multiple)) * multiple
        return max(low, min(rounded, max_side // multiple * multiple))

    return side(width), side(height)


def fit_inside(width: int, height: int, box_width: int, box_height: int) -> tuple[int, int]:
    """The largest size with ``width:height``'s aspect that fits in the box (at least 1x1)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"cannot fit an image of {width}x{height}")
    scale = min(box_width / width, box_height / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass(frozen=True, slots=True)
class Margins:
    """Pixels added on each side of the canvas by Expand (mirrors ``protocol.Margins``)."""

    left: int = 0
    top: int = 0
    right: int = 0
    bottom: int = 0

    def __post_init__(self) -> None:
        if min(self.left, self.top, self.right, self.bottom) < 0:
            raise ValueError("margins cannot be negative")

    @property
    def empty(self) -> bool:
        return not (self.left or self.top or self.right or self.bottom)


def expanded_canvas(canvas: Rect, margins: Margins) -> Rect:
    """The canvas after Expand, in the *new* canvas's coordinates (origin at its top-left).

    Existing content moves by ``(margins.left, margins.top)``: :func:`expand_offset`.
    """
    if margins.empty:
        raise RegionError("all four margins are 0; set how many pixels to add on at least one side")
    return Rect(0, 0, canvas.width + margins.left + margins.right, canvas.height + margins.top + margins.bottom)


def expand_offset(margins: Margins) -> tuple[int, int]:
    """How far every existing layer moves when the canvas grows by ``margins``."""
    return margins.left, margins.top


def resize_arguments(canvas: Rect, margins: Margins) -> tuple[int, int, int, int]:
    """Arguments for Krita's ``Document.resizeImage(x, y, w, h)`` that grow the canvas by
    ``margins`` without moving content relative to itself: the new canvas starts at
    ``(-left, -top)`` of the old one."""
    grown = expanded_canvas(canvas, margins)
    return -margins.left, -margins.top, grown.width, grown.height


def scaled_size(width: int, height: int, factor: float) -> tuple[int, int]:
    """``width`` x ``height`` scaled by ``factor``, rounded as the server rounds an upscale's
    result (Python's ``round``), at least 1x1."""
    return max(1, round(width * factor)), max(1, round(height * factor))


def scaled_rect(rect: Rect, factor: float) -> Rect:
    """Where ``rect`` lands on a canvas scaled by ``factor``: its corner scaled, and the size of
    an upscale of its pixels (:func:`scaled_size`). On the scaled canvas it may reach one pixel
    past the edge; callers clip it."""
    width, height = scaled_size(rect.width, rect.height, factor)
    return Rect(round(rect.x * factor), round(rect.y * factor), width, height)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a job's images land on the canvas.

    ``region`` is what the job covers: the image sent (Refine, Fill) and the area its result
    and previews describe, whatever their pixel size. ``crop`` is the part of ``region`` written
    to the canvas: the selection's bounds (a result is masked to the selection inside it), or the
    whole region without a selection. Fill sends context around the selection but writes only
    the selection.
    """

    region: Rect
    crop: Rect

    def __post_init__(self) -> None:
        if self.region.empty or not self.region.contains(self.crop) or self.crop.empty:
            raise ValueError(f"the crop {self.crop} must be a non-empty part of the region {self.region}")

    @classmethod
    def for_job(cls, region: Rect, selection: Rect | None) -> "Placement":
        crop = region if selection is None else selection.intersect(region)
        if crop.empty:
            raise RegionError("the selection lies outside the area being generated; select an area on the image")
        return cls(region, crop)

    @property
    def crop_in_region(self) -> Rect:
        """``crop`` in the region's own pixel coordinates (a result at the region's size)."""
        return self.crop.relative_to(self.region)

    def needs_scaling(self, width: int, height: int) -> bool:
        """Whether an image of this size must be resampled to cover the region pixel for pixel."""
        return (width, height) != (self.region.width, self.region.height)


class PreviewThrottle:
    """Decides which step previews to draw so drawing never takes over the main thread.

    Drawing a preview costs the main thread time that grows with the selection (decode, scale,
    write the layer). After a draw that took ``d`` seconds the next one waits at least
    ``d * (1 / budget - 1)``, so previews use at most ``budget`` of the main thread; the newest
    preview always wins (older ones are simply skipped, they are stale).
    """

    def __init__(self, budget: float = 0.25, min_interval: float = 0.0) -> None:
        if not 0 < budget <= 1:
            raise ValueError("budget must be in (0, 1]")
        self.budget = budget
        self.min_interval = min_interval
        self._next_allowed = float("-inf")

    def ready(self, now: float) -> bool:
        """True when a preview arriving at ``now`` should be drawn."""
        return now >= self._next_allowed

    def wait_time(self, now: float) -> float:
        """Seconds from ``now`` until the next draw is allowed (0 when it is)."""
        return max(0.0, self._next_allowed - now)

    def drawn(self, started: float, finished: float) -> None:
        """Record a draw that ran from ``started`` to ``finished`` (monotonic seconds)."""
        cost = max(0.0, finished - started)
        self._next_allowed = finished + max(self.min_interval, cost * (1.0 / self.budget - 1.0))

    def reset(self) -> None:
        self._next_allowed = float("-inf")
