"""Live mode's layer: the one *live layer* in the document live mode is on.

The live layer is the plugin's, not the painter's: it is added and removed without undo steps
(so turning live mode off leaves the document, its layers and its undo history exactly as the
painter left them), writing it is not an undo step either (so it never triggers a live job), and
it is hidden while the visible image is read (so the source is the painter's picture, never the
previous live result).

The painter may delete the live layer (an undoable step): the next live image brings it back.
If they undo the deletion, the old layer returns; it is adopted (Krita's undo history refers to
it) and the one inserted meanwhile is taken out, so there is never a second live layer.
Saving: :meth:`LiveLayer.take_out` removes it while the host writes the image to a file and
:meth:`LiveLayer.put_back` puts the same layer back (``krita_save_guard.py`` calls live mode's
``suspend``/``resume`` around Krita's save, export and close handlers).

No ``krita`` and no Qt here: the Krita side is :class:`~.host.LiveHost` (``krita_live.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .geometry import Rect
from .host import CanvasHost, Doc, HostError, Layer, LiveHost
from .live_settings import LiveStats
from .request import GenerationRequest

LIVE_LAYER_NAME = "Easel live"
#: Ids of live layers this mode made, remembered to recognise one an undo brings back.
_KNOWN_LAYERS = 256


@dataclass
class LiveImage:
    """The live layer's current final image: what *Keep* copies."""

    job_id: str
    bgra: bytes
    rect: Rect
    seed: int
    request: GenerationRequest


