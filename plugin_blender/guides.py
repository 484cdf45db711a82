"""Depth-guided texture requests, from the panel's settings. No ``bpy`` here.

``settings`` is anything with the settings' attribute names (the scene's ``EaselSettings``, or a
:func:`snapshot` of it taken when a multi-view run starts, so later edits do not change views
still to come).

The first view of a run (and *Texture from Depth*) is a plain depth-guided generation. Every later
view carries what the earlier ones already textured, seen from the new camera (``start``, rows
bottom-up, floats in [0, 1]) and a ``mask`` (255 = new pixels to generate, 0 = keep):

* with a **depth ControlNet**, an ``inpaint`` job with the depth unit (and the line guide): the
  server keeps every pixel where the mask is 0 byte-identical;
* with the **depth model**, a ``depth2img`` job whose init image is the start image (at the
  settings' strength); depth2img takes no mask, so the client keeps the masked-out pixels itself
  (:func:`keep_known`).
"""
from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import numpy as np

from .pixels import depth_to_depth32f, unit_to_grey8
from .clientkit.controls import takes_own_control
from .protocol import ImageFormat, ImagePayload, ModelInfo, Task
from .request import ControlInput, GenerationRequest, ReferenceInput

#: Line guides: the server-side preprocessor run on the Workbench render, and the ControlNet type it feeds.
LINE_GUIDES = {"CANNY": ("canny", "canny"), "LINEART": ("lineart_standard", "lineart")}
#: The settings a texture request reads.
FIELDS = ("prompt", "negative_prompt", "model", "seed", "steps", "cfg_scale", "strength", "depth_mode", "depth_guide",
          "depth_weight", "depth_controlnet", "line_guide", "line_weight", "line_controlnet", "sampler", "lora_1",
          "lora_1_weight", "lora_2", "lora_2_weight")


def own_control_note(model: ModelInfo | None) -> str:
    """The panel's line for a model of kind ``control`` (FLUX.1 Canny), which takes one guide of its
    type itself at full strength (weights and ControlNet fields set nothing); "" for any other."""
    if not takes_own_control(model):
        return ""
    kind = model.control_type or "line"
    return f"{model.name or model.id} takes one {kind} guide itself, at full strength: set Depth Weight 0"


def snapshot(settings: Any) -> SimpleNamespace:
    """The request-relevant settings as plain values."""
    return SimpleNamespace(**{name: getattr(settings, name) for name in FIELDS})


def common(settings: Any) -> dict[str, Any]:
    """The parameters every request shares (a texture's views one seed, one prompt). Steps 0 is the
    model's default; LoRA slots left empty are skipped."""
    loras = tuple((getattr(settings, f"lora_{i}"), round(getattr(settings, f"lora_{i}_weight"), 3))
                  for i in (1, 2) if getattr(settings, f"lora_{i}", ""))
    return dict(prompt=settings.prompt, negative_prompt=settings.negative_prompt, model=settings.model,
                seed=None if settings.seed < 0 else settings.seed, steps=settings.steps or None,
                cfg_scale=settings.cfg_scale, sampler=settings.sampler, loras=loras)


def _rgba8(image: np.ndarray) -> bytes:
    """(H, W, C) floats in [0, 1], rows bottom-up → RGBA8 rows top-down (alpha 255 if C < 4)."""
    height, width, channels = image.shape
    out = np.full((height, width, 4), 255, np.uint8)
    out[..., :min(channels, 4)] = np.round(np.clip(image[..., :4], 0.0, 1.0) * 255).astype(np.uint8)
    return out[::-1].tobytes()


def texture_request(settings: Any, width: int, height: int, normalised: np.ndarray, lines: bytes | None,
                    start: np.ndarray | None = None, mask: np.ndarray | None = None,
                    reference: ReferenceInput | None = None) -> GenerationRequest:
    """The depth-guided request (module docstring); ``normalised`` is the depth map (near bright,
    rows bottom-up), ``lines`` the Workbench render (RGBA8 top-down) for the line guide, if any;
    ``reference`` the style reference (``style.py``), sent with every view."""
    request = _texture_request(settings, width, height, normalised, lines, start, mask)
    return request if reference is None else replace(request, references=(reference,))


def _texture_request(settings: Any, width: int, height: int, normalised: np.ndarray, lines: bytes | None,
                     start: np.ndarray | None, mask: np.ndarray | None) -> GenerationRequest:
    has_start = start is not None and mask is not None
    if settings.depth_guide != "CONTROLNET":
        images = {"depth": ImagePayload.build(ImageFormat.DEPTH32F, width, height, depth_to_depth32f(normalised))}
        extra: dict[str, Any] = {}
        if has_start:
            images["image"] = ImagePayload.build(ImageFormat.RGBA8, width, height, _rgba8(start))
            extra["strength"] = settings.strength
        return GenerationRequest(task=Task.DEPTH2IMG, width=width, height=height, images=images, **extra,
                                 **common(settings))
    controls = [ControlInput("depth", ImagePayload.build(ImageFormat.GREY8, width, height, unit_to_grey8(normalised)),
                             weight=round(settings.depth_weight, 3), model=settings.depth_controlnet)]
    if lines is not None:
        preprocessor, control_type = LINE_GUIDES[settings.line_guide]
        controls.append(ControlInput(control_type, ImagePayload.build(ImageFormat.RGBA8, width, height, lines),
                                     weight=round(settings.line_weight, 3), preprocessor=preprocessor,
                                     model=settings.line_controlnet))
    if has_start:
        images = {"image": ImagePayload.build(ImageFormat.RGBA8, width, height, _rgba8(start)),
                  "mask": ImagePayload.build(ImageFormat.GREY8, width, height, np.asarray(mask, np.uint8)[::-1].tobytes())}
        return GenerationRequest(task=Task.INPAINT, width=width, height=height, images=images,
                                 controls=tuple(controls), **common(settings))
    return GenerationRequest(task=Task.TXT2IMG, width=width, height=height, controls=tuple(controls), **common(settings))


def keep_known(generated: np.ndarray, start: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``generated`` with the start image's pixels wherever ``mask`` is 0 (all (H, W, ...) rows
    bottom-up), quantised like the start image that was sent (RGBA8), so both agree exactly."""
    sent = np.round(np.clip(start, 0.0, 1.0) * 255) / 255
    keep = (np.asarray(mask) == 0)[..., None]
    out = np.array(generated, np.float32, copy=True)
    out[..., :3] = np.where(keep, sent[..., :3], out[..., :3])
    return out
