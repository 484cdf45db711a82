"""Runs INSIDE Krita (loaded by the test driver): the docker's history is kept in the document.

Generates two results on a painted image (the plugin's own action), looks at a second image (its
own, empty history), saves the first with Krita's *Save* action right after the second result,
closes both, reopens the ``.kra`` and applies the restored first entry again through the docker's
*Apply again* button. Records what it saw; the assertions live in ``test_krita_history_e2e.py``.
"""
import hashlib
import os
import sys

from krita import Krita, Selection

from scenario_kit import find_docker, history_apply, layers, save_target, wait_jobs

W, H = 128, 96
SEL = (16, 8, 80, 64)


def digest(node):
    return hashlib.sha256(bytes(node.pixelData(0, 0, W, H))).hexdigest()


def entries(controller):
    return [{"request": e.request.to_dict(), "seeds": list(e.seeds), "status": e.status, "detail": e.detail,
             "images": len(e.images), "mask": e.mask is not None} for e in controller.history]


def docker_rows(docker):
    """The history grid's thumbnails as "<action>: <prompt> · seed <n>" (their hover text's first lines)."""
    grid = docker.history.list
    return [" · ".join(grid.item(i).toolTip().split("\n")[:2]) for i in range(grid.count())]


def show(app, window, doc):
    """Make ``doc``'s view the active one (what clicking its tab does); ``setActiveDocument`` alone
    does not change the view that ``activeDocument`` follows."""
    for view in window.views():
        if view.document() == doc:
            window.showView(view)
            view.setVisible()
    app.setActiveDocument(doc)


def run(ctx):
    app = Krita.instance()
    controller = sys.modules["easel_krita"].extension.controller
    yield (lambda: controller.view.connection == "online", 120)
    window = app.activeWindow()
    doc = app.createDocument(W, H, "easel-history", "RGBA", "U8", "", 72.0)
    window.addView(doc)
    app.setActiveDocument(doc)
    yield 0.3
    background = doc.rootNode().childNodes()[0]
    background.setName("Background")
    background.setPixelData(b"".join(bytes((x * 2, 120, 200, 255)) for _ in range(H) for x in range(W)), 0, 0, W, H)
    selection = Selection()
    selection.select(*SEL, 255)
    doc.setSelection(selection)
    doc.refreshProjection()
    docker = find_docker(window)
    docker.prompt_edit.setPlainText("a lighthouse")
    docker.seed_random.setChecked(False)
    docker.seed_spin.setValue(77)
    docker.steps_spin.setValue(4)

    # -- a result; the history is stored in the image (it becomes modified)
    app.action("easel_generate").trigger()
    yield from wait_jobs(controller)
    yield (lambda: "easel.history" in doc.annotationTypes(), 30)
    first = layers(doc)[-1]
    ctx.record("first", {"layer": first.name(), "digest": digest(first), "history": entries(controller),
                         "modified": doc.modified()})

    # -- another image has its own history
    other = app.createDocument(64, 64, "easel-other", "RGBA", "U8", "", 72.0)
    window.addView(other)
    show(app, window, other)
    yield 1.5  # the docker follows the active image (canvasChanged, and its 1 s poll)
    ctx.record("other", {"history": entries(controller), "rows": docker_rows(docker),
                         "modified": other.modified(), "annotations": list(other.annotationTypes())})
    show(app, window, doc)
    yield 1.5
    ctx.record("back", {"rows": docker_rows(docker), "active": app.activeDocument() == doc})
    if app.activeDocument() != doc:
        raise AssertionError("could not make the first image active again")

    # -- a second result, then Krita's Save at once: the file holds both entries
    path = os.path.join(ctx.artifacts, "history.kra")
    saved = save_target(app, doc, path)
    docker.seed_spin.setValue(78)
    app.action("easel_generate").trigger()
    yield from wait_jobs(controller)
    app.action("file_save").trigger()
    yield (lambda: saved and os.path.exists(path) and not doc.modified(), 60)
    yield 0.5
    ctx.record("saved", {"history": entries(controller), "modified_after": doc.modified()})
    # a history write that lands after the save (as the background one can) keeps it unmodified
    known = next(d for d in controller.documents.open if d.doc == doc)
    controller.documents.store(known)
    yield (lambda: not known.writing and known.written == known.version, 30)
    ctx.record("late_write", {"modified": doc.modified(), "written": known.written})
    doc.close()
    other.setModified(False)
    other.close()
    yield 0.5

    # -- reopen: the history comes back, the image stays unmodified
    copy = app.openDocument(path)
    window.addView(copy)
    show(app, window, copy)
    yield 1.5
    restored = list(controller.history)
    ctx.record("reopened", {"history": entries(controller), "rows": docker_rows(docker),
                            "modified": copy.modified(), "layers": [n.name() for n in layers(copy)],
                            "digests": {n.name(): digest(n) for n in layers(copy)}})

    # -- Apply again on the restored first entry: a double click on its thumbnail
    target = restored[0].id
    row = next(i for i, key in enumerate(docker.history.keys()) if key[0] == target)
    count = len(layers(copy))
    history_apply(docker, row)
    yield (lambda: len(layers(copy)) == count + 1, 60)
    yield 0.3
    added = layers(copy)[-1]
    ctx.record("applied", {"layer": added.name(), "digest": digest(added), "message": controller.view.message})
    copy.setModified(False)
    copy.close()
    yield 0.3
