"""An in-memory stand-in for Krita (a STUB HOST), for testing the controller against a real server
without starting Krita. It keeps layers as full-canvas BGRA buffers, a selection as a grey8 canvas
mask, and a log of undoable operations the way Krita 5.1 records them (adding, removing layers,
resizing and scaling the canvas are undoable; writing pixels, renaming, hiding and annotations are
not). Control-layer marks live in a per-document annotation, keyed by each layer's id, as in Krita.

What it cannot show — that Krita itself behaves like this — the real-Krita tests in
``test_krita_e2e.py`` check.
"""
from __future__ import annotations

import io
import itertools
from dataclasses import dataclass, field

from PIL import Image

from easel_krita import pixels
from easel_krita.control import ANNOTATION_TYPE, ControlSpec, decode_annotation, encode_annotation
from easel_krita.host import ControlLayer, HostError
from easel_krita.geometry import Margins, Rect

_layer_ids = itertools.count(1)


@dataclass(eq=False)
class FakeLayer:
    name: str
    width: int
    height: int
    locked: bool = False
    visible: bool = True
    attached: bool = True
    data: bytearray = field(default=None)  # type: ignore[assignment]
    uid: str = field(default_factory=lambda: f"{{layer-{next(_layer_ids)}}}")
    #: A group layer's layers, bottom first (``None``: a paint layer).
    children: list["FakeLayer"] | None = None

    def __post_init__(self) -> None:
        if self.data is None:
            self.data = bytearray(self.width * self.height * 4)

    def block(self, rect: Rect) -> bytes:
        return pixels.crop(bytes(self.data), self.width, self.height, rect.x, rect.y, rect.width, rect.height)


@dataclass(eq=False)
class FakeDoc:
    width: int
    height: int
    layers: list[FakeLayer] = field(default_factory=list)
    selection: bytes | None = None       # grey8, canvas-sized
    undo: list[tuple[str, object]] = field(default_factory=list)
    open: bool = True
    annotations: dict[str, bytes] = field(default_factory=dict)
    modified: bool = False               # set by nothing here; a test sets it to see it kept
    active: FakeLayer | None = None


