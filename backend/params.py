"""Every check of a job that needs no model work, and the values a job actually runs with.

:func:`resolve` turns a ``SubmitJob`` plus the payloads of its images into :class:`ResolvedParams`,
or raises :class:`~backend.errors.JobError` with a sentence that says which value to use. Nothing
here imports torch or decodes an image: it runs on the server's event loop, before queueing.

Sizes. For txt2img, ``width``/``height`` are the size of the result. For tasks that take an image,
the result always has the image's size (plus the margins for outpaint); ``width × height`` then
sets the pixel *area* the model works at — the image (or the masked region, for inpaint) is scaled
to about that area, keeping its aspect, generated, and scaled back. Left out, that area is the
model's native one (512² for SD 1.5, 1024² for SDXL), where models do their best work.

Upscale: the result is the image times ``upscale_factor``; ``width``/``height`` (optional) are the
tile the model repaints at a time (default: the native size). Preprocess: the result is the
control image, of the input's size.

Control units (``JobParams.controls``), LoRAs (``JobParams.loras``), reference images and regions
(``JobParams.references``/``regions``: :func:`check_guides`) are range-checked here; that their
models and files exist and fit the job's model is checked by the engine, which knows them.
"""
from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Mapping

from protocol.errors import ErrorCode
from protocol.images import ImageFormat, ImagePayload
from protocol.messages import ControlUnit, JobParams, LoraWeight, Margins, ReferenceImage, Region, SubmitJob, Task

from .errors import JobError, invalid
from .models import Defaults, Family
from .preprocessors import check_name as check_preprocessor
from .prompts import parse as parse_prompt
from .samplers import check_sampler

STEPS_MIN, STEPS_MAX = 1, 150
CFG_MIN, CFG_MAX = 0.0, 30.0
MIN_SIDE = 64
MIN_IMAGE_SIDE = 8
MAX_PROMPT_CHARS = 10_000
MAX_SEED = 2**63 - 1
MAX_FEATHER = 256

#: Tasks this engine runs.
SUPPORTED_TASKS = (Task.TXT2IMG, Task.IMG2IMG, Task.INPAINT, Task.OUTPAINT, Task.DEPTH2IMG, Task.UPSCALE,
                   Task.PREPROCESS, Task.EDIT)
#: Tasks that take ControlNet units, and how many units one job may have.
CONTROL_TASKS = (Task.TXT2IMG, Task.IMG2IMG, Task.INPAINT, Task.OUTPAINT)
MAX_CONTROLS = 4
CONTROL_WEIGHT_MAX = 2.0
#: Tasks that take reference images and regions, and a reference's largest weight.
GUIDED_TASKS = (Task.TXT2IMG, Task.IMG2IMG, Task.INPAINT, Task.OUTPAINT, Task.DEPTH2IMG)
REFERENCE_WEIGHT_MAX = 2.0
#: ``JobParams.region_mode`` values, the default first ("" reads as it); see backend/guides.py.
REGION_MODES = ("separate", "attention")
#: LoRAs one job may apply, and the weight range (negative weights invert a LoRA).
MAX_LORAS = 8
LORA_WEIGHT_MIN, LORA_WEIGHT_MAX = -2.0, 2.0
#: Upscale: factor range, the largest result (pixels), the default strength.
UPSCALE_MIN, UPSCALE_MAX, UPSCALE_DEFAULT = 1.0, 4.0, 2.0
MAX_UPSCALE_PIXELS = 4096 * 4096
#: How far a control image's aspect may be from the result's (it is stretched to the result).
ASPECT_TOLERANCE = 0.02

IMAGE_FORMATS = (ImageFormat.RGBA8, ImageFormat.PNG, ImageFormat.JPEG)
MASK_FORMATS = (ImageFormat.GREY8, ImageFormat.PNG)
DEPTH_FORMATS = (ImageFormat.DEPTH32F, ImageFormat.GREY8)
ROLE_FORMATS = {"image": IMAGE_FORMATS, "mask": MASK_FORMATS, "depth": DEPTH_FORMATS}
#: A control image may be a picture, a grey map (scribble, depth as grey) or a float depth map.
CONTROL_FORMATS = IMAGE_FORMATS + (ImageFormat.GREY8, ImageFormat.DEPTH32F)
REFERENCE_FORMATS = IMAGE_FORMATS

