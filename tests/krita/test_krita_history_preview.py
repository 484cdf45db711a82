"""A click on a history thumbnail previews the result on the canvas (history_preview.py): a locked
"Easel preview" layer with the result's pixels where it was placed, taken away by a second click,
by another preview, and before Apply adds the real layer. A real ``easel serve`` (demo model) and
the STUB HOST of ``krita_fake_host.py`` in place of Krita; real Krita runs the same through the
docker in ``test_krita_batch_undo.py``."""
from __future__ import annotations

from easel_krita.geometry import Rect
from easel_krita.history_preview import PREVIEW_PREFIX, HistoryPreview
from easel_krita.request import Action
from krita_jobs_kit import connect, finish, painted_doc, pump


def test_a_click_previews_on_the_canvas_a_second_click_hides_and_apply_adds_the_layer(backend):
    doc = painted_doc(Rect(8, 8, 48, 40))
    controller, _ = connect(backend.url, doc, seed=9)
    try:
        controller.start(Action.GENERATE)
        finish(controller)
        entry = controller.history.latest()
        result = doc.layers[-1]
        doc.layers.remove(result)  # the painter deleted the layer; the history keeps the result
        preview = HistoryPreview(controller)

        preview.toggle(entry.id, 0)
        pump(controller, lambda: doc.layers[-1].name.startswith(PREVIEW_PREFIX) and doc.layers[-1].visible)
        shown = doc.layers[-1]
        assert shown.name == PREVIEW_PREFIX + "a lighthouse · seed 9" and shown.locked
        assert shown.data == result.data  # the result's pixels, where it was placed (masked to the selection)
        assert "double-click it to apply" in controller.view.message

        preview.toggle(entry.id, 0)  # the same thumbnail again: hidden, nothing left behind
        assert shown not in doc.layers and not preview.showing
        assert controller.view.message == "Preview hidden."

        preview.toggle(entry.id, 0)
        pump(controller, lambda: doc.layers[-1].name.startswith(PREVIEW_PREFIX))
        preview.hide()  # what the docker does before Apply
        controller.apply_history(entry.id, 0)
        pump(controller, lambda: doc.layers[-1].name == "a lighthouse · seed 9")
        assert [layer.name for layer in doc.layers] == ["Background", "a lighthouse · seed 9"]
        assert doc.layers[-1].data == result.data and not doc.layers[-1].locked

        preview.toggle(entry.id, 0)
        pump(controller, lambda: preview.layer is not None and preview.layer.visible)
        preview.forget(entry.id)  # discarded: its preview goes too
        assert not any(layer.name.startswith(PREVIEW_PREFIX) for layer in doc.layers)
    finally:
        controller.connection.close()


def test_a_result_without_pixels_or_too_big_for_the_canvas_is_refused_with_a_sentence(backend):
    doc = painted_doc()
    controller, _ = connect(backend.url, doc, seed=2)
    try:
        controller.start(Action.GENERATE)
        finish(controller)
        entry = controller.history.latest()
        preview = HistoryPreview(controller)
        doc.width, doc.height = 40, 30  # the canvas shrank since (the stub's size only)
        preview.toggle(entry.id, 0)
        assert controller.view.message_is_error and "larger canvas" in controller.view.message
        preview.toggle(999, 0)
        assert controller.view.message_is_error and not preview.showing
    finally:
        controller.connection.close()
