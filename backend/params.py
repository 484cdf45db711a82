"""Every check of a job that needs no model work, and the values a job actually runs with.

:func:`resolve` turns a ``SubmitJob`` plus the payloads of its images into :class:`ResolvedParams`,
or raises :class:`~backend.errors.JobError` with a sentence that says which value to use. Nothing
here imports torch or decodes an image: it runs on the server's event loop, before queueing.

Sizes. For txt2img, ``width``/``height`` are the size of the result. For tasks that take an image,
the result always has the image's size (plus the margins for outpaint); ``width × height`` then
sets the pixel *area* the model works at — the image (or the masked region, for inpaint) is scaled
to about that area, keeping its aspect, generated, and scaled back. Left out, that area is the
model's native one (512² for SD 1.5, 1024² for SDXL), where models do their best work.
"""
from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Mapping

from protocol.errors import ErrorCode
from protocol.images import ImageFormat, ImagePayload
from protocol.messages import JobParams, Margins, SubmitJob, Task

from .errors import JobError, invalid
from .models import Defaults
from .samplers import check_sampler

STEPS_MIN, STEPS_MAX = 1, 150
CFG_MIN, CFG_MAX = 0.0, 30.0
MIN_SIDE = 64
MIN_IMAGE_SIDE = 8
MAX_PROMPT_CHARS = 10_000
MAX_SEED = 2**63 - 1
MAX_FEATHER = 256

#: Tasks this engine runs (``upscale`` and ``preprocess`` are later work).
SUPPORTED_TASKS = (Task.TXT2IMG, Task.IMG2IMG, Task.INPAINT, Task.OUTPAINT, Task.DEPTH2IMG)

IMAGE_FORMATS = (ImageFormat.RGBA8, ImageFormat.PNG, ImageFormat.JPEG)
MASK_FORMATS = (ImageFormat.GREY8, ImageFormat.PNG)
DEPTH_FORMATS = (ImageFormat.DEPTH32F, ImageFormat.GREY8)
ROLE_FORMATS = {"image": IMAGE_FORMATS, "mask": MASK_FORMATS, "depth": DEPTH_FORMATS}

#: Image roles per task: required, optional.
TASK_ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    Task.TXT2IMG: ((), ()),
    Task.IMG2IMG: (("image",), ()),
    Task.INPAINT: (("image", "mask"), ()),
    Task.OUTPAINT: (("image",), ()),
    Task.DEPTH2IMG: ((), ("image", "depth")),
}

#: Strength when the job leaves it out: img2img keeps a quarter of the image; the others repaint.
DEFAULT_STRENGTH = {Task.IMG2IMG: 0.75, Task.INPAINT: 1.0, Task.OUTPAINT: 1.0, Task.DEPTH2IMG: 1.0}
RESULT_FORMATS = (ImageFormat.RGBA8, ImageFormat.PNG)


@dataclass(frozen=True)
class Limits:
    """What the engine accepts; the server's wire ``Limits`` should agree."""

    max_batch_size: int = 8
    max_side: int = 2048
    max_image_side: int = 8192


@dataclass(frozen=True)
class ResolvedParams:
    """A job's parameters with every default filled in and every range checked.

    ``width``/``height`` are the result's size. ``work_area`` is the pixel area the model works at
    for tasks that take an image (0 for txt2img). ``seeds`` holds one seed per batch image.
    """

    task: str
    model: str
    prompt: str
    negative_prompt: str
    seed: int
    seeds: tuple[int, ...]
    steps: int
    cfg_scale: float
    strength: float
    sampler: str
    width: int
    height: int
    work_area: int
    batch_size: int
    margins: Margins | None
    context: int | None
    feather: int | None
    result_format: ImageFormat
    previews: bool


