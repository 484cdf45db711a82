"""Runs INSIDE Krita (loaded by the test driver): drives the Easel plugin's own actions on a painted
document with a selection, and records what the document looked like at each point.

The assertions live in ``test_krita_e2e.py``; this file only observes. Pixel checks read layers
back with ``Node.pixelData`` (BGRA) over the whole canvas.
"""
import sys
import time
from dataclasses import replace

from krita import Krita, Selection
from PyQt5.QtCore import Qt
from PyQt5.QtTest import QTest
from PyQt5.QtWidgets import QDockWidget

from scenario_kit import digest, find_docker, history_apply, layers, names

W, H = 192, 160
SEL = (40, 32, 96, 80)            # x, y, w, h of the rectangular selection
MARGINS = (32, 16, 0, 24)         # Expand: left, top, right, bottom
PROMPT = "a lighthouse at dusk"


def layer_pixels(node, doc):
    return bytes(node.pixelData(0, 0, doc.width(), doc.height()))


def alpha_box(data, width, height):
    """Bounding box (x, y, w, h) of pixels with alpha > 0, or None."""
    alpha = data[3::4]
    rows = [y for y in range(height) if alpha[y * width:(y + 1) * width].strip(b"\x00")]
    if not rows:
        return None
    left = min(len(alpha[y * width:(y + 1) * width]) - len(alpha[y * width:(y + 1) * width].lstrip(b"\x00")) for y in rows)
    right = max(len(alpha[y * width:(y + 1) * width].rstrip(b"\x00")) for y in rows)
    return [left, rows[0], right - left, rows[-1] + 1 - rows[0]]


def alpha_stats(data, width, rect):
    """(min alpha inside rect, max alpha outside rect)."""
    x0, y0, w, h = rect
    alpha = data[3::4]
    inside, outside = 255, 0
    height = len(alpha) // width
    for y in range(height):
        row = alpha[y * width:(y + 1) * width]
        if y0 <= y < y0 + h:
            inside = min(inside, min(row[x0:x0 + w]))
            outside = max(outside, max(row[:x0], default=0), max(row[x0 + w:], default=0))
        else:
            outside = max(outside, max(row))
    return inside, outside


def run_job(ctx, controller, doc, trigger, key, crop):
    """Trigger an action, watch the canvas while it runs, wait for the end."""
    before = names(doc)
    seen = {"preview_layer": False, "preview_pixels": False, "preview_visible": None, "preview_locked": None,
            "preview_crop_ok": None}
    start = time.monotonic()
    ctx.probe.reset()
    trigger()
    deadline = start + 180

    def watch():
        for node in layers(doc):
            if node.name().startswith("Easel preview"):
                seen["preview_layer"] = True
                seen["preview_locked"] = node.locked()
                data = layer_pixels(node, doc)
                box = alpha_box(data, doc.width(), doc.height())
                if box is not None:
                    seen["preview_pixels"] = True
                    # Shown once its first preview is whole: a watch between two strips of that
                    # first write sees pixels on a still hidden layer, so record whether it was ever shown.
                    seen["preview_visible"] = bool(seen["preview_visible"]) or node.visible()
                    x, y, w, h = crop
                    seen["preview_crop_ok"] = box[0] >= x and box[1] >= y and box[0] + box[2] <= x + w and box[1] + box[3] <= y + h

    while controller.jobs or time.monotonic() - start < 0.05:
        watch()
        if time.monotonic() > deadline:
            raise AssertionError(f"{key} did not finish: {controller.view}")
        yield 0.01
    seen["elapsed_s"] = round(time.monotonic() - start, 2)
    seen["ui_max_stall_s"] = round(ctx.probe.max_gap, 4)
    seen["message"] = controller.view.message
    seen["error"] = controller.view.message_is_error
    seen["new_layers"] = names(doc)[len(before):]  # Easel adds its layers at the top of the stack
    ctx.record(key, seen)


def check_result(ctx, doc, key, originals, rect):
    """Record the newest layer's geometry and whether the painter's layers are untouched."""
    observed = ctx.data["observations"][key]
    node = layers(doc)[-1]
    data = layer_pixels(node, doc)
    inside, outside = alpha_stats(data, doc.width(), rect)
    observed.update(
        result_name=node.name(),
        result_box=alpha_box(data, doc.width(), doc.height()),
        result_min_alpha_inside=inside,
        result_max_alpha_outside=outside,
        result_locked=node.locked(),
        result_visible=node.visible(),
        originals_unchanged={name: digest(layer_pixels(n, doc)) == originals[name]
                             for n in layers(doc) for name in [n.name()] if name in originals},
    )
    ctx.record(key, observed)


