"""Sampler names on the wire → diffusers schedulers.

Names follow the A1111/ComfyUI vocabulary painters know ("DPM++ 2M Karras" is ``dpmpp_2m_karras``).
Each scheduler is built ``from_config`` of the model's own scheduler config, so the model's beta
schedule, prediction type (epsilon or v) and timestep offsets carry over.
"""
from __future__ import annotations

from typing import Any, Mapping

from .errors import invalid

#: name → (diffusers class name, settings that make it that sampler)
SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    # clip_sample is for pixel-space DDPMs; latent models need it off (DDIM's default is on).
    "ddim": ("DDIMScheduler", {"clip_sample": False}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "dpmpp_2m_sde_karras": ("DPMSolverMultistepScheduler",
                            {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}

DEFAULT_SAMPLER = "dpmpp_2m_karras"

#: Samplers whose scheduler is second order (diffusers' ``scheduler.order``): their timestep list
#: holds every step twice but the first, and the pipeline's step callback runs once per entry.
SECOND_ORDER = frozenset({"heun"})


def check_sampler(name: str) -> str:
    """The sampler to use for ``name`` (empty → the default); raises invalid_parameter for unknown names."""
    if not name:
        return DEFAULT_SAMPLER
    if name not in SAMPLERS:
        raise invalid(f"unknown sampler {name!r}; use one of: {', '.join(SAMPLERS)}", field="sampler", value=name)
    return name


def callback_steps(name: str, steps: int) -> int:
    """How many times diffusers' step callback runs when sampler ``name`` denoises ``steps`` steps
    (what step previews count): ``steps``, or ``2 × steps − 1`` for a second-order sampler."""
    return 2 * steps - 1 if check_sampler(name) in SECOND_ORDER and steps > 0 else steps


def make_scheduler(name: str, base_config: Mapping[str, Any],
                   table: Mapping[str, tuple[str, dict[str, Any]]] | None = None) -> Any:
    """A new scheduler for sampler ``name`` built from ``base_config`` (a model's scheduler config);
    ``table`` is the model family's own samplers (Flux: flow matching) when it has them."""
    import diffusers

    class_name, settings = (table or SAMPLERS)[name if table else check_sampler(name)]
    cls = getattr(diffusers, class_name)
    return cls.from_config(dict(base_config), **settings)
