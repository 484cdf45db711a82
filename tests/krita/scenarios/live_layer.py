"""Runs INSIDE Krita (loaded by the test driver): live mode's guidance, its reaction to the form,
the live layer kept out of saved files, and the live layer deleted by the painter — on a painted
document with a control layer, against a real easel serve. Records what it saw; the assertions
live in ``test_krita_live_e2e.py``.

* a control layer marked canny guides the live jobs; inverting it (Krita's undoable Invert filter
  on the active layer) makes a live job with a new control image;
* a new prompt typed in the docker makes a live job with no canvas change;
* ``file_save`` (the action behind Ctrl+S and File ▸ Save) with live on: the saved .kra reopened
  has no live layer and every other layer byte-identical, and the live layer is back afterwards;
* the live layer deleted (``Node.remove``, an undoable step like the Layers docker's Delete), a
  new live image, Ctrl+Z, Ctrl+Shift+Z, Ctrl+Z: never two live layers;
* closing the modified image with live on: Krita's "save it?" prompt answered Cancel, then Yes;
  the image's layers are sampled at every turn of the event loop while the close handling runs
  (also while Krita saves inside it) and right after it returns; the saved file is reopened;
* another live image closed with "save it?" answered No;
* quitting Krita with live on and a modified image, answered Yes (the driver quits with it
  modified; the test reads the written .kra after Krita has gone).
"""
import os
import sys

from PyQt5.QtCore import QTimer
from PyQt5.QtWidgets import QMessageBox

from scenario_kit import digest, find_docker, save_target

W, H = 128, 96


def state(doc, skip=()):
    """[name, digest] of every top-level layer, bottom first (the ``skip`` names left out)."""
    return [[n.name(), digest(n.pixelData(0, 0, W, H))] for n in doc.rootNode().childNodes()
            if n.type() == "paintlayer" and n.name() not in skip]


def names(doc):
    return [n.name() for n in doc.rootNode().childNodes()]


def layer(doc, name):
    return next(n for n in doc.rootNode().childNodes() if n.name() == name)


def block(node, x, y, w, h, bgra):
    node.setPixelData(bytes(bgra) * (w * h), x, y, w, h)


