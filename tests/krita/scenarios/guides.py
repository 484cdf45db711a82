"""Runs INSIDE Krita (loaded by the test driver): a reference layer and two region layers (a paint
layer, and a group whose child is painted at half alpha), marked with the compact docker's own
controls; Refine in a selection; then the image is saved as .kra, closed, reopened, and Generate
runs on the copy, which is closed as soon as its result layer is in (a script can be that quick:
Krita 5.1.5 crashed then, before the plugin flushed its layer list). Records what the layers hold,
the result layers and what the docker shows; the proxy logs what the plugin sent; the assertions
live in ``test_krita_guides_e2e.py``.
"""
import os
import sys

from krita import Krita, Selection
from PyQt5.QtWidgets import QDockWidget

from scenario_kit import digest, painted, rgba, save_target, wait_jobs

W, H = 160, 128
PHOTO = (100, 70, 40, 30)    # the reference picture's box on its layer
DOOR = (30, 20, 24, 40)      # opaque, on a paint layer
CAT = (70, 24, 40, 28)       # alpha 128, on a paint layer inside a group
SEL = (20, 12, 100, 72)


def select(doc, rect):
    selection = Selection()
    if rect is not None:
        selection.select(*rect, 255)
    doc.setSelection(selection)


def layer_named(doc, name):
    stack = list(doc.rootNode().childNodes())
    while stack:
        node = stack.pop()
        if node.name() == name:
            return node
        stack.extend(node.childNodes())
    raise AssertionError(f"no layer {name!r}")


def activate(doc, node):
    """Make ``node`` the selected layer (Krita applies it on a later event-loop turn)."""
    for _ in range(50):
        doc.setActiveNode(node)
        yield 0.1
        if doc.activeNode() is not None and doc.activeNode().uniqueId() == node.uniqueId():
            return
    raise AssertionError(f"could not select the layer {node.name()!r}")


def result_layer(doc, rect):
    """The top layer (where a result lands), its name and how many of its pixels in ``rect`` are
    painted (alpha above 0)."""
    top = doc.rootNode().childNodes()[-1]
    alphas = bytes(top.pixelData(*rect))[3::4]
    return {"name": top.name(), "painted": sum(1 for a in alphas if a), "area": rect[2] * rect[3],
            "visible": top.visible()}


def panel_rows(panel):
    return [[label.text(), edit.text()] for label, edit in panel.rows.values()]