class LiveLayer:
    """The live layer of one document at a time. Main thread only; the methods raise
    :class:`~.host.HostError` when the host cannot do what they ask. ``say`` shows live mode's
    status line (what happened to the layer, in a sentence); ``stats`` counts adoptions and
    re-creations."""

    def __init__(self, host: CanvasHost, live_host: LiveHost, stats: LiveStats, say: Callable[[str], None]) -> None:
        self.host = host
        self.live_host = live_host
        self.stats = stats
        self._say = say
        self.doc: Doc = None
        self.layer: Layer = None
        #: The live layer's area that holds pixels (cleared by the next write elsewhere).
        self.written: Rect | None = None
        #: Out of the image while it is saved; ``missed``: something was not drawn meanwhile.
        self.suspended = False
        self.missed = False
        self._live_ids: dict[str, None] = {}

    def attach(self, doc: Doc) -> None:
        """Give ``doc`` its live layer: one of this session that an undo brought back while live
        was off is taken over rather than joined by a second one; else a new one on top."""
        known = self.live_host.find_layers(doc, list(self._live_ids))
        for extra in known[:-1]:
            self.live_host.remove_live_layer(doc, extra)
        layer = known[-1] if known else self.live_host.insert_live_layer(doc, LIVE_LAYER_NAME)
        self._remember(doc, layer)
        self.doc, self.layer = doc, layer
        self.written = self.host.canvas_rect(doc) if known else None  # an older image: cleared by the first write
        self.suspended = False

    def detach(self) -> None:
        """Take the live layer out of its document (no undo step) and forget the document."""
        doc, layer = self.doc, self.layer
        self.doc = self.layer = None
        self.written = None
        self.suspended = False  # a suspended layer is out of the image already
        if (doc is not None and layer is not None and self.host.is_open(doc)
                and self.live_host.live_layer_alive(doc, layer)):
            self.live_host.remove_live_layer(doc, layer)

    def _layer_id(self, doc: Doc, layer: Layer) -> str:
        return self.host.layer_info(doc, layer)[1]

    def _remember(self, doc: Doc, layer: Layer) -> None:
        self._live_ids[self._layer_id(doc, layer)] = None
        while len(self._live_ids) > _KNOWN_LAYERS:
            self._live_ids.pop(next(iter(self._live_ids)))

    def _insert(self, doc: Doc) -> None:
        self.layer = self.live_host.insert_live_layer(doc, LIVE_LAYER_NAME)
        self._remember(doc, self.layer)
        self.written = None

    def reconcile(self, shown: LiveImage | None) -> None:
        """Exactly one live layer while live mode is on.

        The painter may delete the live layer (one undo step) and undo that later, which brings
        the *old* layer back, maybe next to one inserted meanwhile. Krita's undo history refers to
        the restored one, so that one is kept (adopted, and redrawn with ``shown``, the newest live
        image) and any other live layer, which no undo step knows, is taken out without an undo
        step. A deleted live layer comes back with the next live image (:meth:`write`).
        """
        doc = self.doc
        if self.suspended or doc is None:
            return
        current = self.layer if self.layer is not None and self.live_host.live_layer_alive(doc, self.layer) else None
        current_id = self._layer_id(doc, current) if current is not None else None
        restored = [layer for layer in self.live_host.find_layers(doc, list(self._live_ids))
                    if self._layer_id(doc, layer) != current_id]
        if restored:
            for other in restored[:-1] + ([current] if current is not None else []):
                self.live_host.remove_live_layer(doc, other)
            self.layer = restored[-1]
            self.written = self.host.canvas_rect(doc)  # it holds an older image: cleared by the next write
            self.stats.layers_adopted += 1
            if shown is not None:
                self.write(shown.bgra, shown.rect, shown)
            self._say("Live: the live layer came back with the undo; it shows the newest live image again.")
        elif current is None and self.layer is not None:
            self.layer, self.written = None, None
            self._say("Live: the live layer was deleted; the next live image brings it back "
                      "(turn Live off to end live mode).")

    def write(self, bgra: bytes, rect: Rect, shown: LiveImage | None) -> None:
        """``bgra`` over ``rect`` into the live layer (the area of an earlier write cleared),
        bringing the layer back first when the painter deleted it. While the image is being saved
        nothing is written: :meth:`put_back` draws ``shown`` then."""
        doc = self.doc
        if doc is None or not self.host.is_open(doc):
            raise HostError("the image was closed")
        if self.suspended:
            self.missed = True  # the image is being saved; put_back() draws the newest result
            return
        if self.layer is None or not self.live_host.live_layer_alive(doc, self.layer):
            self.reconcile(shown)
            if self.layer is None:  # deleted by the painter: it comes back with this image
                self._insert(doc)
                self.stats.layers_recreated += 1
        clear = self.written if self.written is not None and self.written != rect else None
        self.live_host.write_live(doc, self.layer, bgra, rect, clear)
        self.written = rect

    def take_out(self, shown: LiveImage | None) -> None:
        """Remove the live layer (no undo step) until :meth:`put_back`; nothing is drawn meanwhile."""
        self.reconcile(shown)
        if self.layer is not None and self.live_host.live_layer_alive(self.doc, self.layer):
            self.live_host.remove_live_layer(self.doc, self.layer)
        self.suspended, self.missed = True, False

    def put_back(self, shown: LiveImage | None) -> None:
        """The same layer back on top with its pixels (no undo step), and ``shown`` drawn when a
        newer image arrived while it was out."""
        doc = self.doc
        if self.layer is not None:
            self.layer = self.live_host.insert_live_layer(doc, LIVE_LAYER_NAME, self.layer)
        else:
            self._insert(doc)
        if self.missed and shown is not None:
            self.write(shown.bgra, shown.rect, shown)
        self.missed = False

    def keep(self, name: str, shown: LiveImage) -> Layer:
        """A copy of ``shown`` as a new paint layer under the live layer: one undo step."""
        if self.suspended:
            raise HostError("the image is being saved; keep the live result once it is done")
        doc = self.doc
        if not self.host.is_open(doc):
            raise HostError("the live image was closed")
        self.reconcile(shown)
        if self.layer is None:  # the painter deleted it: back with the result it shows
            self.write(shown.bgra, shown.rect, shown)
        return self.live_host.keep_live(doc, self.layer, name, shown.bgra, shown.rect)
