"""What the next click will do, before it is clicked: the generation size and steps (from the
model's native size by default), and what the scene's view transform does to the colours. No
``bpy`` here.

The model's native size (``ModelInfo.default_width`` × ``default_height``: 512² for SD 1.5, 768²
for SD 2, 1024² for SDXL) is the area it was trained at. *Model* sizing keeps that area and takes
the aspect ratio of the scene's render, rounded down to multiples of 8, so the first click asks
for what the model does best — not the scene's 1920×1080, which costs several times as much and
leaves the model's comfort zone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from .protocol import ModelInfo
from .request import RequestError, base_model, fit_size

#: The native size assumed while the server's models are not known yet (SD 1.5's).
FALLBACK_SIZE = (512, 512)
SIZE_MODES = ("MODEL", "SCENE", "CUSTOM")
#: View transforms that show an sRGB image's colours as they are.
FAITHFUL_TRANSFORMS = frozenset({"Standard", "Raw"})


def model_for(models: Iterable[ModelInfo], model_id: str, task: str) -> ModelInfo | None:
    """The model a job of ``task`` would run on, or ``None`` when the server's models are not known
    (or it has none for the task)."""
    try:
        return base_model(tuple(models), model_id, task)
    except RequestError:
        return None


def native_size(model: ModelInfo | None, aspect: float) -> tuple[int, int]:
    """The model's native area at ``aspect`` (width / height), in multiples of 8."""
    width, height = (model.default_width, model.default_height) if model is not None else FALLBACK_SIZE
    area = width * height
    w = math.sqrt(area * aspect)
    return fit_size(max(64, round(w)), max(64, round(w / aspect)))


@dataclass(frozen=True)
class Plan:
    width: int
    height: int
    steps: int | None       # None: the model's default, not known yet
    model: ModelInfo | None

    def line(self, views: int = 1) -> str:
        """One line for the panel: "512×288 · 25 steps · 4 views"."""
        steps = f"{self.steps} steps" if self.steps is not None else "the model's steps"
        text = f"{self.width}×{self.height} · {steps}"
        if views > 1:
            text += f" · {views} views"
        if self.model is None:
            text += " (connect to see the model's defaults)"
        return text


def plan(size_mode: str, scene_size: tuple[int, int], custom_size: tuple[int, int], steps: int,
         model: ModelInfo | None) -> Plan:
    """The size and steps a click will use. ``steps`` 0 means the model's default. Raises
    :class:`~.request.RequestError` for a size no model can take."""
    if size_mode not in SIZE_MODES:
        raise ValueError(f"size_mode must be one of {SIZE_MODES}, got {size_mode!r}")
    if size_mode == "SCENE":
        width, height = fit_size(*scene_size)
    elif size_mode == "CUSTOM":
        width, height = fit_size(*custom_size)
    else:
        width, height = native_size(model, scene_size[0] / max(scene_size[1], 1))
    planned_steps = steps if steps > 0 else (model.default_steps if model is not None else None)
    return Plan(width, height, planned_steps, model)


def colour_note(view_transform: str) -> str | None:
    """What the scene's view transform does to generated colours, or ``None`` when it shows them as they are."""
    if view_transform in FAITHFUL_TRANSFORMS:
        return None
    return (f"View transform {view_transform}: renders tone-map the texture, so 'As Generated' shows "
            "changed colours (Standard shows them as generated). Bakes store the generated colours.")