#: Image roles per task: required, optional.
TASK_ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    Task.TXT2IMG: ((), ()),
    Task.IMG2IMG: (("image",), ()),
    Task.INPAINT: (("image", "mask"), ()),
    Task.OUTPAINT: (("image",), ()),
    Task.DEPTH2IMG: ((), ("image", "depth")),
    Task.UPSCALE: (("image",), ()),
    Task.PREPROCESS: (("image",), ()),
    Task.EDIT: (("image",), ()),
}

#: Strength when the job leaves it out: img2img keeps a quarter of the image; the others repaint;
#: upscale adds detail but keeps the picture.
DEFAULT_STRENGTH = {Task.IMG2IMG: 0.75, Task.INPAINT: 1.0, Task.OUTPAINT: 1.0, Task.DEPTH2IMG: 1.0, Task.UPSCALE: 0.35,
                    Task.PREPROCESS: 1.0}
RESULT_FORMATS = (ImageFormat.RGBA8, ImageFormat.PNG)


@dataclass(frozen=True)
class Limits:
    """What the engine accepts; the server's wire ``Limits`` should agree."""

    max_batch_size: int = 8
    max_side: int = 2048
    max_image_side: int = 8192
    #: The largest result in pixels (outpaint's image with its margins): the wire limit's default.
    max_image_pixels: int = 4096 * 4096
    #: Reference images in one job (its regions' included) and regions: the wire limits' defaults.
    max_references: int = 4
    max_regions: int = 8