def run(ctx):
    app = Krita.instance()
    plugin = sys.modules["easel_krita"]
    extension = plugin.extension
    controller = extension.controller
    yield (lambda: controller.view.connection == "online", 120)
    ctx.record("status", controller.view.status)
    ctx.record("models", [m.id for m in controller.view.models])
    ctx.record("shortcuts", {name: app.action(name).shortcut().toString()
                             for name in ("easel_generate", "easel_refine", "easel_fill", "easel_expand", "easel_cancel")})

    window = app.activeWindow()
    window.qwindow().setGeometry(0, 0, 1600, 1000)  # no window manager under Xvfb: size it ourselves
    for dock in window.qwindow().findChildren(QDockWidget):  # room for the Easel docker in the screenshot
        if dock.windowTitle() in ("Advanced Color Selector", "Brush Presets", "Tool Options"):
            dock.hide()
    doc = app.createDocument(W, H, "easel-e2e", "RGBA", "U8", "", 72.0)
    window.addView(doc)
    app.setActiveDocument(doc)
    yield 0.3
    root = doc.rootNode()
    background = root.childNodes()[0]
    background.setName("Background")
    gradient = b"".join(bytes((x * 255 // W, y * 255 // H, 90, 255)) for y in range(H) for x in range(W))
    background.setPixelData(gradient, 0, 0, W, H)
    paint = doc.createNode("Paint", "paintlayer")
    root.addChildNode(paint, None)
    paint.setPixelData(bytes((20, 20, 220, 255)) * (50 * 40), 70, 50, 50, 40)  # a red block across the selection edge
    doc.waitForDone()
    doc.refreshProjection()
    originals = {node.name(): digest(layer_pixels(node, doc)) for node in layers(doc)}
    ctx.record("original_layers", names(doc))

    selection = Selection()
    selection.select(*SEL, 255)
    doc.setSelection(selection)

    docker = find_docker(window)
    ctx.record("docker_found", docker is not None)
    docker.prompt_edit.setPlainText(PROMPT)
    docker.seed_random.setChecked(False)
    docker.seed_spin.setValue(1234)
    # Enough steps that previews are drawn while the job runs, not only the one drawn as the
    # result arrives (which the watch below may miss on a tiny model).
    docker.steps_spin.setValue(24)
    docker.strength_slider.setValue(60)
    docker.context_spin.setValue(24)
    from easel_krita.geometry import Margins  # the installed plugin's

    controller.set_settings(replace(controller.settings, margins=Margins(*MARGINS)))  # Expand's, used last
    yield 0.05
    ctx.record("form_settings", controller.settings.to_dict())

    # -- Generate into the selection, then Ctrl+Z removes it
    yield from run_job(ctx, controller, doc, app.action("easel_generate").trigger, "generate", SEL)
    check_result(ctx, doc, "generate", originals, SEL)
    app.action("edit_undo").trigger()
    doc.waitForDone()
    yield 0.2
    ctx.record("after_undo_layers", names(doc))
    ctx.record("after_undo_originals", {n.name(): digest(layer_pixels(n, doc)) == originals.get(n.name())
                                        for n in layers(doc)})

    # -- Refine and Fill inside the selection (their results stay). Refine runs steps x strength:
    # 40 x 0.6 = 24 steps, so its previews too are drawn while it runs (14 steps were missed under load).
    docker.steps_spin.setValue(40)
    yield 0.05
    yield from run_job(ctx, controller, doc, app.action("easel_refine").trigger, "refine", SEL)
    docker.steps_spin.setValue(24)
    yield 0.05
    check_result(ctx, doc, "refine", originals, SEL)
    yield from run_job(ctx, controller, doc, app.action("easel_fill").trigger, "fill", SEL)
    check_result(ctx, doc, "fill", originals, SEL)
    yield 0.3
    ctx.record("screenshot", ctx.screenshot("krita-easel-results.png"))

    # -- a server error becomes a sentence in the docker
    docker.steps_spin.setValue(180)  # the field stops at the welcome's limit (150)
    ctx.record("steps_field_after_180", docker.steps_spin.value())
    sampler = controller.settings.sampler
    controller.set_settings(replace(controller.settings, sampler="no_such_sampler"))  # only the server knows it
    yield from run_job(ctx, controller, doc, app.action("easel_generate").trigger, "server_error", SEL)
    ctx.record("docker_message", docker.message_label.text())
    controller.set_settings(replace(controller.settings, sampler=sampler))
    docker.steps_spin.setValue(24)  # as above: Expand's previews are drawn while it runs

    # -- history: apply again from the docker
    ctx.record("history_items", docker.history.list.count())
    layers_before = len(names(doc))
    history_apply(docker, 0)
    yield (lambda: len(names(doc)) == layers_before + 1, 30)
    ctx.record("apply_again_layer", names(doc)[-1])

    # -- Expand: the canvas grows, nothing shifts; two undos restore everything
    doc.setSelection(Selection())  # deselect: Expand ignores the selection anyway
    before_size = (doc.width(), doc.height())
    ctx.record("layers_before_expand", names(doc))
    bg_before = layer_pixels(background, doc)
    asked = {}

    def expand_asking_first():
        """Expand asks for the margins before anything grows; OK starts it; a second click while
        it runs is refused."""
        app.action("easel_expand").trigger()
        dialog = extension.expand_dialog
        margins = dialog.margins()
        asked.update(shown=dialog.isVisible(), prefilled=[margins.left, margins.top, margins.right, margins.bottom],
                     size_while_asking=[doc.width(), doc.height()], jobs_while_asking=len(controller.jobs))
        dialog.accept()
        asked["jobs_after_ok"] = len(controller.jobs)
        app.action("easel_expand").trigger()
        asked.update(second_click=controller.view.message, jobs_after_second=len(controller.jobs),
                     second_dialog=extension.expand_dialog.isVisible())

    yield from run_job(ctx, controller, doc, expand_asking_first, "expand",
                       (0, 0, W + MARGINS[0] + MARGINS[2], H + MARGINS[1] + MARGINS[3]))
    ctx.record("expand_asked", asked)
    left, top = MARGINS[0], MARGINS[1]
    moved = bytes(background.pixelData(left, top, before_size[0], before_size[1]))
    newest = layers(doc)[-1]
    expand = ctx.data["observations"]["expand"]
    expand.update(size_before=list(before_size), size_after=[doc.width(), doc.height()],
                  background_moved_intact=moved == bg_before,
                  result_name=newest.name(),
                  result_box=alpha_box(layer_pixels(newest, doc), doc.width(), doc.height()))
    ctx.record("expand", expand)
    app.action("edit_undo").trigger()
    doc.waitForDone()
    app.action("edit_undo").trigger()
    doc.waitForDone()
    yield 0.2
    ctx.record("expand_undone", {"size": [doc.width(), doc.height()],
                                 "background_intact": layer_pixels(background, doc) == bg_before,
                                 "layers": names(doc)})

    # -- a cancelled job: the preview goes away, nothing else changes (shortcut Ctrl+Alt+Shift+X)
    selection = Selection()
    selection.select(*SEL, 255)
    doc.setSelection(selection)
    docker.steps_spin.setValue(150)
    layers_before_cancel = names(doc)
    digests_before_cancel = [digest(layer_pixels(n, doc)) for n in layers(doc)]
    app.action("easel_generate").trigger()
    state = {"preview": False}

    def preview_drawn():
        for node in layers(doc):
            if node.name().startswith("Easel preview") and alpha_box(layer_pixels(node, doc), doc.width(), doc.height()):
                state["preview"] = True
        return state["preview"]

    yield (preview_drawn, 120)
    ctx.record("cancel_preview_seen", state["preview"])
    window.qwindow().activateWindow()
    QTest.keyClick(window.qwindow(), Qt.Key_X, Qt.ControlModifier | Qt.AltModifier | Qt.ShiftModifier)
    yield (lambda: not controller.jobs, 30)
    cancelled_by_shortcut = True  # (the wait above fails the scenario if the key did not cancel)
    yield 0.2
    digests_after_cancel = [digest(layer_pixels(n, doc)) for n in layers(doc)]
    layers_after_cancel = names(doc)
    app.action("edit_undo").trigger()  # the cancelled job left no step behind: this undoes "Apply again"
    doc.waitForDone()
    yield 0.2
    ctx.record("cancel", {
        "layers_after_undo": names(doc),
        "by_shortcut": cancelled_by_shortcut,
        "message": controller.view.message,
        "layers": layers_after_cancel,
        "layers_before": layers_before_cancel,
        "unchanged": digests_after_cancel == digests_before_cancel,
    })

    # -- a cancelled Expand: the canvas grew for its previews, and shrinks back without a trace
    layers_before = names(doc)
    grown = (doc.width() + MARGINS[0] + MARGINS[2], doc.height() + MARGINS[1] + MARGINS[3])
    app.action("easel_expand").trigger()
    extension.expand_dialog.accept()  # the margins used last
    yield (lambda: (doc.width(), doc.height()) == grown and preview_drawn(), 120)
    app.action("easel_cancel").trigger()
    yield (lambda: not controller.jobs, 30)
    yield 0.2
    after = {"size": [doc.width(), doc.height()], "layers": names(doc), "layers_before": layers_before,
             "message": controller.view.message}
    app.action("edit_undo").trigger()  # undoes the step before the Expand (the Fill result's layer)
    doc.waitForDone()
    yield 0.2
    after["layers_after_undo"] = names(doc)
    after["size_after_undo"] = [doc.width(), doc.height()]
    ctx.record("expand_cancel", after)
    ctx.record("stats", {"previews_drawn": controller.stats.previews_drawn,
                         "results_applied": controller.stats.results_applied,
                         "longest_main_thread_step_s": controller.stats.longest_main_thread_step_s,
                         "longest_main_thread_step": controller.stats.longest_main_thread_step})
    ctx.record("ui_max_stall_s", ctx.probe.max_gap)
