"""The request model: one serialisable :class:`GenerationRequest` per generation.

A request holds everything needed to reproduce a result: the painter's settings (prompt, seed,
steps, LoRAs, ...), what was asked (Generate, Refine, Fill, Expand, Upscale, making a control
layer, or a live update), the control layers that guide it, and where on the canvas it applies. It becomes exactly one ``SubmitJob`` plus its images (:meth:`GenerationRequest.submit`),
and round-trips through a JSON-safe dict (:meth:`to_dict`/:meth:`from_dict`) for the history,
for copying settings back into the form, and for saving with a document later.

The settings (:class:`GenerationSettings`), their limits and checks are :mod:`.form_settings`'s.
No host here: the canvas facts (size, selection bounds) come in as plain numbers.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Mapping

from .control import ControlError, ControlInput
# The form's settings and their checks; re-exported: the plugin and its tests import them from here.
from .form_settings import MAX_PROMPT_CHARS, MAX_STEPS, UPSCALE_MAX, UPSCALE_MIN  # noqa: F401
from .form_settings import GenerationSettings, RequestError, read_int, read_str
from .geometry import (
    Placement, Rect, RegionError, expanded_canvas, generation_size, job_region, scaled_rect, scaled_size,
)
from .protocol import ImageFormat, ImagePayload, JobParams, SubmitJob, Task
from .protocol import Margins as WireMargins
from .regions import RegionInput, RegionMarkError

#: Version of the dict written by :meth:`GenerationRequest.to_dict`.
REQUEST_VERSION = 1


class Action(str, Enum):
    """What the painter asked for. Each maps to one protocol task."""

    GENERATE = "generate"   # txt2img into the selection or canvas
    REFINE = "refine"       # img2img of the visible image inside the selection or canvas
    FILL = "fill"           # inpaint the selection, with context around it
    EXPAND = "expand"       # outpaint: the canvas grows by the margins
    UPSCALE = "upscale"     # tiled SD upscale: the document is scaled, the result is a new layer
    PREPROCESS = "preprocess"  # a control image from the visible image (or a layer), as a new control layer

    @property
    def task(self) -> str:
        return _TASKS[self]

    @property
    def label(self) -> str:
        return _LABELS.get(self, self.value.capitalize())

    @property
    def guided(self) -> bool:
        """Whether the document's control layers guide this action (ControlNet works with the four
        canvas actions; not with Upscale or making a control layer)."""
        return self in CONTROL_ACTIONS


_TASKS = {Action.GENERATE: Task.TXT2IMG, Action.REFINE: Task.IMG2IMG, Action.FILL: Task.INPAINT,
          Action.EXPAND: Task.OUTPAINT, Action.UPSCALE: Task.UPSCALE, Action.PREPROCESS: Task.PREPROCESS}
_LABELS = {Action.PREPROCESS: "Control layer"}
#: The actions of the docker's main button grid (Upscale and control layers have sections of their own).
FORM_ACTIONS = (Action.GENERATE, Action.REFINE, Action.FILL, Action.EXPAND)
#: Actions that send the document's control layers as ControlNet units.
CONTROL_ACTIONS = (Action.GENERATE, Action.REFINE, Action.FILL, Action.EXPAND)


def _rect(value: Any, name: str) -> Rect:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise RequestError(f"{name} must be [x, y, width, height], got {value!r}")
    try:
        return Rect(*(read_int(v, name) for v in value))
    except ValueError as exc:
        raise RequestError(f"{name}: {exc}") from None


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: the settings, the action, and where it lands.

    ``canvas`` is the canvas when the request was made; ``placement`` is in the coordinates of the
    canvas the result lands on (for Expand, the grown canvas, whose origin is ``margins`` up-left
    of the old one). ``size`` is Generate's result size (txt2img ``width``/``height``); the other
    actions leave it ``None``: their result has the input's size and the server picks the model's
    working area. ``seed`` overrides ``settings.seed`` once the server has reported the seed it
    used, so a request from the history reproduces its image exactly.

    ``controls`` are the control layers that guide the job (their pixels are read over
    :attr:`input_rect` when it is sent). Upscale's ``placement`` is on the *scaled* canvas and
    ``source`` is the area it reads on the canvas as it is now. Making a control layer
    (``PREPROCESS``) runs ``preprocessor`` and marks the new layer with ``control_type``.
    """

    action: Action
    settings: GenerationSettings
    canvas: Rect
    placement: Placement
    size: tuple[int, int] | None = None
    seed: int | None = None
    live: bool = False
    controls: tuple[ControlInput, ...] = ()
    source: Rect | None = None
    preprocessor: str = ""
    control_type: str = ""
    #: Reference layers (control inputs of a reference type, see references.py) and region layers;
    #: their pixels are read when the job is sent (guides.py).
    references: tuple[ControlInput, ...] = ()
    regions: tuple[RegionInput, ...] = ()

    @property
    def task(self) -> str:
        return self.action.task

    @property
    def effective_seed(self) -> int | None:
        return self.seed if self.seed is not None else self.settings.seed

    @property
    def needs_image(self) -> bool:
        """Whether the job sends the visible image of ``input_rect``."""
        return self.action is not Action.GENERATE

    @property
    def needs_mask(self) -> bool:
        return self.action is Action.FILL

    @property
    def input_rect(self) -> Rect:
        """The canvas area (in the canvas as it is now) whose pixels the job sends; control
        layers are read over the same area."""
        if self.action is Action.EXPAND:
            return self.canvas
        return self.source if self.source is not None else self.placement.region

    @property
    def control_size(self) -> tuple[int, int]:
        """The size control images are sent at: the result's (Generate: its generation size,
        whose aspect may differ slightly from the region's; the others: the input image's)."""
        if self.size is not None:
            return self.size
        return self.input_rect.width, self.input_rect.height

    @property
    def scaled_canvas(self) -> Rect:
        """Upscale: the canvas after the document is scaled by the factor (else the canvas)."""
        if self.action is not Action.UPSCALE:
            return self.canvas
        return Rect.of_size(*scaled_size(self.canvas.width, self.canvas.height, self.settings.upscale_factor))

    def with_seed(self, seed: int) -> "GenerationRequest":
        return replace(self, seed=seed)

    def job_params(self) -> JobParams:
        s = self.settings
        width, height = self.size if self.size is not None else (None, None)
        margins = None
        if self.action is Action.EXPAND:
            m = s.margins
            margins = WireMargins(m.left, m.top, m.right, m.bottom)
        if self.action is Action.PREPROCESS:  # no diffusion model: only the preprocessor matters
            return JobParams(seed=self.effective_seed, preprocessor=self.preprocessor, previews=False,
                             result_format=ImageFormat.RGBA8)
        strength = None
        if self.action is Action.REFINE:
            strength = s.strength
        elif self.action is Action.FILL:
            strength = 1.0
        elif self.action is Action.UPSCALE:
            strength = s.upscale_strength
        upscale = s.upscale_factor if self.action is Action.UPSCALE else None
        batch = 1 if self.action is Action.UPSCALE else s.batch_size
        return JobParams(
            prompt=s.prompt, negative_prompt=s.negative_prompt, model=s.model, seed=self.effective_seed,
            steps=s.steps, cfg_scale=s.cfg_scale, strength=strength, sampler=s.sampler,
            width=width, height=height, batch_size=batch, margins=margins, live=self.live,
            loras=tuple(choice.wire() for choice in s.loras), upscale_factor=upscale,
            previews=True, result_format=ImageFormat.RGBA8, region_mode=s.region_mode,
        )

    def submit(self, job_id: str, image: ImagePayload | None = None,
               mask: ImagePayload | None = None,
               control_images: tuple[ImagePayload, ...] | list[ImagePayload] = ()) -> tuple[SubmitJob, list[ImagePayload]]:
        """The wire message for this request and the images it refers to.

        ``image`` (RGBA8, the visible pixels of :attr:`input_rect`) is required for every action
        but Generate; ``mask`` (grey8, same size, 255 = repaint) for Fill; ``control_images``
        (RGBA8 of :attr:`control_size`), one per entry of :attr:`controls`, in order. Raises
        :class:`RequestError` when one is missing or has the wrong size.
        """
        roles: dict[str, ImagePayload] = {}
        want = self.input_rect
        if self.needs_image:
            if image is None:
                raise RequestError(f"{self.action.label} needs the image of the area it changes")
            if (image.width, image.height) != (want.width, want.height) or image.format is not ImageFormat.RGBA8:
                raise RequestError(f"{self.action.label} needs an rgba8 image of {want.width}x{want.height}, "
                                   f"got {image.format.value} {image.width}x{image.height}")
            roles["image"] = image
        if self.needs_mask:
            if mask is None:
                raise RequestError("Fill needs a selection; select the area to repaint")
            if (mask.width, mask.height) != (want.width, want.height) or mask.format is not ImageFormat.GREY8:
                raise RequestError(f"Fill needs a grey8 mask of {want.width}x{want.height}, "
                                   f"got {mask.format.value} {mask.width}x{mask.height}")
            roles["mask"] = mask
        if len(control_images) != len(self.controls):
            raise RequestError(f"{self.action.label} has {len(self.controls)} control layer(s) but "
                               f"{len(control_images)} control image(s) were read")
        width, height = self.control_size
        for control, picture in zip(self.controls, control_images):
            if (picture.width, picture.height) != (width, height) or picture.format is not ImageFormat.RGBA8:
                raise RequestError(f"control layer {control.layer_name!r} needs an rgba8 image of {width}x{height}, "
                                   f"got {picture.format.value} {picture.width}x{picture.height}")
        params = self.job_params()
        if self.controls:
            params = replace(params, controls=tuple(c.unit(p.id) for c, p in zip(self.controls, control_images)))
        images = list(roles.values())
        for picture in control_images:  # one upload per distinct image (two layers may be identical)
            if all(picture.id != other.id for other in images):
                images.append(picture)
        job = SubmitJob(job_id, self.task, params, {role: img.id for role, img in roles.items()} or None)
        return job, images

    def layer_name(self, seed: int) -> str:
        """The name of a result layer: the prompt (shortened) and the seed; an upscale says its
        factor, a control layer its type and preprocessor."""
        if self.action is Action.PREPROCESS:
            return f"Control: {self.control_type} ({self.preprocessor})"
        prompt = " ".join(self.settings.prompt.split())
        if len(prompt) > 48:
            prompt = prompt[:47].rstrip() + "…"
        if self.action is Action.UPSCALE:
            return f"{prompt or 'Upscale'} ×{self.settings.upscale_factor:g} · seed {seed}"
        return f"{prompt or self.action.label} · seed {seed}"

    # -- serialisation

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (only str, int, float, bool, None, lists and dicts)."""
        return {
            "version": REQUEST_VERSION,
            "action": self.action.value,
            "settings": self.settings.to_dict(),
            "canvas": list(self.canvas.as_tuple()),
            "region": list(self.placement.region.as_tuple()),
            "crop": list(self.placement.crop.as_tuple()),
            "size": list(self.size) if self.size is not None else None,
            "seed": self.seed,
            "live": self.live,
            "controls": [control.to_dict() for control in self.controls],
            "source": list(self.source.as_tuple()) if self.source is not None else None,
            "preprocessor": self.preprocessor,
            "control_type": self.control_type,
            "references": [reference.to_dict() for reference in self.references],
            "regions": [region.to_dict() for region in self.regions],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GenerationRequest":
        """Inverse of :meth:`to_dict`. Raises :class:`RequestError` on anything malformed."""
        if not isinstance(data, Mapping):
            raise RequestError("a request must be a map")
        version = data.get("version")
        if version != REQUEST_VERSION:
            raise RequestError(f"request version {version!r} is not supported (this plugin reads {REQUEST_VERSION})")
        try:
            action = Action(data.get("action"))
        except ValueError:
            raise RequestError(f"unknown action {data.get('action')!r}") from None
        settings = data.get("settings")
        if not isinstance(settings, Mapping):
            raise RequestError("settings must be a map")
        size = data.get("size")
        if size is not None:
            if not isinstance(size, (list, tuple)) or len(size) != 2:
                raise RequestError(f"size must be [width, height], got {size!r}")
            size = (read_int(size[0], "size"), read_int(size[1], "size"))
        seed = data.get("seed")
        live = data.get("live", False)
        if not isinstance(live, bool):
            raise RequestError("live must be true or false")
        try:
            placement = Placement(_rect(data.get("region"), "region"), _rect(data.get("crop"), "crop"))
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        controls = data.get("controls", [])
        if not isinstance(controls, (list, tuple)):
            raise RequestError("controls must be a list")
        try:
            controls = tuple(ControlInput.from_dict(item) for item in controls)
        except ControlError as exc:
            raise RequestError(str(exc)) from None
        source = data.get("source")
        source = None if source is None else _rect(source, "source")
        references, regions = data.get("references", []), data.get("regions", [])
        if not isinstance(references, (list, tuple)) or not isinstance(regions, (list, tuple)):
            raise RequestError("references and regions must be lists")
        try:
            references = tuple(ControlInput.from_dict(item) for item in references)
            regions = tuple(RegionInput.from_dict(item) for item in regions)
        except (ControlError, RegionMarkError) as exc:
            raise RequestError(str(exc)) from None
        return cls(action, GenerationSettings.from_dict(settings), _rect(data.get("canvas"), "canvas"), placement,
                   size, None if seed is None else read_int(seed, "seed"), live, controls, source,
                   read_str(data.get("preprocessor", ""), "preprocessor"),
                   read_str(data.get("control_type", ""), "control_type"), references, regions)


def plan(action: Action, settings: GenerationSettings, canvas: Rect, selection: Rect | None,
         native_size: int = 512, live: bool = False, *, controls: tuple[ControlInput, ...] = (),
         preprocessor: str = "", control_type: str = "") -> GenerationRequest:
    """The request for ``action`` on a canvas with an optional selection (its bounding box).

    * Generate and Refine cover the selection's bounds (or the whole canvas);
    * Fill covers the selection's bounds plus ``settings.context`` pixels around them, and keeps
      only the selection; it needs a selection;
    * Expand covers the whole grown canvas; the selection plays no part;
    * Upscale reads the selection's bounds (or the canvas); its result covers that area on the
      document scaled by ``settings.upscale_factor``;
    * making a control layer (``PREPROCESS``, with ``preprocessor`` and ``control_type``) covers the
      selection's bounds (or the canvas), like Generate.

    ``controls`` (the document's control layers, for the four canvas actions) guide the job.
    The generation size follows the model's ``native_size`` (:func:`geometry.generation_size`).
    Raises :class:`RequestError` with a sentence for the painter when the action cannot run.
    """
    settings.check()
    if controls and not action.guided:
        raise RequestError(f"{action.label} takes no control layers")
    if action is Action.PREPROCESS and not (preprocessor and control_type):
        raise RequestError("pick a control type and a preprocessor to make a control layer")
    source = None
    try:
        if action is Action.EXPAND:
            grown = expanded_canvas(canvas, settings.margins)
            placement = Placement(grown, grown)
        elif action is Action.UPSCALE:
            source = job_region(canvas, selection)
            factor = settings.upscale_factor
            scaled = Rect.of_size(*scaled_size(canvas.width, canvas.height, factor))
            region = scaled_rect(source, factor)
            placement = Placement.for_job(region, region.intersect(scaled))
        elif action is Action.FILL:
            if selection is None:
                raise RequestError("Fill repaints the selection: select the area to fill first")
            region = job_region(canvas, selection, settings.context)
            placement = Placement.for_job(region, selection.intersect(canvas))
        else:
            region = job_region(canvas, selection)
            placement = Placement.for_job(region, region)
    except RegionError as exc:
        raise RequestError(str(exc)) from None
    # txt2img's width/height are the result's size, so Generate picks one near the model's native
    # area and the result is scaled to the region. Tasks with an input image get a result of the
    # input's size; the server scales to the model's working area itself.
    size = None
    if action is Action.GENERATE:
        size = generation_size(placement.region.width, placement.region.height, native_size)
    return GenerationRequest(action, settings, canvas, placement, size, live=live, controls=tuple(controls),
                             source=source, preprocessor=preprocessor if action is Action.PREPROCESS else "",
                             control_type=control_type if action is Action.PREPROCESS else "")