class FakeCanvas:
    """:class:`easel_krita.controller.CanvasHost` over :class:`FakeDoc` objects."""

    def __init__(self, doc: FakeDoc) -> None:
        self.doc = doc
        self.writes: list[tuple[str, Rect]] = []
        #: For each read of the visible image: the names of the layers that were visible then.
        self.visible_reads: list[tuple[str, ...]] = []
        #: The annotation types written, in order (the history's writes are counted by tests).
        self.annotation_writes: list[str] = []

    def active_document(self) -> FakeDoc:
        if not self.doc.open:
            raise HostError("no image is open; open or create one first")
        return self.doc

    def is_open(self, doc: FakeDoc) -> bool:
        return doc.open

    def canvas_rect(self, doc: FakeDoc) -> Rect:
        return Rect(0, 0, doc.width, doc.height)

    def selection_rect(self, doc: FakeDoc) -> Rect | None:
        if doc.selection is None:
            return None
        box = pixels.mask_bounds(doc.selection, doc.width, doc.height)
        return None if box is None else Rect(*box)

    def read_visible(self, doc: FakeDoc, rect: Rect) -> bytes:
        # The stub composites nothing: the bottom layer is "the visible image" (tests paint only it).
        self.visible_reads.append(tuple(layer.name for layer in doc.layers if layer.visible))
        return doc.layers[0].block(rect)

    def read_selection(self, doc: FakeDoc, rect: Rect) -> bytes:
        if doc.selection is None:
            return b"\xff" * rect.area
        return pixels.crop(doc.selection, doc.width, doc.height, rect.x, rect.y, rect.width, rect.height, bpp=1)

    def settle(self, doc: FakeDoc) -> None:
        pass

    def add_layer(self, doc: FakeDoc, name: str, locked: bool) -> FakeLayer:
        layer = FakeLayer(name, doc.width, doc.height, locked, visible=False)
        doc.layers.append(layer)
        doc.undo.append(("add", layer))
        return layer

    def layer_alive(self, doc: FakeDoc, layer: FakeLayer) -> bool:
        return layer.attached and layer in doc.layers

    def write_layer(self, doc: FakeDoc, layer: FakeLayer, bgra: bytes, rect: Rect) -> None:
        assert len(bgra) == rect.area * 4 and Rect(0, 0, doc.width, doc.height).contains(rect)
        stride = doc.width * 4
        for row in range(rect.height):
            start = (rect.y + row) * stride + rect.x * 4
            layer.data[start:start + rect.width * 4] = bgra[row * rect.width * 4:(row + 1) * rect.width * 4]
        self.writes.append((layer.name, rect))

    def show_layer(self, doc: FakeDoc, layer: FakeLayer) -> None:
        layer.visible = True

    def refresh(self, doc: FakeDoc, layer: FakeLayer, rect: Rect) -> None:
        self.refreshes = getattr(self, "refreshes", 0) + 1

    def finish_layer(self, doc: FakeDoc, layer: FakeLayer, name: str) -> None:
        layer.name, layer.locked, layer.visible = name, False, True

    def add_group(self, doc: FakeDoc, name: str, layers) -> FakeLayer:
        """As Krita: the group is built off the image and added whole, one undo step."""
        group = FakeLayer(name, doc.width, doc.height, children=[])
        for layer_name, bgra, rect in layers:
            layer = FakeLayer(layer_name, doc.width, doc.height)
            self.write_layer(doc, layer, bgra, rect)
            group.children.append(layer)
        doc.layers.append(group)
        doc.undo.append(("add", group))
        return group

    def remove_layer(self, doc: FakeDoc, layer: FakeLayer) -> None:
        doc.layers.remove(layer)
        layer.attached = False
        doc.undo.append(("remove", layer))

    def grow_canvas(self, doc: FakeDoc, margins: Margins) -> None:
        self._resize(doc, -margins.left, -margins.top, doc.width + margins.left + margins.right,
                     doc.height + margins.top + margins.bottom)

    def shrink_canvas(self, doc: FakeDoc, margins: Margins) -> None:
        self._resize(doc, margins.left, margins.top, doc.width - margins.left - margins.right,
                     doc.height - margins.top - margins.bottom)

    def _resize(self, doc: FakeDoc, x: int, y: int, width: int, height: int) -> None:
        for layer in doc.layers:
            new = bytearray(width * height * 4)
            for row in range(height):
                src_y = row + y
                if not 0 <= src_y < doc.height:
                    continue
                for col in range(width):
                    src_x = col + x
                    if 0 <= src_x < doc.width:
                        s = (src_y * doc.width + src_x) * 4
                        d = (row * width + col) * 4
                        new[d:d + 4] = layer.data[s:s + 4]
            layer.data, layer.width, layer.height = new, width, height
        doc.undo.append(("resize", (x, y, width, height)))
        doc.width, doc.height = width, height

    def decode_preview(self, jpeg: bytes, width: int, height: int) -> bytes:
        image = Image.open(io.BytesIO(jpeg)).convert("RGBA").resize((width, height))
        return pixels.swap_red_blue(image.tobytes())

    def scale_rgba(self, data: bytes, width: int, height: int, new_width: int, new_height: int) -> bytes:
        return Image.frombytes("RGBA", (width, height), data).resize((new_width, new_height)).tobytes()

    # -- control layers and Upscale

    def control_layers(self, doc: FakeDoc) -> list[ControlLayer]:
        marks = decode_annotation(doc.annotations.get(ANNOTATION_TYPE))
        return [ControlLayer(layer, layer.name, layer.uid, marks[layer.uid], layer.visible)
                for layer in doc.layers if layer.uid in marks]

    def mark_control(self, doc: FakeDoc, layer: FakeLayer, spec: ControlSpec | None) -> None:
        marks = decode_annotation(doc.annotations.get(ANNOTATION_TYPE))
        if spec is None:
            marks.pop(layer.uid, None)
        else:
            marks[layer.uid] = spec
        doc.annotations[ANNOTATION_TYPE] = encode_annotation(marks)

    def read_annotation(self, doc: FakeDoc, kind: str) -> bytes | None:
        return doc.annotations.get(kind)

    def write_annotation(self, doc: FakeDoc, kind: str, description: str, data: bytes) -> None:
        doc.annotations[kind] = bytes(data)  # the modified flag kept, as KritaCanvas does
        self.annotation_writes.append(kind)

    def active_layer(self, doc: FakeDoc) -> FakeLayer | None:
        return doc.active

    def layer_info(self, doc: FakeDoc, layer: FakeLayer) -> tuple[str, str]:
        return layer.name, layer.uid

    def read_layer(self, doc: FakeDoc, layer: FakeLayer, rect: Rect) -> bytes:
        return layer.block(rect)

    def hide_layers(self, doc: FakeDoc, layers) -> list[FakeLayer]:
        hidden = [layer for layer in layers if layer.visible and layer in doc.layers]
        for layer in hidden:
            layer.visible = False
        return hidden

    def show_layers(self, doc: FakeDoc, layers) -> None:
        for layer in layers:
            layer.visible = True

    def scale_canvas(self, doc: FakeDoc, width: int, height: int) -> None:
        """Nearest-neighbour scaling of every layer (Krita uses a better filter; positions agree)."""
        for layer in doc.layers:
            old = bytes(layer.data)
            new = bytearray(width * height * 4)
            for y in range(height):
                sy = min(doc.height - 1, y * doc.height // height)
                for x in range(width):
                    sx = min(doc.width - 1, x * doc.width // width)
                    s = (sy * doc.width + sx) * 4
                    new[(y * width + x) * 4:(y * width + x) * 4 + 4] = old[s:s + 4]
            layer.data, layer.width, layer.height = new, width, height
        doc.undo.append(("scale", (width, height)))
        doc.width, doc.height = width, height

    # -- region layers (guides.py)

    def layers(self, doc: FakeDoc) -> list[FakeLayer]:
        return list(doc.layers)

    def mark_modified(self, doc: FakeDoc) -> None:
        doc.modified = True
