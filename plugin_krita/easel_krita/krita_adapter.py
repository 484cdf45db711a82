"""Krita's :class:`~.host.CanvasHost`: :class:`KritaCanvas`, on Krita's scripting API. (The other
modules that handle Krita objects: ``krita_live.py``, ``krita_save_guard.py``, ``extension.py``.)

Facts this relies on (Krita 5.1.5, checked by the real-Krita tests in ``tests/krita``):

* 8-bit RGBA layers are BGRA in memory; ``Document.pixelData`` reads the visible image (the
  projection) and ``Node.setPixelData`` writes a layer, both exactly.
* ``Node.addChildNode``, ``Node.remove`` and ``Document.resizeImage`` are undoable (one entry
  each); ``setPixelData``, ``setName``, ``setLocked`` and ``setVisible`` are not. So a result is one undo entry:
  the layer's creation, and Ctrl+Z removes it.
* ``setPixelData`` does not update the image's projection (what the canvas shows and
  ``Document.pixelData`` reads), and neither does ``setVisible`` or ``setOpacity``; it stays stale
  until something else refreshes it. ``Document.refreshProjection`` updates it without an undo step
  (~55 ms for 2048², synchronous); ``setBlendingMode`` would too, but pushes an undo step.
* ``Document.resizeImage(-left, -top, w, h)`` grows the canvas and moves every layer by
  ``(left, top)``, so nothing shifts relative to anything else; ``Document.scaleImage`` scales
  every layer (one undo step).
* Document annotations (``setAnnotation``) and layer ids (``Node.uniqueId``) are saved in
  ``.kra`` files and read back, byte for byte: control-layer marks and the history live there.
  Setting an annotation and hiding or showing a layer are not undo steps; setting an annotation
  marks the document modified (opening a file with annotations does not), so the history is
  written with the flag kept as it was.

Qt image helpers (JPEG decoding, resampling) live here too: Krita's Python has Qt but not Pillow.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from krita import Krita
from PyQt5.QtCore import QByteArray, Qt
from PyQt5.QtGui import QImage
from PyQt5.QtWidgets import QAbstractItemView

from . import krita_batch
from .control import ANNOTATION_DESCRIPTION, ANNOTATION_TYPE, ControlSpec, decode_annotation, encode_annotation
from .host import ControlLayer, HostError
from .geometry import Margins, Rect, resize_arguments
from .krita_layer_list import flush_layer_lists

PAINT_LAYER = "paintlayer"
log = logging.getLogger("easel.krita")


def _bytes(data: Any) -> bytes:
    """A ``QByteArray`` as ``bytes`` (``.data()`` is one memcpy; ``bytes(qba)`` iterates)."""
    return data.data() if hasattr(data, "data") else bytes(data)


def _image_bytes(image: QImage) -> bytes:
    ptr = image.constBits()
    ptr.setsize(image.sizeInBytes())
    return ptr.asstring()


class KritaCanvas:
    """:class:`~.host.CanvasHost` on Krita's scripting API. Main thread only, except
    :meth:`decode_preview` and :meth:`scale_rgba` (plain ``QImage`` work, safe on any thread)."""

    def __init__(self, app: Any = None) -> None:
        self.app = app if app is not None else Krita.instance()
        # Undo-history rows of the commands this plugin pushed, so a cancelled job's layer (and an
        # Expand's growth) can be taken back by undoing them when nothing happened since.
        self._layer_marks: dict[int, tuple[Any, int | None]] = {}
        self._grow_marks: dict[int, tuple[Any, int | None]] = {}

    # -- documents

    def active_document(self) -> Any:
        doc = self.app.activeDocument()
        if doc is None:
            raise HostError("no image is open; open or create one first")
        if doc.colorModel() != "RGBA" or doc.colorDepth() != "U8":
            raise HostError(f"Easel works on 8-bit RGBA images; this one is {doc.colorModel()} {doc.colorDepth()}. "
                            "Convert it with Image ▸ Convert Image Color Space")
        return doc

    def is_open(self, doc: Any) -> bool:
        return any(other == doc for other in self.app.documents())

    def canvas_rect(self, doc: Any) -> Rect:
        return Rect(0, 0, doc.width(), doc.height())

    def selection_rect(self, doc: Any) -> Rect | None:
        selection = doc.selection()
        if selection is None or selection.width() <= 0 or selection.height() <= 0:
            return None
        return Rect(selection.x(), selection.y(), selection.width(), selection.height())

    def read_visible(self, doc: Any, rect: Rect) -> bytes:
        data = _bytes(doc.pixelData(rect.x, rect.y, rect.width, rect.height))
        if len(data) != rect.area * 4:
            raise HostError(f"Krita returned {len(data)} bytes for a {rect.width}x{rect.height} area; "
                            "is the image 8-bit RGBA?")
        return data

    def read_selection(self, doc: Any, rect: Rect) -> bytes:
        selection = doc.selection()
        if selection is None:
            return b"\xff" * rect.area
        data = _bytes(selection.pixelData(rect.x, rect.y, rect.width, rect.height))
        if len(data) != rect.area:
            raise HostError(f"Krita returned a selection of {len(data)} bytes for {rect.width}x{rect.height} pixels")
        return data

    def settle(self, doc: Any) -> None:
        """Let Krita finish running strokes so the projection we read is current."""
        doc.waitForDone()

    # -- layers

    def add_layer(self, doc: Any, name: str, locked: bool) -> Any:
        """A new, empty, hidden paint layer at the top of the layer stack (one undo entry).

        Hidden because Krita inserts a hidden layer faster (on a 4096² image ~0.13 s instead of
        ~0.22 s of the main thread); it is shown once it has pixels.
        """
        node = doc.createNode(name, PAINT_LAYER)
        if node is None:
            raise HostError("Krita could not create a paint layer")
        node.setVisible(False)
        root = doc.rootNode()
        if root.addChildNode(node, None) is False:
            raise HostError("Krita refused to add a layer to this image")
        node.setLocked(locked)
        self._layer_marks[id(node)] = (node, self._undo_row(doc))
        return node

    def show_layer(self, doc: Any, layer: Any) -> None:
        if not layer.visible():
            layer.setVisible(True)
            doc.refreshProjection()
            flush_layer_lists(self.app)  # the layer list's delayed redraw would crash a closed image

    def layer_alive(self, doc: Any, layer: Any) -> bool:
        """Whether ``layer`` is still in ``doc``'s layer stack (an undo may have taken it out)."""
        return layer.parentNode() is not None and self.is_open(doc)

    def write_layer(self, doc: Any, layer: Any, bgra: bytes, rect: Rect) -> None:
        # Krita 5.1's setPixelData returns nothing; later versions return False on failure.
        if layer.setPixelData(bgra, rect.x, rect.y, rect.width, rect.height) is False:
            raise HostError("Krita refused to write the layer's pixels")

    def refresh(self, doc: Any, layer: Any, rect: Rect) -> None:
        """Make pixels written to a visible layer show on the canvas (a hidden layer's are shown
        by :meth:`show_layer` / :meth:`finish_layer`)."""
        if layer.visible():
            doc.refreshProjection()

    def finish_layer(self, doc: Any, layer: Any, name: str) -> None:
        layer.setName(name)
        layer.setLocked(False)
        self.show_layer(doc, layer)
        flush_layer_lists(self.app)  # the layer list's delayed redraw would crash a closed image

    def add_group(self, doc: Any, name: str, layers: Any) -> Any:
        return krita_batch.add_group(doc, name, layers)  # a batch's layers in one group: one undo step

    def remove_layer(self, doc: Any, layer: Any) -> None:
        """Take away a layer this plugin added. When its creation is still the newest step of
        the undo history (nothing was done since), it is undone, which leaves no trace in the
        history; otherwise the layer is removed, which Krita records as a step of its own."""
        _, mark = self._layer_marks.pop(id(layer), (None, None))
        if self._undo_if_newest(doc, mark) and layer.parentNode() is None:
            return
        if layer.parentNode() is not None:
            layer.remove()

    # -- canvas size

    def grow_canvas(self, doc: Any, margins: Margins) -> None:
        x, y, width, height = resize_arguments(self.canvas_rect(doc), margins)
        doc.resizeImage(x, y, width, height)
        doc.waitForDone()
        self._grow_marks[id(doc)] = (doc, self._undo_row(doc))

    def shrink_canvas(self, doc: Any, margins: Margins) -> None:
        """Undo :meth:`grow_canvas` (by undoing it when it is the newest step, as for layers)."""
        grown = (doc.width(), doc.height())
        _, mark = self._grow_marks.pop(id(doc), (None, None))
        if self._undo_if_newest(doc, mark) and (doc.width(), doc.height()) != grown:
            return
        width = doc.width() - margins.left - margins.right
        height = doc.height() - margins.top - margins.bottom
        doc.resizeImage(margins.left, margins.top, width, height)
        doc.waitForDone()

    # -- control layers (marks in a document annotation, keyed by layer id)

    def _marks(self, doc: Any) -> dict[str, ControlSpec]:
        if ANNOTATION_TYPE not in doc.annotationTypes():
            return {}
        return decode_annotation(_bytes(doc.annotation(ANNOTATION_TYPE)))

    def control_layers(self, doc: Any) -> list[ControlLayer]:
        marks = self._marks(doc)
        if not marks:
            return []
        out = []
        for node in _walk(doc.rootNode()):
            layer_id = node.uniqueId().toString()
            spec = marks.get(layer_id)
            if spec is not None:
                out.append(ControlLayer(node, node.name(), layer_id, spec, bool(node.visible())))
        return out

    def mark_control(self, doc: Any, layer: Any, spec: ControlSpec | None) -> None:
        marks = self._marks(doc)
        layer_id = layer.uniqueId().toString()
        if spec is None:
            marks.pop(layer_id, None)
        else:
            marks[layer_id] = spec
        doc.setAnnotation(ANNOTATION_TYPE, ANNOTATION_DESCRIPTION, QByteArray(encode_annotation(marks)))
        doc.setModified(True)  # not an undo step: make sure saving keeps it

    # -- region layers (guides.py)

    def layers(self, doc: Any) -> list[Any]:
        return [node for node in _walk(doc.rootNode()) if not node.type().endswith("mask")]

    def mark_modified(self, doc: Any) -> None:
        doc.setModified(True)

    # -- the history stored in the document (see history_store.py)

    def read_annotation(self, doc: Any, kind: str) -> bytes | None:
        if kind not in doc.annotationTypes():
            return None
        return _bytes(doc.annotation(kind))

    def write_annotation(self, doc: Any, kind: str, description: str, data: bytes) -> None:
        # Krita 5.1.5's setAnnotation marks the document modified (checked). The history is
        # written a moment after the change it records (which modified the image itself, if it
        # touched the picture), so a write landing after a save or a script's setModified(False)
        # must not make the image "modified" again: the flag is kept as it was.
        modified = doc.modified()
        doc.setAnnotation(kind, description, QByteArray(data))
        if not modified:
            doc.setModified(False)

    def active_layer(self, doc: Any) -> Any:
        node = doc.activeNode()
        if node is None or node.parentNode() is None or node.type().endswith("mask"):
            return None
        return node

    def layer_info(self, doc: Any, layer: Any) -> tuple[str, str]:
        return layer.name(), layer.uniqueId().toString()

    def read_layer(self, doc: Any, layer: Any, rect: Rect) -> bytes:
        """A layer's own pixels (a group's or filter layer's: its projection), visible or not."""
        if layer.type() == PAINT_LAYER:
            data = _bytes(layer.pixelData(rect.x, rect.y, rect.width, rect.height))
        else:
            data = _bytes(layer.projectionPixelData(rect.x, rect.y, rect.width, rect.height))
        if len(data) != rect.area * 4:
            raise HostError(f"the layer {layer.name()!r} is not 8-bit RGBA; convert it "
                            "(Layer ▸ Convert ▸ Convert Layer Color Space) to use it with Easel")
        return data

    def hide_layers(self, doc: Any, layers: Any) -> list[Any]:
        hidden = [layer for layer in layers if layer.parentNode() is not None and layer.visible()]
        for layer in hidden:
            layer.setVisible(False)
        if hidden:
            doc.refreshProjection()
            doc.waitForDone()
        return hidden

    def show_layers(self, doc: Any, layers: Any) -> None:
        for layer in layers:
            layer.setVisible(True)
        if layers:
            doc.refreshProjection()
            flush_layer_lists(self.app)  # the layer list's delayed redraw would crash a closed image

    def scale_canvas(self, doc: Any, width: int, height: int) -> None:
        resolution = int(doc.resolution()) or 72
        doc.scaleImage(width, height, resolution, resolution, "Bicubic")
        doc.waitForDone()
        if (doc.width(), doc.height()) != (width, height):
            raise HostError(f"Krita did not scale the image to {width}x{height}")

    # -- the undo history

    def _undo_view(self, doc: Any) -> Any:
        """The Undo History docker's view when ``doc`` is the active document (the view follows
        the active document), else ``None``. The docker exists in every window, hidden or not."""
        window = self.app.activeWindow()
        active = self.app.activeDocument()
        if window is None or active is None or not active == doc:
            return None
        for view in window.qwindow().findChildren(QAbstractItemView):
            model = view.model()
            if model is not None and model.metaObject().className() == "KisUndoModel":
                return view
        return None

    def _undo_row(self, doc: Any) -> int | None:
        """The history row of the command just pushed (the model's rows update synchronously;
        its current row follows on the next event-loop turn)."""
        view = self._undo_view(doc)
        return None if view is None else view.model().rowCount() - 1

    def _undo_if_newest(self, doc: Any, row: int | None) -> bool:
        """Trigger Krita's undo if the history's current step is still ``row``. True if it did."""
        view = self._undo_view(doc)
        if row is None or view is None or view.selectionModel().currentIndex().row() != row:
            return False
        self.app.action("edit_undo").trigger()
        doc.waitForDone()
        return True

    # -- change detection (the hook live mode builds on)

    def watch_changes(self, window: Any, callback: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``callback`` on the main thread after every undoable change in ``window``'s active
        document (a brush stroke, a layer added, an undo). Returns a function that stops watching,
        or ``None`` when this Krita offers no hook.

        Krita 5.1's scripting API has no "document changed" signal. The Undo History docker's
        model (``KisUndoModel``, created with every window even when the docker is hidden) is reset
        on every change of the active document's undo stack, so its ``modelReset`` is the signal.
        Callers debounce it and ignore the changes they made themselves.
        """
        views = window.qwindow().findChildren(QAbstractItemView)
        models = [v.model() for v in views if v.model() is not None and v.model().metaObject().className() == "KisUndoModel"]
        if not models:
            log.warning("easel: no Undo History model in this Krita window; canvas changes cannot be followed")
            return None
        model = models[0]

        def changed() -> None:
            try:
                callback()
            except Exception:  # never into Qt
                log.exception("easel: a canvas-change callback failed")

        model.modelReset.connect(changed)

        def stop() -> None:
            try:
                model.modelReset.disconnect(changed)
            except RuntimeError:  # Qt deleted the window's Undo History model (Krita is quitting): nothing to stop
                pass

        return stop

    # -- images (any thread)

    def decode_preview(self, jpeg: bytes, width: int, height: int) -> bytes:
        image = QImage.fromData(jpeg, "JPG")
        if image.isNull():
            raise HostError("a preview from the server could not be decoded")
        if (image.width(), image.height()) != (width, height):
            image = image.scaled(width, height, Qt.IgnoreAspectRatio, Qt.SmoothTransformation)
        image = image.convertToFormat(QImage.Format_ARGB32)  # BGRA in memory on little-endian machines
        return _image_bytes(image)

    def scale_rgba(self, data: bytes, width: int, height: int, new_width: int, new_height: int) -> bytes:
        image = QImage(data, width, height, width * 4, QImage.Format_RGBA8888)
        scaled = image.scaled(new_width, new_height, Qt.IgnoreAspectRatio, Qt.SmoothTransformation)
        return _image_bytes(scaled.convertToFormat(QImage.Format_RGBA8888))


def _walk(node: Any) -> list[Any]:
    """Every layer under ``node``, bottom of the stack first, groups before their children."""
    out = []
    for child in node.childNodes():
        out.append(child)
        out.extend(_walk(child))
    return out
