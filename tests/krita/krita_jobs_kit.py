"""Helpers for the controller tests of control layers, LoRAs, Upscale and reconnects: a painted
stub document, a controller connected to a real server, and the tick loop Krita's QTimer runs.

The host is the STUB HOST of ``krita_fake_host.py`` (an in-memory canvas); the server is a real
``easel serve`` on the demo models (base, ControlNets ``demo-canny``/``demo-depth-control``, LoRA
``demo-style``). The same features run in real Krita in ``test_krita_control_e2e.py``.
"""
from __future__ import annotations

import time
from typing import Callable

from easel_krita.clientkit.links import AsyncLink
from easel_krita.controller import Controller
from easel_krita.geometry import Rect
from easel_krita.request import GenerationSettings
from krita_fake_host import FakeCanvas, FakeDoc, FakeLayer

W, H = 96, 80


def painted_doc(selection: Rect | None = None, width: int = W, height: int = H) -> FakeDoc:
    """A background with a horizontal gradient and a dark square (sharp edges for canny)."""
    doc = FakeDoc(width, height)
    background = FakeLayer("Background", width, height)
    data = bytearray()
    for y in range(height):
        for x in range(width):
            dark = width // 4 <= x < width // 2 and height // 4 <= y < height // 2
            data += bytes((20, 20, 20, 255)) if dark else bytes((x * 255 // width, 120, 200, 255))
    background.data[:] = data
    doc.layers.append(background)
    doc.active = background
    if selection is not None:
        select(doc, selection)
    return doc


def select(doc: FakeDoc, rect: Rect | None) -> None:
    if rect is None:
        doc.selection = None
        return
    mask = bytearray(doc.width * doc.height)
    for y in range(rect.y, rect.bottom):
        mask[y * doc.width + rect.x:y * doc.width + rect.right] = b"\xff" * rect.width
    doc.selection = bytes(mask)


def add_layer(doc: FakeDoc, name: str, rect: Rect, bgra: bytes = bytes((255, 255, 255, 255))) -> FakeLayer:
    """A layer with an opaque block of ``bgra`` over ``rect``, transparent elsewhere."""
    layer = FakeLayer(name, doc.width, doc.height)
    for y in range(rect.y, rect.bottom):
        start = (y * doc.width + rect.x) * 4
        layer.data[start:start + rect.width * 4] = bgra * rect.width
    doc.layers.append(layer)
    return layer


def pump(controller: Controller, until: Callable[[], bool], timeout: float = 60.0) -> None:
    """Tick the controller's connection until ``until()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; view: {controller.view}")
        controller.connection.tick(0.01)
        time.sleep(0.002)


def connect(url: str, doc: FakeDoc, **settings) -> tuple[Controller, FakeCanvas]:
    """A controller on the stub host, connected (and with the server's LoRA list) to ``url``."""
    host = FakeCanvas(doc)
    controller = Controller(host, AsyncLink(lambda e: None, client_name="krita", client_version="test"))
    controller.settings = GenerationSettings(prompt="a lighthouse", steps=4, **settings)
    controller.connect(url)
    pump(controller, lambda: controller.view.connection == "online" and controller.view.loras_listed)
    return controller, host


def finish(controller: Controller, timeout: float = 120.0) -> None:
    """Wait for every job to end; fail with the docker's message when one ended in an error."""
    pump(controller, lambda: not controller.jobs, timeout)
    assert not controller.view.message_is_error, controller.view.message