def resolve(submit: SubmitJob, images: Mapping[str, ImagePayload], *, model: str, defaults: Defaults,
            limits: Limits) -> ResolvedParams:
    """Check ``submit`` (for the already-chosen ``model``) and fill in defaults. Raises JobError."""
    p: JobParams = submit.params
    task = submit.task
    if p.controls:
        raise JobError(ErrorCode.UNSUPPORTED, "ControlNet units are not supported by this server yet; send the job without controls")
    if p.loras:
        raise JobError(ErrorCode.UNSUPPORTED, "LoRAs are not supported by this server yet; send the job without loras")
    if p.preprocessor:
        raise JobError(ErrorCode.UNSUPPORTED, f"preprocessors are not supported by this server yet (got {p.preprocessor!r})")
    _check_text(p.prompt, "prompt")
    _check_text(p.negative_prompt, "negative_prompt")

    steps = defaults.steps if p.steps is None else p.steps
    if not _is_int(steps) or not STEPS_MIN <= steps <= STEPS_MAX:
        raise invalid(f"steps must be between {STEPS_MIN} and {STEPS_MAX}, got {steps}", field="steps")
    cfg = defaults.cfg if p.cfg_scale is None else p.cfg_scale
    if not _is_number(cfg) or not CFG_MIN <= cfg <= CFG_MAX:
        raise invalid(f"cfg_scale must be between {CFG_MIN:g} and {CFG_MAX:g}, got {cfg}", field="cfg_scale")
    sampler = check_sampler(p.sampler)

    strength = 1.0
    if task != Task.TXT2IMG:
        strength = DEFAULT_STRENGTH[task] if p.strength is None else p.strength
        if not _is_number(strength) or not 0.0 <= strength <= 1.0:
            raise invalid(f"strength must be between 0 and 1, got {strength}", field="strength")
        if int(steps * strength) < 1:
            need = math.ceil(1 / steps * 100) / 100
            raise invalid(f"with strength {strength:g} and {steps} steps no denoising step would run; "
                          f"use strength {need:g} or more, or more steps", field="strength")

    if not _is_int(p.batch_size) or not 1 <= p.batch_size <= limits.max_batch_size:
        raise invalid(f"batch_size must be between 1 and {limits.max_batch_size}, got {p.batch_size}", field="batch_size")
    for name, value in (("width", p.width), ("height", p.height)):
        if value is not None:
            _check_side(name, value, limits)

    if p.result_format not in RESULT_FORMATS:
        raise invalid(f"result_format must be rgba8 or png (results are lossless), got {_fmt(p.result_format)}",
                      field="result_format")
    _check_images(task, images, limits)

    margins = None
    if task == Task.OUTPAINT:
        margins = _check_margins(p.margins, images["image"], limits)
    for name, value, top in (("context", p.context, limits.max_image_side), ("feather", p.feather, MAX_FEATHER)):
        if value is not None and (not _is_int(value) or not 0 <= value <= top):
            raise invalid(f"{name} must be between 0 and {top} pixels, got {value}", field=name)

    if task == Task.TXT2IMG:
        width = defaults.size if p.width is None else p.width
        height = defaults.size if p.height is None else p.height
        work_area = 0
    else:
        width, height = _result_size(task, images, margins)
        work_area = (p.width or defaults.size) * (p.height or defaults.size)

    if p.seed is None:
        seed = secrets.randbelow(2**32)  # 32 bits: short enough to read out and type back in
    else:
        seed = p.seed
        if not _is_int(seed) or not 0 <= seed <= MAX_SEED - (p.batch_size - 1):
            raise invalid(f"seed must be between 0 and {MAX_SEED - (p.batch_size - 1)}, got {seed}", field="seed")
    return ResolvedParams(
        task=task, model=model, prompt=p.prompt, negative_prompt=p.negative_prompt, seed=seed,
        seeds=tuple(seed + i for i in range(p.batch_size)), steps=steps, cfg_scale=float(cfg),
        strength=float(strength), sampler=sampler, width=width, height=height, work_area=work_area,
        batch_size=p.batch_size, margins=margins, context=p.context, feather=p.feather,
        result_format=p.result_format, previews=p.previews,
    )