def run(ctx):
    app = ctx.app
    plugin = sys.modules["easel_krita"]
    ext = plugin.extension
    controller, live = ext.controller, ext.live
    window = app.activeWindow()
    yield (lambda: controller.view.connection == "online", 60)
    docker = find_docker(window)  # the Easel docker's content
    from easel_krita.control import ControlSpec
    from easel_krita.live import LIVE_LAYER_NAME, LiveSettings
    live.debounce_s = 0.15
    live.set_settings(LiveSettings(strength=0.6, steps=2, seed=77))
    ctx.record("guarded", sorted({a for actions in ext.save_guard.guarded.values() for a in actions}))
    ctx.record("warned", sorted({a for actions in ext.save_guard.warned.values() for a in actions}))

    # -- an image of one layer: the live layer comes and goes without Krita's consistency warnings
    print("EASEL-LIVE-START", flush=True)
    single = app.createDocument(W, H, "single", "RGBA", "U8", "", 72.0)
    window.addView(single)
    app.setActiveDocument(single)
    yield 0.5
    assert live.enable(), live.view.status
    yield (lambda: live.stats.results_drawn and not live.jobs.sending, 120)
    with_live = names(single)
    live.disable()
    ctx.record("single", {"on": with_live, "off": names(single)})
    single.setModified(False)
    single.close()
    yield 0.3
    print("EASEL-LIVE-PAUSE", flush=True)  # making a document and its view logs a SAFE ASSERT of Krita's own

    doc = app.createDocument(W, H, "live-layer", "RGBA", "U8", "", 72.0)
    window.addView(doc)
    app.setActiveDocument(doc)
    yield 0.5
    root = doc.rootNode()
    background = root.childNodes()[0]
    background.setPixelData(bytes((x * 5 % 256, y * 7 % 256, 90, 255)[i] for y in range(H) for x in range(W)
                                  for i in range(4)), 0, 0, W, H)
    paint = doc.createNode("Paint", "paintlayer")
    block(paint, 30, 30, 20, 20, (20, 20, 230, 255))
    root.addChildNode(paint, None)
    edges = doc.createNode("Edges", "paintlayer")
    block(edges, 40, 20, 30, 40, (255, 255, 255, 255))
    root.addChildNode(edges, paint)
    doc.refreshProjection()
    doc.waitForDone()
    doc.setActiveNode(edges)
    yield 0.3
    marked = controller.mark_active_layer(ControlSpec("canny", 0.9))
    doc.setActiveNode(paint)
    path = os.path.join(ctx.artifacts, "live-save.kra")
    saved = save_target(app, doc, path)
    yield 0.3

    print("EASEL-LIVE-START", flush=True)
    drawn = len(live.stats.results_drawn)
    assert live.enable(), live.view.status
    yield (lambda: len(live.stats.results_drawn) > drawn and not live.jobs.sending, 120)
    yield 0.5
    first_controls = live.stats.control_images[-1]
    ctx.record("guided", {"marked": marked, "controls": list(first_controls),
                          "error": live.view.error, "status": live.view.status})

    # -- a stroke on the control layer: Krita's Invert filter on it (undoable, like a brush stroke)
    jobs = live.stats.jobs_sent
    doc.setActiveNode(edges)
    yield 0.2
    app.action("krita_filter_invert").trigger()
    yield (lambda: live.stats.jobs_sent == jobs + 1 and live.stats.results_drawn[-1].endswith(f"-{jobs + 1}")
           and not live.jobs.sending, 120)
    doc.setActiveNode(paint)
    ctx.record("control_stroke", {"jobs": live.stats.jobs_sent - jobs, "controls": list(live.stats.control_images[-1]),
                                  "first": list(first_controls)})

    # -- a new prompt typed in the docker: a live job with no canvas change
    jobs, changes = live.stats.jobs_sent, live.stats.changes
    if docker is not None:
        docker.prompt_edit.setPlainText("a green lighthouse at night")
    yield (lambda: live.stats.jobs_sent == jobs + 1 and live.stats.results_drawn[-1].endswith(f"-{jobs + 1}")
           and not live.jobs.sending, 120)
    ctx.record("prompt", {"docker": docker is not None, "jobs": live.stats.jobs_sent - jobs,
                          "canvas_changes": live.stats.changes - changes,
                          "prompt": live.jobs.shown.request.settings.prompt})

    # -- save with live on (the action behind Ctrl+S)
    doc.setModified(True)
    painter = state(doc, skip=(LIVE_LAYER_NAME,))
    live_pixels = digest(layer(doc, LIVE_LAYER_NAME).pixelData(0, 0, W, H))
    suspended = live.stats.suspended
    app.action("file_save").trigger()
    right_after = names(doc)
    yield (lambda: saved and os.path.exists(path) and not doc.modified(), 60)
    yield 0.5
    copy = app.openDocument(path)
    reopened = state(copy)
    reopened_names = names(copy)
    copy.close()
    yield 0.3
    app.setActiveDocument(doc)
    yield 0.3
    ctx.record("save", {
        "painter": painter, "reopened": reopened, "reopened_names": reopened_names, "right_after": right_after,
        "suspended": live.stats.suspended - suspended, "names_now": names(doc), "saved": list(saved),
        "live_pixels_kept": digest(layer(doc, LIVE_LAYER_NAME).pixelData(0, 0, W, H)) == live_pixels,
        "status": live.view.status, "enabled": live.view.enabled, "modified": doc.modified(),
    })

    # -- the painter deletes the live layer; a new live image; undo; redo; undo
    steps = []

    def step(what):
        steps.append({"what": what, "names": names(doc), "status": live.view.status,
                      "adopted": live.stats.layers_adopted, "recreated": live.stats.layers_recreated})

    layer(doc, LIVE_LAYER_NAME).remove()
    yield (lambda: "was deleted" in live.view.status, 30)
    step("deleted")
    results = len(live.stats.results_drawn)
    live.set_settings(LiveSettings(strength=0.6, steps=2, seed=78))  # a new live image
    yield (lambda: len(live.stats.results_drawn) > results and not live.jobs.sending, 120)
    yield 0.3
    step("new image")
    app.action("edit_undo").trigger()  # the deletion is undone: the old live layer comes back
    yield (lambda: live.stats.layers_adopted == 1, 30)
    yield 0.5
    step("undo")
    app.action("edit_redo").trigger()  # deleted again
    yield (lambda: "was deleted" in live.view.status, 30)
    yield 0.3
    step("redo")
    app.action("edit_undo").trigger()
    yield (lambda: live.stats.layers_adopted == 2, 30)
    yield (lambda: not live.jobs.sending and live.jobs.timer is None, 30)
    yield 0.5
    shown = live.jobs.shown
    node = layer(doc, LIVE_LAYER_NAME)
    step("undo again")
    ctx.record("deleted", {"steps": steps, "shows_newest": bytes(node.pixelData(shown.rect.x, shown.rect.y,
                                                                              shown.rect.width, shown.rect.height))
                           == shown.bgra})

    # -- close the modified image with live on: Krita's "save it?" answered Cancel, then Yes
    doc.setBatchmode(False)
    jobs = live.stats.jobs_sent
    late = doc.createNode("Late", "paintlayer")  # an unsaved change of the painter's
    block(late, 4, 4, 12, 12, (10, 200, 200, 255))
    root.addChildNode(late, edges)
    yield (lambda: live.stats.jobs_sent == jobs + 1 and live.stats.results_drawn[-1].endswith(f"-{jobs + 1}")
           and not live.jobs.sending, 120)
    yield 0.3
    painter = state(doc, skip=(LIVE_LAYER_NAME,))
    live_pixels = digest(layer(doc, LIVE_LAYER_NAME).pixelData(0, 0, W, H))
    modified = doc.modified()
    saved.clear()

    cancelled = close_view(ctx, app, doc, QMessageBox.Cancel)
    yield (lambda: cancelled["returned"] is not None, 60)
    yield (lambda: names(doc)[-1:] == [LIVE_LAYER_NAME], 30)
    yield 0.3
    cancelled.update(after=names(doc), enabled=live.view.enabled, modified=doc.modified(), saved=list(saved),
                     painter=state(doc, skip=(LIVE_LAYER_NAME,)) == painter, status=live.view.status,
                     live_pixels_kept=digest(layer(doc, LIVE_LAYER_NAME).pixelData(0, 0, W, H)) == live_pixels)
    ctx.record("close_cancelled", cancelled)

    closed = close_view(ctx, app, doc, QMessageBox.Yes)
    yield (lambda: closed["returned"] is not None and doc not in app.documents() and not live.view.enabled, 60)
    yield (lambda: saved, 30)
    yield 0.5
    reopened = app.openDocument(path)
    closed.update(painter=painter, modified=modified, reopened=state(reopened), reopened_names=names(reopened),
                  status=live.view.status, enabled=live.view.enabled)
    ctx.record("close", closed)
    reopened.setModified(False)
    reopened.close()
    yield 0.3

    # -- another image with live on, closed with "No": nothing is written, live turns off
    scratch = app.createDocument(W, H, "scratch", "RGBA", "U8", "", 72.0)
    window.addView(scratch)
    app.setActiveDocument(scratch)
    yield 0.5
    scratch.rootNode().childNodes()[0].setPixelData(bytes((90, 40, 200, 255)) * (W * H), 0, 0, W, H)
    drawn = len(live.stats.results_drawn)
    assert live.enable(), live.view.status
    yield (lambda: len(live.stats.results_drawn) > drawn and not live.jobs.sending, 120)
    yield 0.3
    scratch.setModified(True)
    saved.clear()
    discarded = close_view(ctx, app, scratch, QMessageBox.No)
    yield (lambda: discarded["returned"] is not None and scratch not in app.documents() and not live.view.enabled,
           60)
    yield 0.5
    discarded.update(saved=list(saved), status=live.view.status, enabled=live.view.enabled)
    ctx.record("close_discarded", discarded)

    # -- quitting Krita with live on and a modified image: "save it?" answered Yes on the way out
    # (the test reads the file after Krita has quit)
    last = app.createDocument(W, H, "last", "RGBA", "U8", "", 72.0)
    window.addView(last)
    app.setActiveDocument(last)
    yield 0.5
    last.rootNode().childNodes()[0].setPixelData(bytes((30, 160, 60, 255)) * (W * H), 0, 0, W, H)
    quit_path = os.path.join(ctx.artifacts, "live-quit.kra")
    save_target(app, last, quit_path)
    last.setBatchmode(False)
    drawn = len(live.stats.results_drawn)
    assert live.enable(), live.view.status
    yield (lambda: len(live.stats.results_drawn) > drawn and not live.jobs.sending, 120)
    yield 0.3
    last.setModified(True)
    at_quit = []

    def answer_at_quit(widget):
        if not isinstance(widget, QMessageBox):
            return False
        at_quit.append(names(last))
        ctx.record("quit", {"path": quit_path, "prompts": at_quit, "names_before": with_live})
        widget.button(QMessageBox.Yes).click()
        return True

    with_live = names(last)
    ctx.record("quit", {"path": quit_path, "prompts": at_quit, "names_before": with_live})
    ctx.dialog_handler = answer_at_quit
    ctx.quit_with_changes = True  # the driver quits Krita with this image modified


