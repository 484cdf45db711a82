"""A batch of results lands as ONE undo step: a group layer holding one layer per image.

Krita 5.1's scripting API has no undo macro: every layer added to the image is a step of its own,
so a batch of four used to take four undos. A group built off the image, filled there, and then
added is one step (the host's :meth:`~.host.CanvasHost.add_group`); one undo takes every image of
the batch away, one redo brings them back. The preview layer the first image was drawn in goes
first (undone without a trace when it is still the newest step). No ``krita`` and no Qt here.
"""
from __future__ import annotations

import asyncio
from typing import Any, Sequence

from .protocol import ImagePayload


def group_name(request: Any, seeds: Sequence[int]) -> str:
    """``"a lighthouse · 4 images, seeds 7–10"``."""
    prompt = request.layer_name(seeds[0]).rsplit(" · seed ", 1)[0]
    span = f"{seeds[0]}–{seeds[-1]}" if seeds[-1] != seeds[0] else f"{seeds[0]}"
    return f"{prompt} · {len(seeds)} images, seeds {span}"


async def place_batch(controller: Any, record: Any, seeds: Sequence[int], images: Sequence[ImagePayload]) -> bool:
    """Place a result of several images as one group (one undo step) and count them in the
    controller's stats. Returns ``False`` (nothing done) for a single image, which the controller
    places in its preview layer as before. Raises what the host raises (:class:`~.host.HostError`)."""
    if len(images) < 2:
        return False
    request, doc, host = record.request, record.doc, controller.host
    placement = request.placement
    seeds = [seeds[i] if i < len(seeds) else seeds[0] for i in range(len(images))]
    layers = []
    for index, image in enumerate(images):
        bgra = await asyncio.to_thread(controller.canvas.prepare_result, image, placement, record.crop_mask)
        layers.append((request.layer_name(seeds[index]), bgra, placement.crop))
    if record.preview_layer is not None:
        if host.layer_alive(doc, record.preview_layer):
            host.remove_layer(doc, record.preview_layer)
        record.preview_layer = None
    started = controller.clock()
    host.add_group(doc, group_name(request, seeds), layers)
    controller._measure("add batch group", started)
    for name, _, _ in layers:
        controller.stats.layers_created.append(name)
        controller.stats.results_applied += 1
    return True