def check_roles(task: str, images: Mapping[str, object]) -> None:
    """Required image roles present and no role the task does not use."""
    required, optional = TASK_ROLES[task]
    for role in required:
        if role not in images:
            raise invalid(f"{task} needs {_role_phrase(role)}: send it under images[{role!r}]", field="images")
    extra = sorted(set(images) - set(required) - set(optional))
    if extra:
        takes = ", ".join(repr(r) for r in required + optional) or "no images"
        raise invalid(f"{task} does not use image role {extra[0]!r}; it takes {takes}", field="images")
    if task == Task.DEPTH2IMG and not images:
        raise invalid("depth2img needs a depth map (images['depth']) or an image to estimate depth from (images['image'])",
                      field="images")


def _check_images(task: str, images: Mapping[str, ImagePayload], limits: Limits) -> None:
    check_roles(task, images)
    for role, payload in images.items():
        if payload.format not in ROLE_FORMATS[role]:
            allowed = ", ".join(f.value for f in ROLE_FORMATS[role])
            raise invalid(f"the {role} must be {allowed}, got {payload.format.value}", field=role)
        side = max(payload.width, payload.height)
        if min(payload.width, payload.height) < MIN_IMAGE_SIDE or side > limits.max_image_side:
            raise invalid(f"the {role} is {payload.width}x{payload.height}; images must be {MIN_IMAGE_SIDE} to "
                          f"{limits.max_image_side} pixels on each side", field=role)
    if "image" in images:
        image = images["image"]
        for role in ("mask", "depth"):
            other = images.get(role)
            if other is not None and (other.width, other.height) != (image.width, image.height):
                raise invalid(f"the {role} is {other.width}x{other.height} but the image is {image.width}x{image.height}; "
                              f"send a {role} of the image's size", field=role)


def _check_margins(margins: Margins | None, image: ImagePayload, limits: Limits) -> Margins:
    if margins is None:
        raise invalid("outpaint needs margins: how many pixels to add on the left, top, right and bottom", field="margins")
    values = {"left": margins.left, "top": margins.top, "right": margins.right, "bottom": margins.bottom}
    for name, value in values.items():
        if not _is_int(value) or value < 0:
            raise invalid(f"margins.{name} must be 0 or more pixels, got {value}", field="margins")
    if not any(values.values()):
        raise invalid("outpaint needs at least one margin above 0", field="margins")
    width = image.width + margins.left + margins.right
    height = image.height + margins.top + margins.bottom
    if max(width, height) > limits.max_image_side:
        raise invalid(f"the image with its margins would be {width}x{height}; keep each side at most "
                      f"{limits.max_image_side} pixels", field="margins")
    return margins


def _result_size(task: str, images: Mapping[str, ImagePayload], margins: Margins | None) -> tuple[int, int]:
    source = images.get("image") or images["depth"]
    width, height = source.width, source.height
    if margins is not None:
        width += margins.left + margins.right
        height += margins.top + margins.bottom
    return width, height


def _check_side(name: str, value: object, limits: Limits) -> None:
    if not _is_int(value) or not MIN_SIDE <= value <= limits.max_side:
        raise invalid(f"{name} must be between {MIN_SIDE} and {limits.max_side}, got {value}", field=name)
    if value % 8:
        lower, upper = value - value % 8, value - value % 8 + 8
        raise invalid(f"{name} must be a multiple of 8, got {value}; use {lower} or {upper}", field=name)


def _check_text(text: str, name: str) -> None:
    if len(text) > MAX_PROMPT_CHARS:
        raise invalid(f"{name} is {len(text)} characters long; keep it under {MAX_PROMPT_CHARS}", field=name)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value: object) -> str:
    return value.value if isinstance(value, ImageFormat) else repr(value)


def _role_phrase(role: str) -> str:
    return {"image": "an image", "mask": "a mask (white where to repaint)", "depth": "a depth map"}[role]