@dataclass(frozen=True)
class ResolvedParams:
    """A job's parameters with every default filled in and every range checked.

    ``width``/``height`` are the result's size. ``work_area`` is the pixel area the model works at
    for tasks that take an image (0 for txt2img). ``seeds`` holds one seed per batch image.
    ``controls`` are the job's control units (defaults filled in), ``loras`` (id, weight) pairs,
    ``preprocessor`` the preprocess task's, ``upscale_factor`` and ``tile`` (width, height) the
    upscale task's, ``references`` and ``regions`` the job's (numbers as floats), ``region_mode``
    one of :data:`REGION_MODES`.
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
    controls: tuple[ControlUnit, ...] = ()
    loras: tuple[tuple[str, float], ...] = ()
    preprocessor: str = ""
    upscale_factor: float = 1.0
    tile: tuple[int, int] = (0, 0)
    references: tuple[ReferenceImage, ...] = ()
    regions: tuple[Region, ...] = ()
    region_mode: str = REGION_MODES[0]


def resolve(submit: SubmitJob, images: Mapping[str, ImagePayload], *, model: str, defaults: Defaults,
            limits: Limits, control_images: Mapping[str, ImagePayload] | None = None,
            family: Family | None = None) -> ResolvedParams:
    """Check ``submit`` (for the already-chosen ``model``) and fill in defaults. Raises JobError.

    ``images`` maps the job's roles to payloads; ``control_images`` maps its control units' image
    ids to theirs. ``family`` (the model's) limits the samplers (Flux: flow matching only) and
    the multiple txt2img sides must be (16 for Flux)."""
    p: JobParams = submit.params
    task = submit.task
    _check_text(p.prompt, "prompt")
    _check_text(p.negative_prompt, "negative_prompt")
    parse_prompt(p.prompt, "prompt")  # an emphasis weight out of range is refused now, not on the worker
    parse_prompt(p.negative_prompt, "negative_prompt")

    steps = defaults.steps if p.steps is None else p.steps
    if not _is_int(steps) or not STEPS_MIN <= steps <= STEPS_MAX:
        raise invalid(f"steps must be between {STEPS_MIN} and {STEPS_MAX}, got {steps}", field="steps", value=steps)
    cfg = defaults.cfg if p.cfg_scale is None else p.cfg_scale
    if not _is_number(cfg) or not CFG_MIN <= cfg <= CFG_MAX:
        raise invalid(f"cfg_scale must be between {CFG_MIN:g} and {CFG_MAX:g}, got {cfg}", field="cfg_scale", value=cfg)
    sampler = _check_family_sampler(p.sampler, model, family) if family and family.samplers else check_sampler(p.sampler)
    multiple = family.size_multiple if family is not None else 8

    strength = 1.0
    if task not in (Task.TXT2IMG, Task.EDIT):  # an edit redraws the whole image from its instruction
        strength = DEFAULT_STRENGTH[task] if p.strength is None else p.strength
        if not _is_number(strength) or not 0.0 <= strength <= 1.0:
            raise invalid(f"strength must be between 0 and 1, got {strength}", field="strength", value=strength)
        if task == Task.DEPTH2IMG and "image" not in images:
            strength = 1.0  # no image: generation starts from flat grey and runs every step
        elif int(steps * strength) < 1:  # diffusers runs int(steps * strength) steps
            need = math.ceil(1 / steps * 100) / 100
            raise invalid(f"with strength {strength:g} and {steps} steps no denoising step would run; "
                          f"use strength {need:g} or more, or more steps", field="strength", value=strength)

    if not _is_int(p.batch_size) or not 1 <= p.batch_size <= limits.max_batch_size:
        raise invalid(f"batch_size must be between 1 and {limits.max_batch_size}, got {p.batch_size}", field="batch_size",
                      value=p.batch_size)
    if task in (Task.UPSCALE, Task.PREPROCESS) and p.batch_size != 1:
        raise invalid(f"{task} makes one image; send batch_size 1, got {p.batch_size}", field="batch_size", value=p.batch_size)
    for name, value in (("width", p.width), ("height", p.height)):
        if value is not None:
            _check_side(name, value, limits, multiple if task == Task.TXT2IMG else 8)

    if p.result_format not in RESULT_FORMATS:
        raise invalid(f"result_format must be rgba8 or png (results are lossless), got {_fmt(p.result_format)}",
                      field="result_format", value=p.result_format)
    _check_images(task, images, limits)

    margins = None
    if task == Task.OUTPAINT:
        margins = _check_margins(p.margins, images["image"], limits)
    for name, value, top in (("context", p.context, limits.max_image_side), ("feather", p.feather, MAX_FEATHER)):
        if value is not None and (not _is_int(value) or not 0 <= value <= top):
            raise invalid(f"{name} must be between 0 and {top} pixels, got {value}", field=name, value=value)

    preprocessor = _check_preprocessor(task, p.preprocessor)
    factor, tile = 1.0, (0, 0)
    if task == Task.TXT2IMG:
        width = defaults.size if p.width is None else p.width
        height = defaults.size if p.height is None else p.height
        work_area = 0
    elif task == Task.UPSCALE:
        factor = _check_upscale(p.upscale_factor, images["image"])
        width, height = round(images["image"].width * factor), round(images["image"].height * factor)
        tile = (p.width or defaults.size, p.height or defaults.size)
        work_area = tile[0] * tile[1]
    else:
        width, height = _result_size(task, images, margins)
        work_area = (p.width or defaults.size) * (p.height or defaults.size)
    if task != Task.UPSCALE and p.upscale_factor is not None:
        raise invalid(f"upscale_factor is for the upscale task; leave it out of a {task} job", field="upscale_factor",
                      value=p.upscale_factor)
    controls = _check_controls(task, p.controls, control_images, (width, height),
                               images.get("image") if task == Task.OUTPAINT else None, limits)
    loras = _check_loras(p.loras)
    references, regions = check_guides(task, p, control_images or {}, (width, height),
                                       images.get("image") if task == Task.OUTPAINT else None, limits)

    if p.seed is None:
        seed = secrets.randbelow(2**32)  # 32 bits: short enough to read out and type back in
    else:
        seed = p.seed
        if not _is_int(seed) or not 0 <= seed <= MAX_SEED - (p.batch_size - 1):
            why = " (batch image i uses seed + i, and seeds end at 2**63 - 1)" if p.batch_size > 1 else ""
            raise invalid(f"seed must be between 0 and {MAX_SEED - (p.batch_size - 1)}{why}, got {seed}", field="seed",
                          value=seed)
    return ResolvedParams(
        task=task, model=model, prompt=p.prompt, negative_prompt=p.negative_prompt, seed=seed,
        seeds=tuple(seed + i for i in range(p.batch_size)), steps=steps, cfg_scale=float(cfg),
        strength=float(strength), sampler=sampler, width=width, height=height, work_area=work_area,
        batch_size=p.batch_size, margins=margins, context=p.context, feather=p.feather,
        result_format=p.result_format, previews=p.previews, controls=controls, loras=loras,
        preprocessor=preprocessor, upscale_factor=factor, tile=tile, references=references, regions=regions,
        region_mode=_check_region_mode(p.region_mode),
    )


def check_roles(task: str, images: Mapping[str, object]) -> None:
    """Required image roles present and no role the task does not use."""
    required, optional = TASK_ROLES[task]
    extra = sorted(set(images) - set(required) - set(optional))
    if extra:  # first: a typo ("imgae") is also a missing role, and the typo is what to fix
        takes = ", ".join(repr(r) for r in required + optional) or "no images"
        raise invalid(f"{task} does not use image role {extra[0]!r}; it takes {takes}", field="images", value=extra[0])
    for role in required:
        if role not in images:
            raise invalid(f"{task} needs {_role_phrase(role)}: send it under images[{role!r}]", field="images")
    if task == Task.DEPTH2IMG and not images:
        raise invalid("depth2img needs a depth map (images['depth']) or an image to estimate depth from (images['image'])",
                      field="images")


def _check_images(task: str, images: Mapping[str, ImagePayload], limits: Limits) -> None:
    check_roles(task, images)
    for role, payload in images.items():
        if payload.format not in ROLE_FORMATS[role]:
            allowed = ", ".join(f.value for f in ROLE_FORMATS[role])
            raise invalid(f"the {role} must be {allowed}, got {payload.format.value}", field=role, value=payload.format)
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


def _check_preprocessor(task: str, name: str) -> str:
    if task == Task.PREPROCESS:
        if not name:
            raise invalid("a preprocess job needs params.preprocessor: the preprocessor to run (e.g. canny)",
                          field="preprocessor")
        check_preprocessor(name)
        return name
    if name:
        raise invalid(f"params.preprocessor is for the preprocess task; to preprocess a control image in a "
                      f"{task} job, set the control unit's preprocessor", field="preprocessor", value=name)
    return ""


def _check_upscale(factor: object, image: ImagePayload) -> float:
    factor = UPSCALE_DEFAULT if factor is None else factor
    if not _is_number(factor) or not UPSCALE_MIN <= factor <= UPSCALE_MAX:
        raise invalid(f"upscale_factor must be between {UPSCALE_MIN:g} and {UPSCALE_MAX:g}, got {factor}",
                      field="upscale_factor", value=factor)
    width, height = round(image.width * factor), round(image.height * factor)
    if width * height > MAX_UPSCALE_PIXELS:
        most = math.floor(math.sqrt(MAX_UPSCALE_PIXELS / (image.width * image.height)) * 100) / 100
        raise invalid(f"upscaling {image.width}x{image.height} by {factor:g} gives {width}x{height}, more than "
                      f"{MAX_UPSCALE_PIXELS} pixels; use upscale_factor {most:g} or less, or a smaller image",
                      field="upscale_factor", value=factor)
    return float(factor)


def _check_controls(task: str, units: tuple[ControlUnit, ...], payloads: Mapping[str, ImagePayload] | None,
                    result: tuple[int, int], original: ImagePayload | None, limits: Limits) -> tuple[ControlUnit, ...]:
    """Range checks of the control units; the result's ``result`` size sets the aspect their images
    must have (outpaint also takes the original image's aspect: the image is then placed over it)."""
    if not units:
        return ()
    if task not in CONTROL_TASKS:
        raise JobError(ErrorCode.UNSUPPORTED, f"{task} takes no control units; ControlNet works with "
                                              f"{', '.join(CONTROL_TASKS)}", {"field": "controls"})
    if len(units) > MAX_CONTROLS:
        raise invalid(f"a job may have at most {MAX_CONTROLS} control units, got {len(units)}", field="controls")
    payloads = payloads or {}
    out = []
    for index, unit in enumerate(units, 1):
        where = f"control unit {index}"
        if not isinstance(unit.model, str) or not unit.model:
            raise invalid(f"{where} needs a model: the id of a ControlNet the server lists", field="controls")
        if not _is_number(unit.weight) or not 0.0 <= unit.weight <= CONTROL_WEIGHT_MAX:
            raise invalid(f"{where}: weight must be between 0 and {CONTROL_WEIGHT_MAX:g}, got {unit.weight}",
                          field="controls")
        for name, value in (("start", unit.start), ("end", unit.end)):
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise invalid(f"{where}: {name} must be between 0 and 1 (a fraction of the steps), got {value}",
                              field="controls")
        if unit.start >= unit.end:
            raise invalid(f"{where}: start ({unit.start:g}) must be less than end ({unit.end:g}); e.g. start 0, end 1 "
                          f"guides every step", field="controls")
        if unit.preprocessor:
            check_preprocessor(unit.preprocessor, "controls")
        payload = _sent_image(payloads, unit.image, f"{where}'s image", "controls", CONTROL_FORMATS, limits)
        _check_covers(payload, f"{where}'s image", "control image", result, original, "controls")
        out.append(ControlUnit(unit.model, unit.image, float(unit.weight), float(unit.start), float(unit.end),
                               unit.preprocessor))
    return tuple(out)


def _sent_image(payloads: Mapping[str, ImagePayload], image_id: object, what: str, field: str,
                formats: tuple[ImageFormat, ...], limits: Limits) -> ImagePayload:
    """The payload of an image a job names by id (a control unit's, a reference, a region's mask),
    sent with the job, of one of ``formats`` and of an accepted size."""
    payload = payloads.get(image_id) if isinstance(image_id, str) else None
    if payload is None:
        raise invalid(f"{what} {str(image_id)[:12]} was not sent with the job; offer and upload it, "
                      f"then name its id", field=field)
    if payload.format not in formats:
        raise invalid(f"{what} must be {', '.join(f.value for f in formats)}, got {payload.format.value}", field=field)
    if min(payload.width, payload.height) < MIN_IMAGE_SIDE or max(payload.width, payload.height) > limits.max_image_side:
        raise invalid(f"{what} is {payload.width}x{payload.height}; images must be {MIN_IMAGE_SIDE} to "
                      f"{limits.max_image_side} pixels on each side", field=field)
    return payload


def _check_covers(payload: ImagePayload, what: str, noun: str, result: tuple[int, int], original: ImagePayload | None,
                  field: str) -> None:
    """An image laid over the result (control image, region mask) has the result's aspect, or for
    outpaint the original image's (it is then placed over the original)."""
    fits = [size for size in (result, (original.width, original.height) if original else None) if size]
    if not any(same_aspect((payload.width, payload.height), size) for size in fits):
        raise invalid(f"{what} is {payload.width}x{payload.height} but the result is {result[0]}x{result[1]}; "
                      f"send a {noun} with the result's aspect (ideally its size)", field=field)


def check_guides(task: str, p: JobParams, payloads: Mapping[str, ImagePayload], result: tuple[int, int],
                 original: ImagePayload | None, limits: Limits) -> tuple[tuple[ReferenceImage, ...], tuple[Region, ...]]:
    """Range checks of the job's reference images and regions (their images sent, of accepted
    formats, region masks covering the result); which adapters exist and fit the model is checked by
    the engine (:mod:`backend.references`)."""
    if not p.references and not p.regions:
        return (), ()
    if task not in GUIDED_TASKS:
        field = "references" if p.references else "regions"
        raise JobError(ErrorCode.UNSUPPORTED, f"{task} takes no {field}; reference images and regions work with "
                                              f"{', '.join(GUIDED_TASKS)}", {"field": field})
    if len(p.regions) > limits.max_regions:
        raise invalid(f"a job may have at most {limits.max_regions} regions, got {len(p.regions)}", field="regions")
    count = len(p.references) + sum(len(getattr(r, "references", ()) or ()) for r in p.regions)
    if count > limits.max_references:
        raise invalid(f"a job may have at most {limits.max_references} reference images (its regions' included), "
                      f"got {count}", field="references")
    references = tuple(_check_reference(ref, f"reference {index}", payloads, limits)
                       for index, ref in enumerate(p.references, 1))
    regions = []
    for index, region in enumerate(p.regions, 1):
        where = f"region {index}"
        if not isinstance(region.prompt, str) or not region.prompt.strip():
            raise invalid(f"{where} needs a prompt: what to make inside its mask", field="regions")
        _check_text(region.prompt, f"{where}'s prompt")
        parse_prompt(region.prompt, "regions")
        mask = _sent_image(payloads, region.mask, f"{where}'s mask", "regions", MASK_FORMATS, limits)
        _check_covers(mask, f"{where}'s mask", "mask", result, original, "regions")
        refs = tuple(_check_reference(ref, f"{where}'s reference {k}", payloads, limits, "regions")
                     for k, ref in enumerate(region.references or (), 1))
        regions.append(Region(region.mask, region.prompt, refs))
    return references, tuple(regions)


def _check_region_mode(value: object) -> str:
    if value == "":
        return REGION_MODES[0]
    if value not in REGION_MODES:
        raise invalid(f'region_mode must be "separate" (one pass per prompt, blended by the regions: each region\'s '
                      f'prompt stays inside it) or "attention" (one pass with masked attention: faster, softer '
                      f'borders), got {value!r}', field="region_mode", value=value)
    return str(value)


def _check_reference(ref: ReferenceImage, where: str, payloads: Mapping[str, ImagePayload], limits: Limits,
                     field: str = "references") -> ReferenceImage:
    if not isinstance(ref, ReferenceImage):
        raise invalid(f"{where} is not a reference image", field=field)
    if not _is_number(ref.weight) or not 0.0 <= ref.weight <= REFERENCE_WEIGHT_MAX:
        raise invalid(f"{where}: weight must be between 0 and {REFERENCE_WEIGHT_MAX:g}, got {ref.weight}", field=field)
    for name, value in (("start", ref.start), ("end", ref.end)):
        if not _is_number(value) or not 0.0 <= value <= 1.0:
            raise invalid(f"{where}: {name} must be between 0 and 1 (a fraction of the steps), got {value}", field=field)
    if ref.start >= ref.end:
        raise invalid(f"{where}: start ({ref.start:g}) must be less than end ({ref.end:g}); e.g. start 0, end 1 "
                      f"guides every step", field=field)
    if not isinstance(ref.model, str):
        raise invalid(f"{where}: model must be the id of a listed reference model, or empty", field=field)
    _sent_image(payloads, ref.image, f"{where}'s image", field, REFERENCE_FORMATS, limits)
    return ReferenceImage(ref.image, float(ref.weight), float(ref.start), float(ref.end), ref.model)


def same_aspect(a: tuple[int, int], b: tuple[int, int]) -> bool:
    ratio_a, ratio_b = a[0] / a[1], b[0] / b[1]
    return abs(ratio_a - ratio_b) <= ASPECT_TOLERANCE * ratio_b


def _check_loras(loras: tuple[LoraWeight, ...]) -> tuple[tuple[str, float], ...]:
    if len(loras) > MAX_LORAS:
        raise invalid(f"a job may apply at most {MAX_LORAS} LoRAs, got {len(loras)}", field="loras")
    seen: set[str] = set()
    out = []
    for lora in loras:
        if not isinstance(lora.id, str) or not lora.id:
            raise invalid("each LoRA needs an id: one the server lists in model_list.loras", field="loras")
        if lora.id in seen:
            raise invalid(f"LoRA {lora.id!r} is listed twice; give it once with the weight you want", field="loras")
        seen.add(lora.id)
        if not _is_number(lora.weight) or not LORA_WEIGHT_MIN <= lora.weight <= LORA_WEIGHT_MAX:
            raise invalid(f"LoRA {lora.id!r}: weight must be between {LORA_WEIGHT_MIN:g} and {LORA_WEIGHT_MAX:g}, "
                          f"got {lora.weight}", field="loras")
        out.append((lora.id, float(lora.weight)))
    return tuple(out)


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
    if max(width, height) > limits.max_image_side or width * height > limits.max_image_pixels:
        raise invalid(f"the image with its margins would be {width}x{height}; keep each side at most "
                      f"{limits.max_image_side} pixels and the whole at most {limits.max_image_pixels} pixels",
                      field="margins")
    return margins


def _result_size(task: str, images: Mapping[str, ImagePayload], margins: Margins | None) -> tuple[int, int]:
    source = images.get("image") or images["depth"]
    width, height = source.width, source.height
    if margins is not None:
        width += margins.left + margins.right
        height += margins.top + margins.bottom
    return width, height


def _check_side(name: str, value: object, limits: Limits, multiple: int = 8) -> None:
    if not _is_int(value) or not MIN_SIDE <= value <= limits.max_side:
        raise invalid(f"{name} must be between {MIN_SIDE} and {limits.max_side}, got {value}", field=name, value=value)
    if value % multiple:
        lower, upper = value - value % multiple, value - value % multiple + multiple
        raise invalid(f"{name} must be a multiple of {multiple}, got {value}; use {lower} or {upper}", field=name,
                      value=value)


def _check_family_sampler(name: str, model: str, family: Family) -> str:
    """The sampler for a model of a family with samplers of its own (empty → the family's default)."""
    if not name:
        return family.default_sampler
    if name not in (family.samplers or {}):
        raise invalid(f"model {model!r} ({family.label}) samples with flow matching and takes sampler "
                      f"{', '.join(family.samplers or ())}, not {name!r}; leave sampler empty for its default",
                      field="sampler", value=name)
    return name


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
