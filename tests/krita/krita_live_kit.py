"""Live mode's test kit: the STUB HOST (``LiveFakeCanvas``: the in-memory ``FakeCanvas`` plus the
live layer, added and removed without undo entries as the Krita adapter does; real Krita is checked
in ``test_krita_live_e2e.py``), a painted document, the tick loop Krita's QTimer runs, and a
fixture making a controller with live mode connected to a real ``easel serve``.

Its change signal fires for every undoable operation, like the Undo History model's reset in Krita.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import pytest

from easel_krita.clientkit.links import AsyncLink
from easel_krita.controller import Controller
from easel_krita.geometry import Rect
from easel_krita.live import LIVE_LAYER_NAME, LiveMode, LiveSettings
from easel_krita.request import GenerationSettings
from krita_fake_host import FakeCanvas, FakeDoc, FakeLayer
from krita_jobs_kit import pump  # noqa: F401  (the live tests import it from here too)

W, H = 96, 80
BACKGROUND = bytes([40, 80, 160, 255])  # BGRA


class LiveFakeCanvas(FakeCanvas):
    """The stub host plus :class:`easel_krita.host.LiveHost` (STUB: what Krita does is checked in
    test_krita_live_e2e.py). Live-layer operations leave no undo entry and fire no change signal;
    :meth:`paint` is the painter: an undo entry and a change signal."""

    def __init__(self, doc: FakeDoc) -> None:
        super().__init__(doc)
        self.watchers: list[Callable[[], None]] = []
        self.live_writes: list[Rect] = []
        self.source_reads: list[tuple[str, ...]] = []

    def paint(self, doc: FakeDoc, layer: FakeLayer, rect: Rect, bgra: bytes) -> None:
        self.write_layer(doc, layer, bgra * rect.area, rect)
        self.changed(doc, "paint")

    def changed(self, doc: FakeDoc, what: object) -> None:
        doc.undo.append((what, None))
        for watcher in list(self.watchers):
            watcher()

    def busy(self, doc: FakeDoc) -> bool:
        return False

    def insert_live_layer(self, doc: FakeDoc, name: str, layer: FakeLayer | None = None) -> FakeLayer:
        if layer is None:
            layer = FakeLayer(name, doc.width, doc.height, locked=True)
        doc.layers.append(layer)
        layer.attached = True
        return layer

    def find_layers(self, doc: FakeDoc, ids: list[str]) -> list[FakeLayer]:
        return [layer for layer in doc.layers if layer.uid in ids]

    def delete_layer(self, doc: FakeDoc, layer: FakeLayer) -> None:
        """The painter deletes a layer (one undo step, a change signal); ``undo_delete`` brings the
        same layer back at its place, as Krita's undo does."""
        index = doc.layers.index(layer)
        doc.layers.remove(layer)
        layer.attached = False
        self.changed(doc, ("delete", index, layer))

    def undo_delete(self, doc: FakeDoc) -> None:
        (what, index, layer), _ = doc.undo.pop()
        assert what == "delete"
        doc.layers.insert(index, layer)
        layer.attached = True
        for watcher in list(self.watchers):
            watcher()

    def remove_live_layer(self, doc: FakeDoc, layer: FakeLayer) -> None:
        doc.layers.remove(layer)
        layer.attached = False

    def live_layer_alive(self, doc: FakeDoc, layer: FakeLayer) -> bool:
        return self.layer_alive(doc, layer)

    def write_live(self, doc: FakeDoc, layer: FakeLayer, bgra: bytes, rect: Rect, clear: Rect | None) -> None:
        if clear is not None:
            self.write_layer(doc, layer, bytes(clear.area * 4), clear)
        self.write_layer(doc, layer, bgra, rect)
        self.live_writes.append(rect)

    def read_source(self, doc: FakeDoc, rect: Rect, hidden: list[Any]) -> bytes:
        hid = self.hide_layers(doc, hidden)
        try:
            data = self.read_visible(doc, rect)
            self.source_reads.append(self.visible_reads[-1])
            return data
        finally:
            self.show_layers(doc, hid)

    def keep_live(self, doc: FakeDoc, layer: FakeLayer, name: str, bgra: bytes, rect: Rect) -> FakeLayer:
        kept = FakeLayer(name, doc.width, doc.height)
        self.write_layer(doc, kept, bgra, rect)
        doc.layers.insert(doc.layers.index(layer), kept)
        self.changed(doc, "add")
        return kept

    def watch_changes(self, doc: FakeDoc, callback: Callable[[], None]) -> Callable[[], None]:
        self.watchers.append(callback)
        return lambda: self.watchers.remove(callback)


def live_doc(selection: Rect | None = None) -> FakeDoc:
    doc = FakeDoc(W, H)
    background = FakeLayer("Background", W, H)
    background.data[:] = BACKGROUND * (W * H)
    doc.layers.append(background)
    paint = FakeLayer("Paint", W, H)
    paint.data[0:4] = bytes([9, 9, 9, 255])
    doc.layers.append(paint)
    doc.active = paint
    if selection is not None:
        mask = bytearray(W * H)
        for y in range(selection.y, selection.bottom):
            mask[y * W + selection.x:y * W + selection.right] = b"\xff" * selection.width
        doc.selection = bytes(mask)
    return doc


def settle(controller: Controller, seconds: float) -> None:
    """Run the loop for ``seconds`` (to show that nothing more happens)."""
    deadline = time.monotonic() + seconds
    pump(controller, lambda: time.monotonic() > deadline)


def uploaded(controller: Controller) -> int:
    """Image bytes the link's current session uploaded (its ThreadedClient's AsyncClient's session)."""
    return controller.connection._client._client.session.bytes_uploaded


@pytest.fixture
def make(backend):
    made = []

    def factory(doc: FakeDoc, url: str | None = None) -> tuple[Controller, LiveFakeCanvas, LiveMode]:
        host = LiveFakeCanvas(doc)
        controller = Controller(host, AsyncLink(lambda e: None, client_name="krita", client_version="test"))
        controller.settings = GenerationSettings(prompt="a lighthouse", steps=4)
        controller.connect(url or backend.url)
        pump(controller, lambda: controller.view.connection == "online" and controller.view.loras_listed)
        live = LiveMode(controller, host, debounce_s=0.05)
        live.set_settings(LiveSettings(strength=0.6, steps=2, seed=5))
        made.append(controller)
        return controller, host, live

    yield factory
    for controller in made:
        controller.connection.close()


def live_layer(doc: FakeDoc) -> FakeLayer:
    (layer,) = [layer for layer in doc.layers if layer.name == LIVE_LAYER_NAME]
    return layer
