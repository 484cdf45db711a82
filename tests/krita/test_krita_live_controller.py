"""Live mode (``easel_krita.live``) against a real ``easel serve`` (demo model), with a STUB HOST in
place of Krita: ``LiveFakeCanvas`` extends the in-memory ``FakeCanvas`` with the live layer, which
it adds, writes and removes without undo entries, as the Krita adapter does (real Krita is checked
in ``test_krita_live_e2e.py``). Its change signal fires for every undoable operation, like the Undo
History model's reset in Krita. The asyncio loop is driven by ``Connection.tick()``.

Also the host-free pieces: live settings and the few-step schedules.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import pytest

from easel_krita.connection import Connection
from easel_krita.controller import Controller
from easel_krita.geometry import Rect
from easel_krita.live import LIVE_LAYER_NAME, LiveMode, LiveSettings, live_schedule
from easel_krita.protocol import JobResult, ModelInfo
from easel_krita.request import GenerationSettings, RequestError
from krita_fake_host import FakeCanvas, FakeDoc, FakeLayer

W, H = 96, 80
BACKGROUND = bytes([40, 80, 160, 255])  # BGRA


class LiveFakeCanvas(FakeCanvas):
    """The stub host plus :class:`easel_krita.live.LiveHost` (STUB: what Krita does is checked in
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

    def changed(self, doc: FakeDoc, what: str) -> None:
        doc.undo.append((what, None))
        for watcher in list(self.watchers):
            watcher()

    def busy(self, doc: FakeDoc) -> bool:
        return False

    def insert_live_layer(self, doc: FakeDoc, name: str) -> FakeLayer:
        layer = FakeLayer(name, doc.width, doc.height, locked=True)
        doc.layers.append(layer)
        return layer

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


def _doc(selection: Rect | None = None) -> FakeDoc:
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


def pump(controller: Controller, until: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; view: {controller.view}")
        controller.connection.tick(0.01)
        time.sleep(0.002)


def settle(controller: Controller, seconds: float) -> None:
    """Run the loop for ``seconds`` (to show that nothing more happens)."""
    deadline = time.monotonic() + seconds
    pump(controller, lambda: time.monotonic() > deadline)


def uploaded(controller: Controller) -> int:
    return controller.connection._client.session.bytes_uploaded


@pytest.fixture
def make(backend):
    made = []

    def factory(doc: FakeDoc) -> tuple[Controller, LiveFakeCanvas, LiveMode]:
        host = LiveFakeCanvas(doc)
        controller = Controller(host, Connection(lambda e: None, client_version="test"))
        controller.settings = GenerationSettings(prompt="a lighthouse", steps=4)
        controller.connect(backend.url)
        pump(controller, lambda: controller.view.connection == "online")
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


def test_live_mode_follows_changes_and_turning_it_off_leaves_the_document_as_it_was(make):
    doc = _doc()
    controller, host, live = make(doc)
    assert live.enable()
    layer = live_layer(doc)
    assert doc.layers[-1] is layer and layer.locked  # on top of the stack, the painter's layers untouched
    pump(controller, lambda: len(live.stats.results_drawn) == 1)
    assert live.view.can_keep and not live.view.error, live.view.status
    assert bytes(layer.data) != bytes(W * H * 4)  # the live image is in the live layer
    # The source is the painter's picture: the live layer was hidden for every read.
    assert host.source_reads and all(LIVE_LAYER_NAME not in visible for visible in host.source_reads)

    for i in range(3):  # three strokes, each waited for
        host.paint(doc, doc.layers[0], Rect(10 + 20 * i, 10, 8, 8), bytes([200, 30, 30, 255]))
        pump(controller, lambda: len(live.stats.results_drawn) == i + 2)
    assert live.stats.changes == 3 and live.stats.jobs_sent == 4
    settle(controller, 0.3)
    assert live.stats.jobs_sent == 4  # drawing the live layer never triggered another job

    painter_layers = [(layer.name, bytes(layer.data)) for layer in doc.layers if layer.name != LIVE_LAYER_NAME]
    live.disable()
    assert [(layer.name, bytes(layer.data)) for layer in doc.layers] == painter_layers
    assert [what for what, _ in doc.undo] == ["paint", "paint", "paint"]  # only the painter's own steps
    assert not live.view.enabled and not layer.attached
    host.paint(doc, doc.layers[0], Rect(0, 0, 4, 4), bytes([1, 1, 1, 255]))
    settle(controller, 0.3)
    assert live.stats.jobs_sent == 4 and LIVE_LAYER_NAME not in [layer.name for layer in doc.layers]


def test_only_the_newest_result_reaches_the_live_layer(make):
    doc = _doc()
    controller, host, live = make(doc)
    # Hold back the first job's result until a newer job was sent: it then crosses that request.
    held: list[Any] = []
    router = controller.connection.on_event

    def holding(event: Any) -> None:
        if isinstance(event, JobResult) and not held and live.stats.jobs_sent == 1:
            held.append(event)
            return
        router(event)
    controller.connection.on_event = holding

    assert live.enable()
    pump(controller, lambda: held)
    first = held[0].job_id
    host.paint(doc, doc.layers[0], Rect(30, 30, 10, 10), bytes([10, 220, 10, 255]))
    pump(controller, lambda: live.stats.jobs_sent == 2)
    previews_before = len(live.stats.previews_from)
    router(held[0])  # the older result arrives after the newer request went out
    assert first in live.stats.dropped_results
    pump(controller, lambda: live.stats.results_drawn)
    second = f"live-{live._session}-2"
    assert live.stats.results_drawn == [second] and second != first
    assert first not in live.stats.previews_from[previews_before:]  # nor a preview of it, once a newer job was sent
    assert live._shown.job_id == second
    crop = live._shown.rect
    assert live_layer(doc).block(crop) == live._shown.bgra  # the layer holds exactly the newest result

    # A burst of changes, faster than the jobs: whatever the server superseded, the last change's
    # job is the one whose result the layer ends with.
    for i in range(6):
        host.paint(doc, doc.layers[0], Rect(5 * i, 60, 4, 4), bytes([i * 40, 0, 200, 255]))
        settle(controller, 0.07)
    sent = live.stats.jobs_sent
    newest = f"live-{live._session}-{sent}"
    pump(controller, lambda: live.stats.results_drawn[-1] == newest)
    settle(controller, 0.5)
    assert live.stats.results_drawn[-1] == newest and live._shown.job_id == newest
    drawn = [int(job_id.rsplit("-", 1)[1]) for job_id in live.stats.results_drawn]
    assert drawn == sorted(drawn)  # never an older result after a newer one
    assert live_layer(doc).block(live._shown.rect) == live._shown.bgra


def test_an_unchanged_canvas_is_not_sent_again(make):
    selection = Rect(20, 16, 40, 32)
    doc = _doc(selection)
    controller, host, live = make(doc)
    assert live.enable()
    pump(controller, lambda: live.stats.results_drawn)
    first_upload = uploaded(controller)
    assert first_upload == selection.area * 4  # the selection's bounds, once

    host.changed(doc, "rename")  # an undoable change that leaves the pixels as they were
    settle(controller, 0.3)
    host.paint(doc, doc.layers[0], Rect(0, 0, 8, 8), bytes([0, 0, 0, 255]))  # outside the selection
    settle(controller, 0.3)
    assert live.stats.changes == 2 and live.stats.unchanged == 2 and live.stats.jobs_sent == 1
    assert uploaded(controller) == first_upload

    live.disable()
    assert live.enable()  # the same picture again: a job, but the server holds its image
    pump(controller, lambda: len(live.stats.results_drawn) == 2)
    assert uploaded(controller) == first_upload

    host.paint(doc, doc.layers[0], Rect(30, 20, 4, 4), bytes([0, 250, 0, 255]))  # inside: sent
    pump(controller, lambda: len(live.stats.results_drawn) == 3)
    assert uploaded(controller) == first_upload + selection.area * 4
    layer = live_layer(doc)
    alpha = bytes(layer.data[3::4])
    assert sum(alpha) == 255 * selection.area  # the live image covers the selection only


def test_keep_copies_the_live_result_into_a_new_layer_under_the_live_layer(make):
    doc = _doc()
    controller, host, live = make(doc)
    assert live.keep() is None and live.view.error  # nothing to keep yet
    assert live.enable()
    pump(controller, lambda: live.stats.results_drawn)
    kept = live.keep()
    assert kept is not None
    names = [layer.name for layer in doc.layers]
    assert names[-1] == LIVE_LAYER_NAME and names[-2] == kept.name and kept.name.endswith("seed 5 (live)")
    assert bytes(kept.data) == bytes(live_layer(doc).data)
    assert [what for what, _ in doc.undo] == ["add"]  # one undo step
    # Keeping is a change of the document like any other (in Krita it changes the picture the
    # next live job reads; the stub's picture is its bottom layer, so here nothing is sent again).
    pump(controller, lambda: live.stats.changes == 1 and live.stats.unchanged == 1)
    live.disable()
    assert [layer.name for layer in doc.layers] == ["Background", "Paint", kept.name]


def test_live_settings_and_few_step_schedules():
    with pytest.raises(RequestError, match="live strength"):
        LiveSettings(strength=0.0).check()
    with pytest.raises(RequestError, match="live steps"):
        LiveSettings(steps=0).check()
    plain = ModelInfo("sd15", "Stable Diffusion 1.5", "base", "sd15")
    assert live_schedule(plain, LiveSettings(strength=0.5, steps=4)) == live_schedule(None, LiveSettings(0.5, 4))
    schedule = live_schedule(plain, LiveSettings(strength=0.5, steps=4))
    assert (schedule.kind, schedule.sampler, schedule.steps, schedule.cfg_scale) == ("default", "", 8, None)
    assert live_schedule(plain, LiveSettings(strength=0.3, steps=4)).steps == 14  # int(14 * 0.3) = 4 steps run
    lcm = live_schedule(ModelInfo("dreamshaper-lcm", "DreamShaper LCM", "base", "sd15"), LiveSettings(0.5, 4))
    assert (lcm.kind, lcm.sampler, lcm.cfg_scale) == ("lcm", "lcm", 1.5)
    turbo = live_schedule(ModelInfo("sdxl", "SDXL Turbo", "base", "sdxl"), LiveSettings(1.0, 2))
    assert (turbo.kind, turbo.sampler, turbo.steps, turbo.cfg_scale) == ("turbo", "euler_a", 2, 1.0)
    lightning = live_schedule(ModelInfo("juggernaut-lightning", "", "base", "sdxl"), LiveSettings(0.5, 4))
    assert (lightning.kind, lightning.sampler) == ("lightning", "euler")
