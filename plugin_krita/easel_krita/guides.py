"""Guides by example and by place: a document's reference layers and region layers, from their
marks to the job's ``references`` and ``regions``.

The controller asks this room twice per guided job (Generate, Refine, Fill, Expand): when it plans
the job (:meth:`Guides.plan`: which layers, which adapters, within the server's limits; a sentence
when not) and when it sends it (:meth:`Guides.attach`: the layers' pixels read, the images added
to the job). Reference layers are control layers of a reference type (``references.py``), so they
are marked, listed and stored like control layers; region layers have marks of their own
(``regions.py``), which this room reads and writes in the document.

What is sent:

* a reference is the layer's own picture, cropped to what is painted on it (anywhere on the
  canvas: a photo pasted beside the drawing works), at most
  :data:`~.clientkit.guides.REFERENCE_MAX_SIDE` px a side, RGBA;
* a region's mask is the layer's coverage (alpha; a group's merged alpha) over the job's input
  area, at the size control images have (:attr:`~.request.GenerationRequest.control_size`),
  ``grey8``. A region that covers nothing of that area is left out of the job.

No ``krita`` and no Qt here: the document is reached through the :class:`~.host.CanvasHost`.
"""
from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, Callable, Sequence

from . import pixels
from .canvas_io import CanvasIO
from .clientkit import wording
from .clientkit.guides import GuideError, check_counts, coverage_mask, fit_within, is_empty, opaque_bounds, with_guides
from .clientkit.limits import ServerLimits
from .control import ControlError
from .geometry import Rect
from .host import CanvasHost, ControlLayer, HostError
from .protocol import ImageFormat, ImagePayload, ModelInfo, Region, SubmitJob, Welcome
from .references import is_reference, plan_references, reference_image
from .regions import (
    ANNOTATION_DESCRIPTION, ANNOTATION_TYPE, RegionInput, RegionLayer, check_prompt, decode_annotation,
    encode_annotation,
)
from .request import Action, GenerationRequest, RequestError


