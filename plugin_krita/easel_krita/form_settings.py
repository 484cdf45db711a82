"""The docker form's settings (:class:`GenerationSettings`) and their checks: the limits a value
must keep, :meth:`GenerationSettings.check`, and the typed readers of a saved request's dict.

Every failure is a :class:`RequestError` whose message says what to change. :mod:`.request`
builds requests from these settings (and re-exports these names). No host here.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from .geometry import Margins
from .loras import LoraChoice, LoraError, check_choices

#: Longest prompt the form accepts (characters); the server applies its own token limits.
MAX_PROMPT_CHARS = 4000
#: Most steps a request may ask for: the protocol's default ``Limits.max_steps`` (the reference
#: server's); the docker's field stops at the welcome's own value.
MAX_STEPS = 150
#: Upscale factors the form offers and accepts (the reference server takes 1..4).
UPSCALE_MIN, UPSCALE_MAX = 1.0, 4.0


class RequestError(ValueError):
    """The form or the canvas cannot make a valid request; the message says what to change."""


@dataclass(frozen=True)
class GenerationSettings:
    """What the docker's form holds. ``None`` and ``""`` mean "the model's default"; ``seed``
    ``None`` means a new random seed for every job (the server picks it and reports it back).

    ``strength`` is Refine's (img2img: 0 keeps the image, 1 replaces it); the compact docker's
    slider shares it, and at 1.0 (the default, 100 %) its one button generates instead; Fill always repaints
    the selection completely (strength 1). ``context`` is how many pixels around the selection
    Fill sends so the new content matches its surroundings; ``margins`` are Expand's.
    ``loras`` apply to every diffusion action; ``upscale_factor`` and ``upscale_strength`` are
    Upscale's (how much larger, and how much detail the model may repaint: 0.35 keeps the picture).
    ``region_mode`` is the Regions list's "Keep regions apart" ("separate", or "attention").
    """

    prompt: str = ""
    negative_prompt: str = ""
    model: str = ""
    seed: int | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    sampler: str = ""
    strength: float = 1.0
    batch_size: int = 1
    context: int = 64
    margins: Margins = field(default_factory=lambda: Margins(128, 0, 128, 0))
    loras: tuple[LoraChoice, ...] = ()
    upscale_factor: float = 2.0
    upscale_strength: float = 0.35
    region_mode: str = "separate"

    def check(self) -> None:
        """Raise :class:`RequestError` for the first value the server would refuse anyway."""
        if len(self.prompt) > MAX_PROMPT_CHARS or len(self.negative_prompt) > MAX_PROMPT_CHARS:
            raise RequestError(f"the prompt is longer than {MAX_PROMPT_CHARS} characters; shorten it")
        if self.seed is not None and not 0 <= self.seed < 2 ** 32:
            raise RequestError(f"the seed must be between 0 and {2 ** 32 - 1}, got {self.seed}")
        if self.steps is not None and not 1 <= self.steps <= MAX_STEPS:
            raise RequestError(f"steps must be between 1 and {MAX_STEPS}, got {self.steps}")
        if self.cfg_scale is not None and not (math.isfinite(self.cfg_scale) and 0 <= self.cfg_scale <= 30):
            raise RequestError(f"CFG scale must be between 0 and 30, got {self.cfg_scale}")
        if not (math.isfinite(self.strength) and 0 <= self.strength <= 1):
            raise RequestError(f"strength must be between 0 and 1, got {self.strength}")
        if not 1 <= self.batch_size <= 8:
            raise RequestError(f"batch must be between 1 and 8 images, got {self.batch_size}")
        if not 0 <= self.context <= 1024:
            raise RequestError(f"context must be between 0 and 1024 pixels, got {self.context}")
        if not (math.isfinite(self.upscale_factor) and UPSCALE_MIN <= self.upscale_factor <= UPSCALE_MAX):
            raise RequestError(f"the upscale factor must be between {UPSCALE_MIN:g} and {UPSCALE_MAX:g}, "
                               f"got {self.upscale_factor:g}")
        if not (math.isfinite(self.upscale_strength) and 0 <= self.upscale_strength <= 1):
            raise RequestError(f"upscale strength must be between 0 and 1, got {self.upscale_strength}")
        if self.region_mode not in ("separate", "attention"):
            raise RequestError(f'region_mode must be "separate" or "attention", got {self.region_mode!r}')
        try:
            check_choices(self.loras)
        except LoraError as exc:
            raise RequestError(str(exc)) from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GenerationSettings":
        """Settings from :meth:`to_dict`'s output; unknown keys are ignored, missing ones take defaults.
        Raises :class:`RequestError` when a value has the wrong type."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name not in known:
                continue
            if name == "margins":
                if not isinstance(value, Mapping):
                    raise RequestError("margins must be a map of left, top, right, bottom")
                value = Margins(**{k: read_int(value.get(k, 0), f"margins.{k}") for k in ("left", "top", "right", "bottom")})
            elif name in ("prompt", "negative_prompt", "model", "sampler", "region_mode"):
                value = read_str(value, name)
            elif name in ("seed", "steps"):
                value = None if value is None else read_int(value, name)
            elif name in ("batch_size", "context"):
                value = read_int(value, name)
            elif name in ("cfg_scale",):
                value = None if value is None else read_float(value, name)
            elif name in ("strength", "upscale_factor", "upscale_strength"):
                value = read_float(value, name)
            elif name == "loras":
                if not isinstance(value, (list, tuple)):
                    raise RequestError("loras must be a list of {id, weight} maps")
                try:
                    value = tuple(LoraChoice.from_dict(item) for item in value)
                except LoraError as exc:
                    raise RequestError(str(exc)) from None
            values[name] = value
        return cls(**values)


def read_int(value: Any, name: str) -> int:
    """``value`` if it is a whole number (not a bool); else :class:`RequestError` naming ``name``.
    :func:`read_float` and :func:`read_str` read the same way."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be a whole number, got {value!r}")
    return value


def read_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{name} must be a number, got {value!r}")
    return float(value)


def read_str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise RequestError(f"{name} must be text, got {value!r}")
    return value
