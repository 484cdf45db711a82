"""The live layer when the painter deletes it (and undoes that), and while the image is saved —
``LiveMode`` against a real ``easel serve`` (demo model) with the STUB HOST of ``krita_live_kit``
(its deletion and undo act like Krita's: the same layer object comes back at its place). Real
Krita does the same in ``test_krita_live_e2e.py`` (scenario ``live_layer.py``).
"""
from __future__ import annotations

from dataclasses import replace

from easel_krita.geometry import Rect
from krita_fake_host import FakeDoc
from krita_live_kit import LIVE_LAYER_NAME, H, W, live_doc, make, pump, settle  # noqa: F401  (make: a fixture)


def live_layers(doc: FakeDoc) -> list:
    return [layer for layer in doc.layers if layer.name == LIVE_LAYER_NAME]


def painter_layers(doc: FakeDoc) -> list[tuple[str, bytes]]:
    return [(layer.name, bytes(layer.data)) for layer in doc.layers if layer.name != LIVE_LAYER_NAME]


def test_a_deleted_live_layer_comes_back_once_and_an_undone_deletion_leaves_one_live_layer(make):
    doc = live_doc()
    controller, host, live = make(doc)
    assert live.enable()
    pump(controller, lambda: live.stats.results_drawn)
    first, = live_layers(doc)

    # The painter deletes the live layer: live mode says so and stays on; nothing else changes.
    host.delete_layer(doc, first)
    pump(controller, lambda: "was deleted" in live.view.status)
    assert live.view.enabled and live_layers(doc) == []
    assert "the next live image brings it back" in live.view.status

    # The next live image (here: a new live seed) brings one live layer back, on top, holding it.
    live.set_settings(replace(live.settings, seed=6))
    pump(controller, lambda: len(live.stats.results_drawn) == 2)
    second, = live_layers(doc)
    assert second is not first and doc.layers[-1] is second and live.stats.layers_recreated == 1
    assert second.block(live.jobs.shown.rect) == live.jobs.shown.bgra

    # Ctrl+Z of the deletion brings the old layer back: it is adopted (Krita's undo history knows
    # it), the newer one goes without an undo step, and it shows the newest live image.
    host.undo_delete(doc)
    pump(controller, lambda: live.stats.layers_adopted == 1)
    settle(controller, 0.3)
    only, = live_layers(doc)
    assert only is first and not second.attached
    assert only.block(live.jobs.shown.rect) == live.jobs.shown.bgra
    assert doc.undo == []  # the deletion was undone; live mode added no step
    assert live.view.enabled and not live.view.error, live.view.status

    # Painting on goes to the adopted layer; Keep works; off leaves no live layer behind.
    host.paint(doc, doc.layers[0], Rect(40, 40, 8, 8), bytes([200, 0, 0, 255]))
    pump(controller, lambda: len(live.stats.results_drawn) == 3)
    assert live_layers(doc) == [first] and first.block(live.jobs.shown.rect) == live.jobs.shown.bgra
    painter = painter_layers(doc)
    live.disable()
    assert live_layers(doc) == [] and painter_layers(doc) == painter


def test_a_live_layer_an_undo_brings_back_while_live_is_off_is_taken_over_by_the_next_live_on(make):
    doc = live_doc()
    controller, host, live = make(doc)
    assert live.enable()
    pump(controller, lambda: live.stats.results_drawn)
    old, = live_layers(doc)
    host.delete_layer(doc, old)
    pump(controller, lambda: "was deleted" in live.view.status)
    live.disable()
    host.undo_delete(doc)  # the old live layer is back while live mode is off
    assert live_layers(doc) == [old]
    assert live.enable()
    pump(controller, lambda: len(live.stats.results_drawn) == 2)
    assert live_layers(doc) == [old]  # taken over, not joined by a second one
    alpha = bytes(old.data[3::4])
    assert alpha == b"\xff" * (W * H)  # redrawn with the new live image
    live.disable()
    assert live_layers(doc) == []


def test_keep_after_the_live_layer_was_deleted_brings_it_back_first(make):
    doc = live_doc()
    controller, host, live = make(doc)
    assert live.enable()
    pump(controller, lambda: live.stats.results_drawn)
    host.delete_layer(doc, live_layers(doc)[0])
    pump(controller, lambda: "was deleted" in live.view.status)
    kept = live.keep()
    assert kept is not None and [layer.name for layer in doc.layers][-2:] == [kept.name, LIVE_LAYER_NAME]
    assert bytes(kept.data) == bytes(live_layers(doc)[0].data)


def test_suspend_takes_the_live_layer_out_for_a_save_and_resume_puts_the_same_layer_back(make):
    doc = live_doc(Rect(16, 16, 48, 40))
    controller, host, live = make(doc)
    assert live.enable()
    pump(controller, lambda: live.stats.results_drawn)
    layer, = live_layers(doc)
    painter = painter_layers(doc)
    assert not live.suspend(FakeDoc(8, 8))  # another image: nothing to take out

    assert live.suspend(doc)
    assert live_layers(doc) == [] and painter_layers(doc) == painter  # what a save would write
    assert not live.suspend(doc)  # once
    # A change during the save (a result on its way) draws nothing and adds no layer...
    host.paint(doc, doc.layers[0], Rect(20, 20, 6, 6), bytes([0, 0, 255, 255]))
    settle(controller, 0.6)
    assert live_layers(doc) == [] and live.stats.jobs_sent == 1
    assert live.keep() is None and "being saved" in live.view.status

    # ...and after it the same layer is back on top, then the change's live image follows.
    live.resume()
    assert live_layers(doc) == [layer] and doc.layers[-1] is layer and layer.attached
    assert layer.block(live.jobs.shown.rect) == live.jobs.shown.bgra  # its pixels came back with it
    pump(controller, lambda: len(live.stats.results_drawn) == 2)
    assert layer.block(live.jobs.shown.rect) == live.jobs.shown.bgra
    assert [what for what, _ in doc.undo] == ["paint"]  # taking it out and back left no undo step

    # A result that arrives while suspended is drawn by resume.
    assert live.suspend(doc)
    host.paint(doc, doc.layers[0], Rect(30, 30, 6, 6), bytes([0, 255, 0, 255]))
    live.resume()
    pump(controller, lambda: live.stats.jobs_sent == 3)
    assert live.suspend(doc)
    pump(controller, lambda: len(live.stats.results_drawn) == 3)  # it arrives while the layer is out
    assert live_layers(doc) == []
    live.resume()
    assert layer.block(live.jobs.shown.rect) == live.jobs.shown.bgra and live.jobs.shown.job_id == live.stats.results_drawn[-1]

    # Closed during the save: resume turns live off with a sentence.
    assert live.suspend(doc)
    doc.open = False
    live.resume()
    assert not live.view.enabled and live.view.status == "Live is off: its image was closed."


def test_turning_live_off_during_a_save_leaves_no_live_layer(make):
    doc = live_doc()
    controller, host, live = make(doc)
    assert live.enable()
    pump(controller, lambda: live.stats.results_drawn)
    painter = painter_layers(doc)
    assert live.suspend(doc)
    live.disable()
    live.resume()  # the save's end: nothing to put back
    assert live_layers(doc) == [] and painter_layers(doc) == painter and not live.view.enabled