def close_view(ctx, app, doc, button):
    """Close ``doc``'s view as File > Close does and answer Krita's "save it?" with ``button``.
    Returns a dict that gets: the image's layers at the prompt; every distinct layer list the
    image had while the close handling ran (a 1 ms timer: it fires whenever Krita processes
    events, also while it saves); and the layers right after the close handling returned, or
    "closed"."""
    seen = {"prompts": [], "during": [], "returned": None}

    def look():
        if doc in app.documents():
            now = names(doc)
            if not seen["during"] or seen["during"][-1] != now:
                seen["during"].append(now)

    def answer(widget):
        if not isinstance(widget, QMessageBox):
            return False
        seen["prompts"].append({"text": widget.text(), "names": names(doc)})
        widget.button(button).click()
        return True

    sampler = QTimer()
    sampler.setInterval(1)
    sampler.timeout.connect(look)

    def close():
        ctx.dialog_handler = answer
        sampler.start()
        app.action("file_close").trigger()  # returns once Krita's close handling (and its save) is over
        sampler.stop()
        ctx.dialog_handler = None
        seen["returned"] = names(doc) if doc in app.documents() else "closed"
        del seen["sampler"]

    seen["sampler"] = sampler  # kept alive until the close is over
    QTimer.singleShot(0, close)
    return seen