class Guides:
    """Reference and region layers of the documents. Main thread, like the controller."""

    def __init__(self, host: CanvasHost, canvas: CanvasIO) -> None:
        self.host = host
        self.canvas = canvas
        self._watchers: list[Callable[[], None]] = []

    def watch(self, watcher: Callable[[], None]) -> None:
        """``watcher`` hears every change of a region mark (live mode follows them this way: a
        mark is an annotation, no undo step, so no canvas change tells of it)."""
        self._watchers.append(watcher)

    # -- region marks

    def _marks(self, doc: Any) -> dict[str, str]:
        return decode_annotation(self.host.read_annotation(doc, ANNOTATION_TYPE))

    def _store(self, doc: Any, marks: dict[str, str]) -> None:
        self.host.write_annotation(doc, ANNOTATION_TYPE, ANNOTATION_DESCRIPTION, encode_annotation(marks))
        self.host.mark_modified(doc)  # not an undo step: make sure saving keeps it
        for watcher in list(self._watchers):
            watcher()

    def region_layers(self, doc: Any) -> list[RegionLayer]:
        """``doc``'s region layers, bottom of the stack first (marks of deleted layers are skipped)."""
        marks = self._marks(doc)
        if not marks:
            return []
        out = []
        for layer in self.host.layers(doc):
            name, layer_id = self.host.layer_info(doc, layer)
            if layer_id in marks:
                out.append(RegionLayer(layer, name, layer_id, marks[layer_id]))
        return out

    def mark_region(self, doc: Any, layer: Any, prompt: str) -> str:
        """Mark ``layer`` as a region with ``prompt`` (or change its prompt); returns its name.
        Raises :class:`~.regions.RegionMarkError` or :class:`HostError` with a sentence."""
        if layer is None:
            raise HostError("select the layer (or group) to use as a region first")
        prompt = check_prompt(prompt)
        name, layer_id = self.host.layer_info(doc, layer)
        if name.startswith("Easel preview"):
            raise HostError("that is Easel's preview of a running job; pick a layer of your own")
        marks = self._marks(doc)
        marks[layer_id] = prompt
        self._store(doc, marks)
        return name

    def set_region(self, doc: Any, layer_id: str, prompt: str | None) -> str:
        """Change the prompt of the region ``layer_id`` (``None``: unmark it; the layer stays);
        returns its name. Raises :class:`HostError` when the layer is gone."""
        match = next((r for r in self.region_layers(doc) if r.layer_id == layer_id), None)
        if match is None:
            raise HostError("that region's layer is no longer in this image")
        marks = self._marks(doc)
        if prompt is None:
            marks.pop(layer_id, None)
        else:
            marks[layer_id] = check_prompt(prompt)
        self._store(doc, marks)
        return match.name

    # -- jobs

    def unused_by_upscale(self, doc: Any = None) -> str:
        """The sentence Upscale says (before the click and with its result) when ``doc`` (``None``:
        the active image) has reference or region layers, or ``""``: the server's ``upscale`` takes
        no references or regions (docs/protocol.md §11.5), so Upscale sends none. Never raises."""
        try:
            doc = self.host.active_document() if doc is None else doc
            references = [c.name for c in self.host.control_layers(doc) if is_reference(c.spec.type) and c.spec.strength > 0]
            regions = [r.name for r in self.region_layers(doc)]
        except Exception:
            return ""
        names = [f"the reference layer {n!r}" for n in references] + [f"the region layer {n!r}" for n in regions]
        if not names:
            return ""
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        return f"Upscale does not use {listed}: the server's upscale takes no references or regions."

    def left_out(self, request: GenerationRequest, doc: Any) -> str:
        """What a job's done line adds about the guides it leaves out (Upscale's sentence), or ``""``."""
        return f" {self.unused_by_upscale(doc)}".rstrip() if request.action is Action.UPSCALE else ""

    def plan(self, request: GenerationRequest, doc: Any, marked: Sequence[ControlLayer], model: ModelInfo | None,
             models: Sequence[ModelInfo], welcome: Welcome | None) -> tuple[GenerationRequest, tuple[Any, ...]]:
        """``request`` with ``doc``'s references and regions, and their layers (references first,
        then regions, in the order of ``request.references`` and ``request.regions``). A request
        whose action takes no guides comes back as it is. Raises :class:`RequestError` (a
        sentence) when an adapter is missing or the server's limits are exceeded."""
        if not request.action.guided:
            return request, ()
        family = model.family if model is not None else ""
        try:
            references = plan_references([(c.name, c.layer_id, c.spec) for c in marked], models, family)
            regions = self.region_layers(doc)
            check_counts(len(references), len(regions), ServerLimits.from_welcome(welcome))
        except (ControlError, GuideError) as exc:
            raise RequestError(str(exc)) from None
        if not references and not regions:
            return request, ()
        by_id = {c.layer_id: c.layer for c in marked}
        layers = tuple(by_id[r.layer_id] for r in references) + tuple(r.layer for r in regions)
        inputs = tuple(RegionInput(r.name, r.layer_id, r.prompt) for r in regions)
        return replace(request, references=references, regions=inputs), layers

    async def attach(self, doc: Any, request: GenerationRequest, layers: Sequence[Any], job: SubmitJob,
                     images: Sequence[ImagePayload]) -> tuple[SubmitJob, list[ImagePayload]]:
        """``job`` (from ``request.submit``) with the references and regions of ``request``,
        their pixels read from ``layers`` (as :meth:`plan` gave them), and the images to upload.
        Raises :class:`HostError` when a layer was deleted, :class:`RequestError` when a
        reference is empty."""
        if not request.references and not request.regions:
            return job, list(images)
        reference_layers, region_layers = layers[:len(request.references)], layers[len(request.references):]
        wire_references, wire_regions, pictures = [], [], []
        canvas = self.host.canvas_rect(doc)
        for reference, layer in zip(request.references, reference_layers):
            self._check_alive(doc, layer, f"the reference layer {reference.layer_name!r}")
            bgra = await self.canvas.read_strips(doc, canvas, layer)
            picture = await asyncio.to_thread(self.reference_payload, bgra, canvas)
            if picture is None:
                raise RequestError(wording.empty_reference(reference.layer_name))
            wire_references.append(reference_image(reference, picture.id))
            pictures.append(picture)
        rect, size = request.input_rect, request.control_size
        for region, layer in zip(request.regions, region_layers):
            self._check_alive(doc, layer, f"the region layer {region.layer_name!r}")
            bgra = await self.canvas.read_strips(doc, rect, layer)
            mask = await asyncio.to_thread(self.mask_payload, bgra, rect, *size)
            if mask is None:
                continue  # painted elsewhere: nothing of it in this job's area
            wire_regions.append(Region(mask.id, region.prompt))
            pictures.append(mask)
        return with_guides(job, images, wire_references, wire_regions, pictures)

    def _check_alive(self, doc: Any, layer: Any, what: str) -> None:
        if not self.host.layer_alive(doc, layer):
            raise HostError(f"{what} was deleted before the job was sent")

    def reference_payload(self, bgra: bytes, rect: Rect) -> ImagePayload | None:
        """Worker thread: a layer's BGRA over ``rect`` → the RGBA picture of what is painted on it,
        at most :data:`REFERENCE_MAX_SIDE` a side, hashed; ``None`` when nothing is."""
        box = opaque_bounds(bgra, rect.width, rect.height)
        if box is None:
            return None
        x, y, width, height = box
        rgba = pixels.swap_red_blue(pixels.crop(bgra, rect.width, rect.height, x, y, width, height))
        fitted = fit_within(width, height)
        if fitted != (width, height):
            rgba = self.host.scale_rgba(rgba, width, height, *fitted)
        payload = ImagePayload.build(ImageFormat.RGBA8, *fitted, rgba)
        payload.id  # hashed here, not on the main thread
        return payload

    def mask_payload(self, bgra: bytes, rect: Rect, width: int, height: int) -> ImagePayload | None:
        """Worker thread: a layer's BGRA over ``rect`` → its coverage as a grey8 mask of
        ``width`` x ``height``, hashed; ``None`` when it covers nothing there."""
        if (rect.width, rect.height) != (width, height):
            bgra = self.host.scale_rgba(bgra, rect.width, rect.height, width, height)
        mask = coverage_mask(bgra, width, height)
        if is_empty(mask):
            return None
        payload = ImagePayload.build(ImageFormat.GREY8, width, height, mask)
        payload.id
        return payload
