"""The host interface: what the plugin's rooms need from the painting program, and the errors it
raises. Krita's implementations are ``krita_adapter.KritaCanvas`` (:class:`CanvasHost`) and
``krita_live.KritaLiveHost`` (:class:`LiveHost`); the tests' is an in-memory canvas
(``tests/krita/krita_fake_host.py``). No ``krita`` and no Qt here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from .control import ControlSpec
from .geometry import Margins, Rect

#: A document as the host hands it out. Opaque to the plugin's rooms: they keep it, compare it with
#: ``==`` (Krita hands out a new wrapper per call) and give it back to the host, never look into it.
Doc = object
#: A layer as the host hands it out (``None`` where there is none); opaque like :data:`Doc`.
Layer = object


class HostError(Exception):
    """The host cannot do what was asked (no document open, a layer vanished). The message is a
    sentence for the painter."""


class NotPlaced(Exception):
    """A result arrived but cannot be placed where it belongs (the image was closed, the canvas
    changed size). The message is the reason, for the history entry's status."""


class CanvasHost(Protocol):
    """What the controller needs from the painting program. Every method runs on the main thread
    except :meth:`decode_preview` and :meth:`scale_rgba`, which must be safe on a worker thread.

    Documents and layers are opaque handles. Pixel buffers are BGRA (Krita's memory order) with
    straight alpha; selection masks are one byte per pixel, 255 = selected.
    """

    def active_document(self) -> Doc: ...
    def is_open(self, doc: Doc) -> bool: ...
    def canvas_rect(self, doc: Doc) -> Rect: ...
    def selection_rect(self, doc: Doc) -> Rect | None: ...
    def read_visible(self, doc: Doc, rect: Rect) -> bytes: ...
    def read_selection(self, doc: Doc, rect: Rect) -> bytes: ...
    def settle(self, doc: Doc) -> None: ...
    def add_layer(self, doc: Doc, name: str, locked: bool) -> Layer: ...  # hidden until shown
    def show_layer(self, doc: Doc, layer: Layer) -> None: ...
    def layer_alive(self, doc: Doc, layer: Layer) -> bool: ...
    def write_layer(self, doc: Doc, layer: Layer, bgra: bytes, rect: Rect) -> None: ...
    def refresh(self, doc: Doc, layer: Layer, rect: Rect) -> None: ...  # show what write_layer wrote (if visible)
    def finish_layer(self, doc: Doc, layer: Layer, name: str) -> None: ...
    def remove_layer(self, doc: Doc, layer: Layer) -> None: ...
    def add_group(self, doc: Doc, name: str, layers: Sequence[tuple[str, bytes, Rect]]) -> Layer: ...  # one undo step (batch.py)
    def grow_canvas(self, doc: Doc, margins: Margins) -> None: ...
    def shrink_canvas(self, doc: Doc, margins: Margins) -> None: ...
    def decode_preview(self, jpeg: bytes, width: int, height: int) -> bytes: ...
    def scale_rgba(self, data: bytes, width: int, height: int, new_width: int, new_height: int) -> bytes: ...

    # decode_preview and scale_rgba run on worker threads.

    # -- control layers, Upscale (see ControlLayer; marks are kept in the document)
    def control_layers(self, doc: Doc) -> list["ControlLayer"]: ...  # marked layers in the stack, bottom first
    def mark_control(self, doc: Doc, layer: Layer, spec: ControlSpec | None) -> None: ...  # None: unmark
    def active_layer(self, doc: Doc) -> Layer: ...  # the layer the painter selected, or None
    def layer_info(self, doc: Doc, layer: Layer) -> tuple[str, str]: ...  # (name, stable id)
    def read_layer(self, doc: Doc, layer: Layer, rect: Rect) -> bytes: ...  # the layer's own BGRA pixels
    def hide_layers(self, doc: Doc, layers: Sequence[Layer]) -> list[Layer]: ...  # returns those it hid
    def show_layers(self, doc: Doc, layers: Sequence[Layer]) -> None: ...
    def scale_canvas(self, doc: Doc, width: int, height: int) -> None: ...  # every layer scaled; undoable

    # -- region layers (guides.py: marks in an annotation, layers found by id)
    def layers(self, doc: Doc) -> list[Layer]: ...  # every layer (groups included), bottom first
    def mark_modified(self, doc: Doc) -> None: ...  # a mark changed: saving must keep it

    # -- the history stored in the document (an annotation, saved in the file). Writing it leaves
    # the document's modified flag as it was: the change it records already set the flag when it
    # touched the picture, and a write landing after a save must not set it again.
    def read_annotation(self, doc: Doc, kind: str) -> bytes | None: ...
    def write_annotation(self, doc: Doc, kind: str, description: str, data: bytes) -> None: ...


@dataclass(frozen=True)
class ControlLayer:
    """A layer marked as a control input, as the docker lists it."""

    layer: Layer
    name: str
    layer_id: str
    spec: ControlSpec
    visible: bool = True


class LiveHost(Protocol):
    """What live mode needs from the painting program beyond :class:`~.host.CanvasHost`.
    Main thread only. None of these may add an undo step except :meth:`keep_live`."""

    def busy(self, doc: Doc) -> bool: ...
    # True while the painter's stroke (or any other work on the image) is still running: the
    # canvas is read only once it is done, without waiting on the main thread for it.

    def insert_live_layer(self, doc: Doc, name: str, layer: Layer = None) -> Layer: ...
    # A new locked paint layer at the top of the stack, added without an undo step; the active
    # layer stays the painter's. With ``layer`` (one removed by remove_live_layer), that layer
    # goes back on top instead, pixels and id unchanged. Raises HostError.

    def find_layers(self, doc: Doc, ids: list[str]) -> list[Layer]: ...
    # The layers of ``doc``'s stack whose id (``layer_info``'s second value) is in ``ids``,
    # bottom first.

    def remove_live_layer(self, doc: Doc, layer: Layer) -> None: ...  # without an undo step

    def live_layer_alive(self, doc: Doc, layer: Layer) -> bool: ...

    def write_live(self, doc: Doc, layer: Layer, bgra: bytes, rect: Rect, clear: Rect | None) -> None: ...
    # Make ``clear`` transparent (the area of an earlier write, when it differs), write ``bgra``
    # over ``rect``, and show the change on the canvas.

    def read_source(self, doc: Doc, rect: Rect, hidden: list[Layer]) -> bytes: ...
    # The visible image over ``rect`` (BGRA) as it looks with the ``hidden`` layers hidden; they
    # are shown again before this returns.

    def keep_live(self, doc: Doc, layer: Layer, name: str, bgra: bytes, rect: Rect) -> Layer: ...
    # A new paint layer named ``name`` right under ``layer`` holding ``bgra`` over ``rect``: one
    # undo step. Returns the new layer.

    def watch_changes(self, doc: Doc, callback: Callable[[], None]) -> Callable[[], None] | None: ...
    # Call ``callback`` after every undoable change of the document; returns a function that
    # stops watching, or None when the host cannot watch.
