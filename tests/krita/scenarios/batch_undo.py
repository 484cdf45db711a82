"""Inside Krita: a batch of three results is one undo step (issue 13). Records the layer tree, the
Undo History's rows and the tree after one undo and one redo; the assertions are in
``test_krita_batch_undo.py``."""
import sys
from dataclasses import replace

from krita import Krita
from PyQt5.QtWidgets import QAbstractItemView, QDockWidget

from scenario_kit import wait_jobs

W, H = 128, 96


def undo_rows(window):
    for view in window.qwindow().findChildren(QAbstractItemView):
        model = view.model()
        if model is not None and model.metaObject().className() == "KisUndoModel":
            return model.rowCount()
    return -1


def undo_current(window):
    """The Undo History's current step (an undone step stays listed until a new one replaces it)."""
    for view in window.qwindow().findChildren(QAbstractItemView):
        model = view.model()
        if model is not None and model.metaObject().className() == "KisUndoModel":
            return view.selectionModel().currentIndex().row()
    return -1


def tree(doc):
    out = []
    for node in doc.rootNode().childNodes():
        if node.type() == "grouplayer":
            children = node.childNodes()
            out.append([node.name(), [[c.name(), c.visible(), c.bounds().width(), c.bounds().height()] for c in children]])
        elif node.type() == "paintlayer":
            out.append(node.name())
    return out


def run(ctx):
    from easel_krita.request import Action  # the installed plugin's package

    app = Krita.instance()
    ext = sys.modules["easel_krita"].extension
    controller = ext.controller
    window = app.activeWindow()
    yield (lambda: controller.view.connection == "online", 120)
    doc = app.createDocument(W, H, "batch", "RGBA", "U8", "", 72.0)
    window.addView(doc)
    app.setActiveDocument(doc)
    yield 0.5
    controller.set_settings(replace(controller.settings, prompt="three pears", steps=2, seed=40, batch_size=3))
    before = undo_rows(window)
    controller.start(Action.GENERATE)
    yield from wait_jobs(controller, 180)
    yield 0.5
    ctx.record("message", controller.view.message)
    ctx.record("tree", tree(doc))
    ctx.record("steps_added", undo_rows(window) - before)
    ctx.screenshot("batch_group.png")
    app.action("edit_undo").trigger()
    doc.waitForDone()
    yield 0.5
    ctx.record("after_undo", tree(doc))
    app.action("edit_redo").trigger()
    doc.waitForDone()
    yield 0.5
    ctx.record("after_redo", tree(doc))

    # The history grid's click and double click, as the docker reports them: a click previews the
    # second image on the canvas, a second click hides it (no Undo History step left), a double
    # click applies it as a new layer.
    dock = next(d for d in window.qwindow().findChildren(QDockWidget) if type(d).__name__ == "EaselCompactDocker")
    entry = controller.history.latest().id
    top = lambda: doc.rootNode().childNodes()[-1]  # noqa: E731
    rows, current = undo_rows(window), undo_current(window)
    dock.body.actions.preview(entry, 1)
    yield (lambda: top().name().startswith("Easel preview") and top().visible(), 30)
    ctx.record("preview", {"name": top().name(), "locked": top().locked(), "steps": undo_rows(window) - rows,
                           "message": controller.view.message})
    ctx.screenshot("history_preview.png")
    dock.body.actions.preview(entry, 1)
    yield 0.5
    ctx.record("preview_hidden", {"tree": tree(doc), "current_step_moved": undo_current(window) - current})
    dock.body.actions.preview(entry, 1)
    yield (lambda: top().name().startswith("Easel preview") and top().visible(), 30)  # drawn, as the painter sees it
    yield 0.3
    dock.body.actions.apply(entry, 1)
    yield (lambda: top().name() == "three pears · seed 41", 30)
    yield 0.3
    ctx.record("applied", {"tree": tree(doc), "steps": undo_rows(window) - rows})
    doc.setModified(False)
