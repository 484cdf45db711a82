"""The request model: everything needed to reproduce one generation, as one serialisable value.
No ``bpy`` here.

Operators read the scene and the settings into a :class:`GenerationRequest`; the request turns
itself into the wire's ``SubmitJob`` plus image payloads. ``to_dict``/``from_dict`` round-trip
through msgpack (images as raw bytes), so a generation can be stored and run again.

ControlNet inputs (:class:`ControlInput`) may leave their ControlNet unnamed: they say what kind
of guide they are (``depth``, ``canny``, ``lineart``), and :meth:`GenerationRequest.resolved`
picks the server's ControlNet of that type for the base model's family from its model list. On a
model of kind ``control`` (FLUX.1 Canny), which takes its control image itself, the one guide of
its type (a guide at weight 0 is left out) names the model, at full strength over every step.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterable, Mapping

from .clientkit.controls import (
    FULL_STRENGTH, PickError, check_own_control, pick_control, pick_controlnet as _pick, takes_own_control,
)
from .clientkit.limits import MAX_CONTROL_UNITS, MAX_UNIT_WEIGHT
from .protocol import (
    ControlUnit, ImageFormat, ImagePayload, JobParams, LoraWeight, ModelInfo, ReferenceImage, SubmitJob, Task,
)

#: Sizes are rounded down to a multiple of this: latent diffusion models work on 8-pixel blocks.
SIZE_STEP = 8
#: Smallest and largest side this plugin asks for (the server has its own limits too).
MIN_SIDE, MAX_SIDE = 64, 4096

#: The image roles each task this plugin sends must (first) and may (second) carry.
ROLES: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    Task.DEPTH2IMG: (frozenset({"depth"}), frozenset({"image"})),
    Task.IMG2IMG: (frozenset({"image"}), frozenset()),
    Task.TXT2IMG: (frozenset(), frozenset()),
    Task.INPAINT: (frozenset({"image", "mask"}), frozenset()),
}
#: Tasks that take ControlNet units (the server runs ControlNet with txt2img, img2img, inpaint and
#: outpaint; depth2img has its own depth UNet and takes none).
CONTROL_TASKS = frozenset({Task.TXT2IMG, Task.IMG2IMG, Task.INPAINT})
#: Image formats a control image may have here: a depth map as grey8 (near bright), a picture as rgba8.
CONTROL_FORMATS = (ImageFormat.GREY8, ImageFormat.RGBA8)
#: The protocol's limits on control units (docs/protocol.md, ControlUnit).
MAX_CONTROLS, MAX_CONTROL_WEIGHT = MAX_CONTROL_UNITS, MAX_UNIT_WEIGHT


class RequestError(ValueError):
    """A request that cannot be sent; the message says what to change."""


def fit_size(width: int, height: int) -> tuple[int, int]:
    """``width`` × ``height`` rounded down to multiples of :data:`SIZE_STEP`; raises
    :class:`RequestError` if a side falls outside [MIN_SIDE, MAX_SIDE]."""
    w, h = int(width) // SIZE_STEP * SIZE_STEP, int(height) // SIZE_STEP * SIZE_STEP
    for name, value in (("width", w), ("height", h)):
        if not MIN_SIDE <= value <= MAX_SIDE:
            raise RequestError(f"the {name} is {value} px; use {MIN_SIDE} to {MAX_SIDE} px")
    return w, h


@dataclass(frozen=True)
class ControlInput:
    """One ControlNet unit: a control image, the kind of guide it is, and how strongly it guides.

    ``model`` is the ControlNet's id on the server, or ``""`` until :meth:`GenerationRequest.resolved`
    picks one of type ``control_type``. ``preprocessor`` names a server-side preprocessor to run
    on the image first (``canny``, ``lineart_standard``); ``""`` sends the image as the control.
    """

    control_type: str
    image: ImagePayload
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    preprocessor: str = ""
    model: str = ""

    def unit(self) -> ControlUnit:
        if not self.model:
            raise RequestError(f"the {self.control_type} control has no ControlNet yet; resolve the request "
                               "against the server's models first")
        return ControlUnit(self.model, self.image.id, self.weight, self.start, self.end, self.preprocessor)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "image"}
        out["image"] = _image_dict(self.image)
        return out


@dataclass(frozen=True)
class ReferenceInput:
    """A reference image ("in the style of this"): an RGBA8 picture, how strongly it guides
    (0..2) over which part of the steps, through the server's adapter ``model`` (``""``: the
    server's default for the base model's family)."""

    image: ImagePayload
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    model: str = ""

    def wire(self) -> ReferenceImage:
        return ReferenceImage(self.image.id, self.weight, self.start, self.end, self.model)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "image"}
        out["image"] = _image_dict(self.image)
        return out


def _image_dict(image: ImagePayload) -> dict[str, Any]:
    return {"format": image.format.value, "width": image.width, "height": image.height, "data": image.data}


def _image_from(item: Mapping[str, Any]) -> ImagePayload:
    return ImagePayload.build(item["format"], int(item["width"]), int(item["height"]), bytes(item["data"]))


def base_model(models: Iterable[ModelInfo], model_id: str, task: str) -> ModelInfo:
    """The model a ``task`` job runs on: ``model_id``, or (``""``) the server's first model for the
    task — the server's own default rule. Raises :class:`RequestError` naming what to pick."""
    models = tuple(models)
    if model_id:
        model = next((m for m in models if m.id == model_id), None)
        if model is None:
            raise RequestError(f"the server has no model {model_id!r}; pick one from the Model list or leave it empty")
        if task not in model.tasks:
            raise RequestError(f"model {model_id!r} is a {model.kind} model and cannot run {task}; pick a base model "
                               "or leave Model empty")
        return model
    model = next((m for m in models if task in m.tasks), None)
    if model is None:
        raise RequestError(f"the server has no model that runs {task}")
    return model