def run(ctx):
    app = Krita.instance()
    controller = sys.modules["easel_krita"].extension.controller
    yield (lambda: controller.view.connection == "online", 120)
    window = app.activeWindow()
    window.qwindow().setGeometry(0, 0, 1400, 900)
    dock = next(d for d in window.qwindow().findChildren(QDockWidget) if type(d).__name__ == "EaselCompactDocker")
    for other in window.qwindow().findChildren(QDockWidget):  # room for the Easel docker in the screenshot
        if other.windowTitle() in ("Advanced Color Selector", "Brush Presets", "Tool Options", "Easel: all settings"):
            other.hide()
    dock.show()
    body, panel = dock.body, dock.regions
    doc = app.createDocument(W, H, "easel-guides", "RGBA", "U8", "", 72.0)
    window.addView(doc)
    app.setActiveDocument(doc)
    yield 0.3
    root = doc.rootNode()
    root.childNodes()[0].setPixelData(b"".join(bytes((x, 120, 200, 255)) for _ in range(H) for x in range(W)), 0, 0, W, H)
    photo = painted(doc, "Photo", PHOTO, (30, 160, 220, 255))
    photo.setPixelData(bytes((255, 255, 255, 255)) * 100, PHOTO[0] + 5, PHOTO[1] + 5, 10, 10)  # a white patch in it
    door = painted(doc, "Door", DOOR, (0, 0, 255, 255))
    group = doc.createGroupLayer("Cat group")
    root.addChildNode(group, None)
    painted(doc, "Cat", CAT, (0, 200, 0, 128), parent=group)
    doc.waitForDone()
    doc.refreshProjection()
    body.prompt_edit.setPlainText("a quiet street")
    body.seed_random.setChecked(False)
    body.seed_spin.setValue(7)
    body.steps_spin.setValue(3)

    # -- the reference: the control-layer list's type "Reference image", then its strength in the row
    yield from activate(doc, photo)
    body.controls_fold.button.setChecked(True)
    body.control_type_combo.setCurrentIndex(body.control_type_combo.findData("reference"))
    body.mark_layer_button.click()
    yield 0.2
    photo_id = photo.uniqueId().toString()
    if photo_id not in body.controls.rows:
        raise AssertionError(f"not marked: {controller.view.message!r}; rows {list(body.controls.rows)}; "
                             f"combo {body.control_type_combo.currentData()!r}; active {doc.activeNode().name()}")
    body.controls.rows[photo_id][1].setValue(0.6)
    yield 0.1

    # -- the regions: the Regions list's prompt field and "+ layer", for the paint layer and the group
    body.regions_fold.button.setChecked(True)
    for node, prompt in ((door, "a red door"), (group, "a sleeping cat")):
        yield from activate(doc, node)
        panel.prompt_edit.setText(prompt)
        panel.mark_button.click()
        yield 0.1
    yield 1.2  # the list re-reads the image's regions every second
    ctx.record("marked", {
        "controls": [[c.name, c.spec.type, c.spec.strength] for c in controller.view.control_layers],
        "panel": panel_rows(panel), "message": controller.view.message,
        "annotation": bytes(doc.annotation("easel.regions")).decode() if "easel.regions" in doc.annotationTypes() else None,
        "ids": {"door": door.uniqueId().toString(), "group": group.uniqueId().toString(), "photo": photo_id},
    })

    # -- Refine in a selection: what the layers hold there, and what was sent
    select(doc, SEL)
    Action = sys.modules["easel_krita.request"].Action
    refine = controller.start(Action.REFINE)
    ctx.record("refine_started", {"job": refine, "message": controller.view.message})
    yield from wait_jobs(controller)
    box = PHOTO
    ctx.record("refine", {
        "job": refine, "message": controller.view.message,
        "door_mask": digest(bytes(door.pixelData(*SEL))[3::4]),
        "group_mask": digest(bytes(group.projectionPixelData(*SEL))[3::4]),
        "group_alphas": sorted(set(bytes(group.projectionPixelData(*SEL))[3::4])),
        "photo": digest(rgba(bytes(photo.pixelData(*box)))), "photo_size": [box[2], box[3]],
        "photo_visible": photo.visible(), "layer": result_layer(doc, SEL),
    })
    dock.setFloating(True)
    dock.resize(300, 820)
    yield 0.5
    ctx.record("screenshot", ctx.screenshot("krita-easel-regions.png"))
    dock.grab().save(f"{ctx.artifacts}/krita-easel-regions-dock.png")

    # -- save as .kra, close, reopen: the marks come back on the same layers
    path = os.path.join(ctx.artifacts, "guides.kra")
    saved = save_target(app, doc, path)
    app.action("file_save").trigger()
    yield (lambda: saved and os.path.exists(path) and not doc.modified(), 60)
    doc.close()
    yield 0.5
    copy = app.openDocument(path)
    window.addView(copy)
    for view in window.views():  # what clicking its tab does: activeDocument follows the view
        if view.document() == copy:
            window.showView(view)
            view.setVisible()
    app.setActiveDocument(copy)
    yield (lambda: app.activeDocument() == copy and len(panel.rows) == 2, 10)  # the list's 1 s re-read
    regions = controller.guides.region_layers(copy)
    ctx.record("reopened", {
        "regions": [[r.name, r.prompt, r.layer_id] for r in regions],
        "controls": [[c.name, c.spec.type, c.spec.strength, c.layer_id] for c in controller.refresh_control_layers()],
        "panel": panel_rows(panel),
        # the plugin's flush of Krita's layer list, run here (before Generate changes any layer): lists flushed
        "flushed": sys.modules["easel_krita.krita_layer_list"].flush_layer_lists(app),
    })
    select(copy, None)
    panel.apart.click()  # "Keep regions apart (slower)" off: one pass with masked attention
    yield 0.1
    generate = controller.start(Action.GENERATE)
    size = list(controller.jobs[generate].request.size) if generate in controller.jobs else None
    yield from wait_jobs(controller)
    ctx.record("generate", {"job": generate, "message": controller.view.message, "size": size,
                            "apart": panel.apart.isChecked(),
                            "door_scaled_mask": None if size is None else digest(controller.host.scale_rgba(
                                bytes(layer_named(copy, "Door").pixelData(0, 0, W, H)), W, H, *size)[3::4]),
                            "layer": result_layer(copy, (0, 0, W, H))})
    copy.setModified(False)  # closed at once, the result layer just finished: Krita must not crash
    copy.close()
    yield 1.5  # past Krita's layer list's 1 s delayed redraw, which crashed on the closed image
