"""A history result shown on the canvas for a look, without becoming part of the picture.

A click on a thumbnail in the docker's history calls :meth:`HistoryPreview.toggle`: the result is
drawn where it was first placed, in a locked layer named "Easel preview: …" on top of the stack
(Krita shows only layers; this one is taken away again, and its adding undone when nothing
happened since, so it leaves no step in the Undo History). A second click on the same thumbnail,
a click on another one, Apply (double click), any action that reads the canvas, and saving take it
away first. The message line says what is shown and what the next click does. No ``krita`` and no
Qt here: the canvas is reached through the controller's host and canvas I/O.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from . import wording
from .history import LOST
from .host import HostError

log = logging.getLogger("easel.krita")

PREVIEW_PREFIX = "Easel preview: "


class HistoryPreview:
    """One per controller (the extension owns it). Methods run on the main thread; never raise."""

    def __init__(self, controller: Any) -> None:
        self.controller = controller
        #: The result shown, as (entry id, image index), its document and its layer.
        self.key: tuple[int, int] | None = None
        self.doc: Any = None
        self.layer: Any = None
        self._drawing: asyncio.Task | None = None

    @property
    def showing(self) -> bool:
        return self.key is not None

    def toggle(self, entry_id: int, index: int = 0) -> None:
        """Preview history image ``index`` of entry ``entry_id`` on the active image, or take the
        preview away when that very result is shown."""
        if self.key == (entry_id, index):
            self.hide()
            self.controller.say("Preview hidden.")
            return
        self.show(entry_id, index)

    def show(self, entry_id: int, index: int = 0) -> None:
        controller = self.controller
        self.hide()
        try:
            entry = controller.history.get(entry_id)
            if entry.status == LOST or not 0 <= index < len(entry.images):
                raise HostError("that result has no image to preview (the history keeps the newest ones); "
                                "use Reuse seed to make it again")
            doc = controller.host.active_document()
            if not controller.host.canvas_rect(doc).contains(entry.request.placement.crop):
                raise HostError("that result was placed on a larger canvas than this one; it cannot be previewed here")
        except KeyError as exc:
            controller.say(str(exc.args[0]), error=True)
            return
        except HostError as exc:
            controller.say(str(exc), error=True)
            return
        self.key, self.doc = (entry_id, index), doc
        self._drawing = controller.connection.spawn(self._draw(entry, index, doc), f"preview history {entry_id}")

    async def _draw(self, entry: Any, index: int, doc: Any) -> None:
        controller, host = self.controller, self.controller.host
        request = entry.request
        try:
            placement = request.placement
            bgra = await asyncio.to_thread(controller.canvas.prepare_result, entry.images[index], placement, entry.mask)
            if self.key != (entry.id, index) or not host.is_open(doc):
                return  # hidden (or another one asked for) meanwhile
            name = request.layer_name(entry.seed_of(index))
            self.layer = host.add_layer(doc, PREVIEW_PREFIX + name, True)
            await controller.canvas.write_strips(doc, self.layer, bgra, placement.crop)
            if self.key != (entry.id, index):
                return
            host.show_layer(doc, self.layer)
            controller.say(f"Previewing {name}: double-click it to apply it as a new layer, click it again to hide it.")
        except HostError as exc:
            self.hide()
            controller.say(str(exc), error=True)
        except Exception as exc:
            log.exception("easel: previewing history entry %s failed", entry.id)
            self.hide()
            controller.say(wording.unexpected("preview the result", exc), error=True)

    def hide(self) -> None:
        """Take the preview away (its layer's adding undone when it is still the newest step)."""
        layer, doc = self.layer, self.doc
        self.key = self.doc = self.layer = None
        drawing, self._drawing = self._drawing, None
        if drawing is not None and not drawing.done():
            drawing.cancel()
        if layer is None:
            return
        try:
            host = self.controller.host
            if host.is_open(doc) and host.layer_alive(doc, layer):
                host.remove_layer(doc, layer)
        except Exception:
            log.exception("easel: taking the history preview away failed")

    def forget(self, entry_id: int) -> None:
        """The entry was discarded: its preview goes too."""
        if self.key is not None and self.key[0] == entry_id:
            self.hide()