def pick_controlnet(models: Iterable[ModelInfo], control_type: str, family: str, wanted: str = "") -> ModelInfo:
    """The server's ControlNet of ``control_type`` for ``family`` (``wanted``: that one, checked;
    :func:`clientkit.controls.pick_controlnet`). Raises :class:`RequestError` that says what the
    server has and how to add one."""
    try:
        return _pick(models, family, control_type, wanted, how_to_add=f"start it with --controlnet {control_type}=PATH, "
                                                                      "or use the depth model (depth2img)")
    except PickError as exc:
        raise RequestError(str(exc)) from None


def own_controls(model: ModelInfo, controls: Iterable["ControlInput"]) -> tuple["ControlInput", ...]:
    """The one control a job on ``model`` (kind ``control``) sends: the guide of its type, naming the
    model, at full strength (guides at weight 0 are left out). Raises :class:`RequestError` with
    what to change when there is none, more than one, or one of another type."""
    active = tuple(c for c in controls if c.weight > 0)
    try:
        check_own_control(model, [c.control_type for c in active], what="guide",
                          other="set the other guides' weight to 0 (Depth Weight 0 leaves the depth ControlNet out)")
        for control in active:
            pick_control((), model, control.control_type, control.model)
    except PickError as exc:
        raise RequestError(str(exc)) from None
    weight, start, end = FULL_STRENGTH
    return tuple(replace(c, model=model.id, weight=weight, start=start, end=end) for c in active)


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: task, parameters and input images by role.

    ``None`` (or ``""`` for the model) means the server's default for the model. Construction
    validates what the plugin can know without the server (roles, sizes, image shapes) and raises
    :class:`RequestError`; the server checks the rest (ranges, model capabilities) on submit.
    """

    task: str
    width: int
    height: int
    prompt: str = ""
    negative_prompt: str = ""
    model: str = ""
    seed: int | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    strength: float | None = None
    images: Mapping[str, ImagePayload] = field(default_factory=dict)
    controls: tuple[ControlInput, ...] = ()
    sampler: str = ""
    batch_size: int = 1
    #: (LoRA id on the server, weight) pairs.
    loras: tuple[tuple[str, float], ...] = ()
    #: Reference images that guide the whole picture (the panel's style reference).
    references: tuple[ReferenceInput, ...] = ()

    def __post_init__(self) -> None:
        if self.task not in ROLES:
            raise RequestError(f"this plugin sends {', '.join(sorted(ROLES))}, not {self.task!r}")
        if fit_size(self.width, self.height) != (self.width, self.height):
            raise RequestError(f"the size {self.width}x{self.height} must be a multiple of {SIZE_STEP}; "
                               f"use {fit_size(self.width, self.height)[0]}x{fit_size(self.width, self.height)[1]}")
        required, optional = ROLES[self.task]
        roles = set(self.images)
        if missing := required - roles:
            raise RequestError(f"a {self.task} request needs the image role(s) {', '.join(sorted(missing))}")
        if extra := roles - required - optional:
            raise RequestError(f"a {self.task} request takes no image role(s) {', '.join(sorted(extra))}")
        for role, image in self.images.items():
            if (image.width, image.height) != (self.width, self.height):
                raise RequestError(f"the {role} image is {image.width}x{image.height}; "
                                   f"it must match the request's {self.width}x{self.height}")
        if "mask" in self.images and self.images["mask"].format is not ImageFormat.GREY8:
            raise RequestError(f"the mask must be grey8, got {self.images['mask'].format.value}")
        if "depth" in self.images and self.images["depth"].format is not ImageFormat.DEPTH32F:
            raise RequestError(f"the depth image must be depth32f, got {self.images['depth'].format.value}")
        object.__setattr__(self, "images", dict(self.images))
        object.__setattr__(self, "controls", tuple(self.controls))
        object.__setattr__(self, "references", tuple(self.references))
        object.__setattr__(self, "loras", tuple((str(lora), float(weight)) for lora, weight in self.loras))
        if not 1 <= self.batch_size <= 8:
            raise RequestError(f"the batch size must be 1 to 8, got {self.batch_size}")
        if any(not lora for lora, _weight in self.loras):
            raise RequestError("a LoRA needs its id on the server")
        self._check_controls()
        self._check_references()

    def _check_references(self) -> None:
        for reference in self.references:
            if reference.image.format is not ImageFormat.RGBA8:
                raise RequestError(f"a reference image must be rgba8, got {reference.image.format.value}")
            if not 0.0 <= reference.weight <= MAX_CONTROL_WEIGHT:
                raise RequestError(f"a reference's weight must be 0 to {MAX_CONTROL_WEIGHT:g}, got {reference.weight:g}")
            if not 0.0 <= reference.start < reference.end <= 1.0:
                raise RequestError(f"a reference must start before it ends, within 0 to 1 (got {reference.start:g} to "
                                   f"{reference.end:g})")

    def _check_controls(self) -> None:
        if not self.controls:
            return
        if self.task not in CONTROL_TASKS:
            raise RequestError(f"a {self.task} request takes no ControlNet units; use txt2img, img2img or inpaint")
        if len(self.controls) > MAX_CONTROLS:
            raise RequestError(f"at most {MAX_CONTROLS} ControlNet units, got {len(self.controls)}")
        for control in self.controls:
            name = f"the {control.control_type} control"
            if not control.control_type:
                raise RequestError("a ControlNet unit needs a control type (depth, canny, lineart, ...)")
            if control.image.format not in CONTROL_FORMATS:
                raise RequestError(f"{name} image must be grey8 or rgba8, got {control.image.format.value}")
            if (control.image.width, control.image.height) != (self.width, self.height):
                raise RequestError(f"{name} image is {control.image.width}x{control.image.height}; "
                                   f"it must match the request's {self.width}x{self.height}")
            if not 0.0 <= control.weight <= MAX_CONTROL_WEIGHT:
                raise RequestError(f"{name} weight must be 0 to {MAX_CONTROL_WEIGHT:g}, got {control.weight:g}")
            if not 0.0 <= control.start < control.end <= 1.0:
                raise RequestError(f"{name} must start before it ends, within 0 to 1 (got {control.start:g} to "
                                   f"{control.end:g})")

    @property
    def resolved_controls(self) -> bool:
        """True when every control names its ControlNet (the request can be sent)."""
        return all(control.model for control in self.controls)

    def resolved(self, models: Iterable[ModelInfo], preprocessors: Iterable[str] | None = None) -> "GenerationRequest":
        """This request with each unnamed control's ControlNet picked from the server's ``models``:
        the first of the control's type for the base model's family. Named ones are checked.
        ``preprocessors``: the server's list, to refuse one it does not offer here (``None``: not
        checked). Raises :class:`RequestError` with a sentence for the user."""
        if not self.controls:
            return self
        models = tuple(models)
        base = base_model(models, self.model, self.task)
        offered = None if preprocessors is None else set(preprocessors)
        controls = []
        for control in self.controls:
            if control.preprocessor and offered is not None and control.preprocessor not in offered:
                raise RequestError(f"the server does not offer the {control.preprocessor!r} preprocessor "
                                   f"(it has: {', '.join(sorted(offered)) or 'none'})")
        if takes_own_control(base):
            return replace(self, controls=own_controls(base, self.controls))
        for control in self.controls:
            net = pick_controlnet(models, control.control_type, base.family, control.model)
            controls.append(replace(control, model=net.id))
        return replace(self, controls=tuple(controls))

    # -- to the wire

    def params(self) -> JobParams:
        """The job's parameters; raises :class:`RequestError` while a control has no ControlNet."""
        return JobParams(prompt=self.prompt, negative_prompt=self.negative_prompt, model=self.model,
                         seed=self.seed, steps=self.steps, cfg_scale=self.cfg_scale,
                         strength=self.strength, width=self.width, height=self.height,
                         controls=tuple(control.unit() for control in self.controls), sampler=self.sampler,
                         batch_size=self.batch_size, loras=tuple(LoraWeight(lora, weight) for lora, weight in self.loras),
                         references=tuple(reference.wire() for reference in self.references))

    def job(self, job_id: str) -> SubmitJob:
        """The ``SubmitJob`` for this request; send it with :meth:`payloads`."""
        return SubmitJob(job_id=job_id, task=self.task, params=self.params(),
                         images={role: image.id for role, image in self.images.items()})

    def payloads(self) -> list[ImagePayload]:
        """Every image the job names (role images, control images, then reference images), each once."""
        images = [*self.images.values(), *(control.image for control in self.controls),
                  *(reference.image for reference in self.references)]
        return list({image.id: image for image in images}.values())

    # -- storage

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of str, numbers, None and bytes (msgpack-ready; not JSON: images are bytes)."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)
                               if f.name not in ("images", "controls", "references")}
        out["images"] = {role: _image_dict(image) for role, image in self.images.items()}
        out["controls"] = [control.to_dict() for control in self.controls]
        out["references"] = [reference.to_dict() for reference in self.references]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GenerationRequest":
        """Inverse of :meth:`to_dict`; raises :class:`RequestError` on a malformed dict."""
        try:
            images = {role: _image_from(item) for role, item in dict(data.get("images") or {}).items()}
            controls = tuple(
                ControlInput(image=_image_from(item["image"]),
                             **{f.name: item[f.name] for f in fields(ControlInput) if f.name != "image" and f.name in item})
                for item in data.get("controls") or ())
            references = tuple(
                ReferenceInput(image=_image_from(item["image"]),
                               **{f.name: item[f.name] for f in fields(ReferenceInput) if f.name != "image" and f.name in item})
                for item in data.get("references") or ())
            values = {f.name: data[f.name] for f in fields(cls)
                      if f.name not in ("images", "controls", "references") and f.name in data}
            values["loras"] = tuple(tuple(pair) for pair in values.get("loras", ()))
        except (KeyError, TypeError, ValueError) as exc:
            raise RequestError(f"not a stored Easel request: {exc}") from None
        except Exception as exc:  # protocol's LocalProtocolError: bytes that cannot be that image
            raise RequestError(f"a stored image is damaged: {exc}") from None
        return cls(images=images, controls=controls, references=references, **values)
