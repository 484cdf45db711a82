"""The plain records of the model layer (no torch): a configured model (:class:`ModelSpec`), what
inspection found out about it (:class:`ModelFacts`), a family's defaults, and the header readers
the family modules' detectors share."""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = ("base", "inpaint", "depth", "edit", "controlnet", "control")
UNSAFE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")


class ModelConfigError(ValueError):
    """A model spec that cannot work, found before anything loads (bad path, unsafe format, duplicate id)."""


@dataclass(frozen=True)
class Defaults:
    """A family's native size and the defaults a job gets when it leaves a value out."""

    size: int
    steps: int
    cfg: float


@dataclass(frozen=True)
class ModelSpec:
    """One configured model.

    ``source`` is a diffusers folder, a ``.safetensors`` file or a hub id. ``kind`` and ``family``
    are detected when left empty. ``config`` is the local diffusers folder (or cached hub id) whose
    configs a single-file checkpoint uses. ``control_type`` (ControlNets: ``canny``, ``depth``, …)
    is guessed from the id, name and source when left empty. ``demo`` marks the built-in random models.
    """

    id: str
    source: str
    kind: str = ""
    family: str = ""
    config: str = ""
    name: str = ""
    demo: bool = False
    control_type: str = ""


@dataclass(frozen=True)
class ModelFacts:
    """What inspection found: ``origin`` is ``folder``, ``single_file``, ``hub`` or ``demo``.

    ``context_dim`` is the width of the text features the denoiser (or ControlNet) attends to
    (768 SD 1.x, 1024 SD 2.x, 2048 SDXL, 4096 Flux; 0 when unknown): add-ons and ControlNets must
    match it. ``guidance_embeds``: a Flux transformer distilled with a guidance input (dev; schnell
    has none and ignores CFG).
    """

    family: str
    kind: str
    origin: str
    prediction_type: str = "epsilon"
    detected: bool = True
    context_dim: int = 0
    control_type: str = ""
    #: Hidden widths of the text encoders (embeddings must match): (768,) SD 1.x, (768, 1280) SDXL.
    text_dims: tuple[int, ...] = ()
    guidance_embeds: bool = True
    #: A step-distilled model without classifier-free guidance (Flux.2 Klein 4B/9B: its pipeline's
    #: ``is_distilled``): few steps, and ``cfg_scale`` and the negative prompt change nothing.
    distilled: bool = False

    @property
    def defaults(self) -> Defaults:
        from .registry import family

        return family(self.family).defaults_for(self)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a ``.safetensors`` file (names, dtypes, shapes) without reading tensors."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100 * 1024 * 1024:
            raise ValueError("header larger than 100 MB")
        return json.loads(f.read(length))


def shape(header: dict[str, Any], *names: str) -> list[int]:
    """The shape of the first of ``names`` in a safetensors header, or [] when none is there."""
    for name in names:
        entry = header.get(name)
        if isinstance(entry, dict) and isinstance(entry.get("shape"), list):
            return entry["shape"]
    return []
