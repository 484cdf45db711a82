"""Canvas I/O: reading a document's pixels for a job and writing results and previews into
layers, without holding Krita's UI.

Reads and writes happen on the main thread (the host's API), in strips of at most ``strip_bytes``
with a loop turn between them; channel swaps, crops, masks, scaling and hashing run on worker
threads (the methods marked so). Every main-thread call is timed through ``measure``. No ``krita``
and no Qt here: the document is reached through the :class:`~.host.CanvasHost`.
"""
from __future__ import annotations

import asyncio
import time
from typing import Callable, Sequence

from . import pixels
from .geometry import Placement, Rect
from .host import CanvasHost, Doc, HostError, Layer
from .protocol import ImageFormat, ImagePayload, StepPreview
from .request import GenerationRequest

#: Largest piece of a layer read or written in one main-thread call (bytes of BGRA).
STRIP_BYTES = 4 * 1024 * 1024


class CanvasIO:
    def __init__(self, host: CanvasHost, measure: Callable[[str, float], None], *,
                 strip_bytes: int = STRIP_BYTES, clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.strip_bytes = strip_bytes
        self.clock = clock
        self._measure = measure

    async def read_strips(self, doc: Doc, rect: Rect, layer: Layer = None) -> bytes:
        """The visible pixels of ``rect`` (or ``layer``'s own), read in strips so the UI keeps
        running between them."""
        parts = []
        for first, rows in pixels.row_chunks(rect.width, rect.height, self.strip_bytes):
            started = self.clock()
            strip = Rect(rect.x, rect.y + first, rect.width, rows)
            parts.append(self.host.read_visible(doc, strip) if layer is None else self.host.read_layer(doc, layer, strip))
            self._measure("read canvas strip", started)
            await asyncio.sleep(0)
        return b"".join(parts)

    async def read_source(self, doc: Doc, rect: Rect, source_layer: Layer = None,
                          exclude_layers: Sequence[Layer] = ()) -> bytes:
        """What a job works on: the visible image without ``exclude_layers`` (the control layers:
        they guide, they are not part of the picture; hidden for the read, not an undo step), or
        ``source_layer``'s own pixels."""
        if source_layer is not None:
            if not self.host.layer_alive(doc, source_layer):
                raise HostError("the layer to make the control layer from was deleted; select another one")
            return await self.read_strips(doc, rect, source_layer)
        hidden = self.host.hide_layers(doc, exclude_layers) if exclude_layers else []
        try:
            return await self.read_strips(doc, rect)
        finally:
            if hidden:
                self.host.show_layers(doc, hidden)

    async def read_control_images(self, doc: Doc, request: GenerationRequest,
                                  layers: Sequence[Layer]) -> list[ImagePayload]:
        """Each control layer's own pixels over ``request``'s input area, as RGBA at its control
        size, one per ``request.controls`` entry (``layers`` in the same order, as
        the controller's ``guidance`` gives them). Their content ids are computed too (off the main thread).
        Raises :class:`HostError` when a layer was deleted meanwhile."""
        rect = request.input_rect
        width, height = request.control_size
        out = []
        for control, layer in zip(request.controls, layers):
            if not self.host.layer_alive(doc, layer):
                raise HostError(f"the control layer {control.layer_name!r} was deleted before the job was sent")
            bgra = await self.read_strips(doc, rect, layer)
            out.append(await asyncio.to_thread(self.control_payload, bgra, rect, width, height))
        return out

    def control_payload(self, bgra: bytes, rect: Rect, width: int, height: int) -> ImagePayload:
        """Worker thread: BGRA over ``rect`` → an RGBA payload at ``width`` x ``height``, hashed."""
        payload = ImagePayload.build(ImageFormat.RGBA8, width, height, self.control_image(bgra, rect, width, height))
        payload.id  # the SHA-256 here, not on the main thread when the job is keyed or sent
        return payload

    def control_image(self, bgra: bytes, rect: Rect, width: int, height: int) -> bytes:
        """Worker thread: BGRA over ``rect`` → RGBA at ``width`` x ``height``."""
        rgba = pixels.swap_red_blue_chunked(bgra, rect.width, rect.height)
        if (rect.width, rect.height) != (width, height):
            rgba = self.host.scale_rgba(rgba, rect.width, rect.height, width, height)
        return rgba

    def fit_preview(self, preview: StepPreview, placement: Placement, mask: bytes | None) -> bytes:
        """Worker thread: the preview as BGRA over the placement's crop — decoded, scaled to the
        region, cropped, masked to the selection."""
        region, crop = placement.region, placement.crop_in_region
        bgra = self.host.decode_preview(preview.jpeg, region.width, region.height)
        bgra = pixels.crop(bgra, region.width, region.height, crop.x, crop.y, crop.width, crop.height)
        if mask is not None:
            bgra = pixels.apply_mask(bgra, mask, crop.width, crop.height)
        return bgra

    def prepare_result(self, image: ImagePayload, placement: Placement, mask: bytes | None) -> bytes:
        """Worker thread: a result image as BGRA over the crop, scaled and masked."""
        region, crop = placement.region, placement.crop_in_region
        rgba = image.data
        if placement.needs_scaling(image.width, image.height):
            rgba = self.host.scale_rgba(rgba, image.width, image.height, region.width, region.height)
        rgba = pixels.crop(rgba, region.width, region.height, crop.x, crop.y, crop.width, crop.height)
        bgra = pixels.swap_red_blue_chunked(rgba, crop.width, crop.height)
        if mask is not None:
            bgra = pixels.apply_mask(bgra, mask, crop.width, crop.height)
        return bgra

    async def write_strips(self, doc: Doc, layer: Layer, bgra: bytes, rect: Rect) -> None:
        view = memoryview(bgra)
        stride = rect.width * pixels.BPP
        for first, rows in pixels.row_chunks(rect.width, rect.height, self.strip_bytes):
            started = self.clock()
            self.host.write_layer(doc, layer, bytes(view[first * stride:(first + rows) * stride]),
                                  Rect(rect.x, rect.y + first, rect.width, rows))
            self._measure("write layer strip", started)
            await asyncio.sleep(0)
        started = self.clock()
        self.host.refresh(doc, layer, rect)
        self._measure("refresh canvas", started)
