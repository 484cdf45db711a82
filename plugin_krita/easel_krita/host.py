"""The host interface: what the plugin's rooms need from the painting program, and the errors it
raises. Krita's implementation is ``krita_adapter.KritaCanvas``; the tests' is an in-memory canvas
(``tests/krita/krita_fake_host.py``). No ``krita`` and no Qt here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from .control import ControlSpec
from .geometry import Margins, Rect


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

    def active_document(self) -> Any: ...
    def is_open(self, doc: Any) -> bool: ...
    def canvas_rect(self, doc: Any) -> Rect: ...
    def selection_rect(self, doc: Any) -> Rect | None: ...
    def read_visible(self, doc: Any, rect: Rect) -> bytes: ...
    def read_selection(self, doc: Any, rect: Rect) -> bytes: ...
    def settle(self, doc: Any) -> None: ...
    def add_layer(self, doc: Any, name: str, locked: bool) -> Any: ...  # hidden until shown
    def show_layer(self, doc: Any, layer: Any) -> None: ...
    def layer_alive(self, doc: Any, layer: Any) -> bool: ...
    def write_layer(self, doc: Any, layer: Any, bgra: bytes, rect: Rect) -> None: ...
    def refresh(self, doc: Any, layer: Any, rect: Rect) -> None: ...  # show what write_layer wrote (if visible)
    def finish_layer(self, doc: Any, layer: Any, name: str) -> None: ...
    def remove_layer(self, doc: Any, layer: Any) -> None: ...
    def add_group(self, doc: Any, name: str, layers: Sequence[tuple[str, bytes, Rect]]) -> Any: ...  # one undo step (batch.py)
    def grow_canvas(self, doc: Any, margins: Margins) -> None: ...
    def shrink_canvas(self, doc: Any, margins: Margins) -> None: ...
    def decode_preview(self, jpeg: bytes, width: int, height: int) -> bytes: ...
    def scale_rgba(self, data: bytes, width: int, height: int, new_width: int, new_height: int) -> bytes: ...

    # decode_preview and scale_rgba run on worker threads.

    # -- control layers, Upscale (see ControlLayer; marks are kept in the document)
    def control_layers(self, doc: Any) -> list["ControlLayer"]: ...  # marked layers in the stack, bottom first
    def mark_control(self, doc: Any, layer: Any, spec: ControlSpec | None) -> None: ...  # None: unmark
    def active_layer(self, doc: Any) -> Any: ...  # the layer the painter selected, or None
    def layer_info(self, doc: Any, layer: Any) -> tuple[str, str]: ...  # (name, stable id)
    def read_layer(self, doc: Any, layer: Any, rect: Rect) -> bytes: ...  # the layer's own BGRA pixels
    def hide_layers(self, doc: Any, layers: Sequence[Any]) -> list[Any]: ...  # returns those it hid
    def show_layers(self, doc: Any, layers: Sequence[Any]) -> None: ...
    def scale_canvas(self, doc: Any, width: int, height: int) -> None: ...  # every layer scaled; undoable

    # -- region layers (guides.py: marks in an annotation, layers found by id)
    def layers(self, doc: Any) -> list[Any]: ...  # every layer (groups included), bottom first
    def mark_modified(self, doc: Any) -> None: ...  # a mark changed: saving must keep it

    # -- the history stored in the document (an annotation, saved in the file). Writing it leaves
    # the document's modified flag as it was: the change it records already set the flag when it
    # touched the picture, and a write landing after a save must not set it again.
    def read_annotation(self, doc: Any, kind: str) -> bytes | None: ...
    def write_annotation(self, doc: Any, kind: str, description: str, data: bytes) -> None: ...


@dataclass(frozen=True)
class ControlLayer:
    """A layer marked as a control input, as the docker lists it."""

    layer: Any
    name: str
    layer_id: str
    spec: ControlSpec
    visible: bool = True
