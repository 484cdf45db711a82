"""Live mode's settings and counters: :class:`LiveSettings` (the docker's Live section, saved
with Krita's settings), how a live job samples on a model (:func:`live_schedule`), :class:`LiveView`
(what the Live section shows) and :class:`LiveStats`. No ``krita`` and no Qt here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .protocol import ModelInfo
from .request import MAX_STEPS, RequestError


@dataclass(frozen=True)
class LiveSettings:
    """What the docker's Live section holds. ``steps`` are the denoising steps that actually run
    (the request asks for ``steps / strength``, since img2img runs ``steps × strength`` of them);
    ``seed`` ``None`` means one random seed picked when live mode turns on and kept while it is on."""

    strength: float = 0.5
    steps: int = 4
    seed: int | None = None

    def check(self) -> None:
        """Raise :class:`RequestError` for a value the server would refuse."""
        if not (math.isfinite(self.strength) and 0.05 <= self.strength <= 1.0):
            raise RequestError(f"live strength must be between 0.05 and 1, got {self.strength}")
        if not 1 <= self.steps <= 50:
            raise RequestError(f"live steps must be between 1 and 50, got {self.steps}")
        if self.seed is not None and not 0 <= self.seed < 2 ** 32:
            raise RequestError(f"the live seed must be between 0 and {2 ** 32 - 1}, got {self.seed}")


@dataclass(frozen=True)
class LiveSchedule:
    """How a live job samples: ``kind`` is ``lcm``, ``turbo``, ``lightning`` or ``default``."""

    kind: str
    sampler: str
    steps: int
    cfg_scale: float | None


def live_schedule(model: ModelInfo | None, live: LiveSettings) -> LiveSchedule:
    """The sampler, requested steps and CFG for live jobs on ``model``.

    Few-step models say so in their id or name (the server reports nothing else about them):
    LCM models (and LCM-LoRA merges) use the ``lcm`` sampler with CFG 1.5; SD/SDXL Turbo use Euler
    ancestral without guidance (CFG 1: diffusers skips the unconditional pass at ≤ 1); Lightning
    uses Euler with CFG 1. Any other model keeps the server's default sampler and its own CFG,
    with only ``live.steps`` denoising steps. ``steps`` is what the request asks for: img2img runs
    ``int(steps × strength)`` steps, so it is ``ceil(live.steps / strength)`` (at most
    :data:`~.request.MAX_STEPS`, the server's limit).
    """
    name = f"{model.id} {model.name}".lower() if model is not None else ""
    if "lcm" in name:
        kind, sampler, cfg = "lcm", "lcm", 1.5
    elif "turbo" in name:
        kind, sampler, cfg = "turbo", "euler_a", 1.0
    elif "lightning" in name:
        kind, sampler, cfg = "lightning", "euler", 1.0
    else:
        kind, sampler, cfg = "default", "", None
    steps = min(MAX_STEPS, max(1, math.ceil(live.steps / live.strength - 1e-9)))
    return LiveSchedule(kind, sampler, steps, cfg)


@dataclass(frozen=True)
class LiveView:
    """What the docker's Live section shows. Replaced on every change."""

    enabled: bool = False
    status: str = "Live is off."
    can_keep: bool = False
    error: bool = False


@dataclass
class LiveStats:
    """Counters the tests and the benchmark notes read."""

    changes: int = 0           # change signals received while on
    form_changes: int = 0      # form, live-settings and control-marking changes received while on
    jobs_sent: int = 0
    unchanged: int = 0         # changes whose source image and settings equalled the last job's: nothing sent
    previews_drawn: int = 0
    results_drawn: list[str] = field(default_factory=list)   # job ids whose final image reached the layer
    previews_from: list[str] = field(default_factory=list)   # job ids whose previews reached the layer (bounded)
    dropped_results: list[str] = field(default_factory=list)  # results of jobs that were no longer the newest
    kept: int = 0
    #: For each live job sent, the content ids of its control images (bounded).
    control_images: list[tuple[str, ...]] = field(default_factory=list)
    layers_adopted: int = 0    # live layers an undo brought back, taken over
    layers_recreated: int = 0  # live layers made again after the painter deleted one
    suspended: int = 0         # times the live layer was taken out for a save
