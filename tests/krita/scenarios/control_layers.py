"""Runs INSIDE Krita (loaded by the test driver): control layers, LoRA, Upscale and a dropped
connection, driven through the Easel docker's own buttons and the plugin's actions. Records what
the document looked like; the assertions live in ``test_krita_control_e2e.py``.

The server is reached through the test's drop proxy, which also logs what the plugin submitted and
aborts the sockets once, mid-job, for the job whose prompt contains "resume me".
"""
import hashlib
import os
import sys
import time

from krita import Krita, Selection
from PyQt5.QtWidgets import QDockWidget

from scenario_kit import find_docker, history_apply, history_menu, history_row, layers, names, wait_jobs

W, H = 160, 128
SQUARE = (40, 32, 48, 40)         # a dark square on the background: sharp edges for canny
EDGES = (60, 20, 12, 80)          # a white bar on the "Edges" layer
SEL = (24, 16, 96, 80)


def by_name(doc, name):
    return next(node for node in layers(doc) if node.name() == name)


def rgba_id(bgra, width, height):
    out = bytearray(bgra)
    out[0::4], out[2::4] = bgra[2::4], bgra[0::4]
    return hashlib.sha256(f"rgba8 {width} {height}\n".encode() + bytes(out)).hexdigest()


def alpha_box(data, width, height):
    alpha = data[3::4]
    rows = [y for y in range(height) if alpha[y * width:(y + 1) * width].strip(b"\x00")]
    if not rows:
        return None
    cols = [x for x in range(width) if any(alpha[y * width + x] for y in rows)]
    return [cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]]


def select(doc, rect):
    selection = Selection()
    if rect is not None:
        selection.select(*rect, 255)
    doc.setSelection(selection)


def latest(controller):
    entry = controller.history.latest()
    return {"status": entry.status, "detail": entry.detail, "request": entry.request.to_dict(),
            "image": [entry.images[0].width, entry.images[0].height] if entry.images else None}


def run(ctx):
    app = Krita.instance()
    extension = sys.modules["easel_krita"].extension
    controller = extension.controller
    yield (lambda: controller.view.connection == "online" and controller.view.loras_listed, 120)

    window = app.activeWindow()
    window.qwindow().setGeometry(0, 0, 1600, 1000)
    for dock in window.qwindow().findChildren(QDockWidget):  # room for the Easel docker in the screenshot
        if dock.windowTitle() in ("Advanced Color Selector", "Brush Presets", "Tool Options"):
            dock.hide()
    doc = app.createDocument(W, H, "easel-control", "RGBA", "U8", "", 72.0)
    window.addView(doc)
    app.setActiveDocument(doc)
    yield 0.3
    root = doc.rootNode()
    background = root.childNodes()[0]
    background.setName("Background")
    x0, y0, sw, sh = SQUARE
    data = bytearray()
    for y in range(H):
        for x in range(W):
            dark = x0 <= x < x0 + sw and y0 <= y < y0 + sh
            data += bytes((20, 20, 20, 255)) if dark else bytes((200, 120, x * 255 // W, 255))
    background.setPixelData(bytes(data), 0, 0, W, H)
    edges = doc.createNode("Edges", "paintlayer")
    root.addChildNode(edges, None)
    edges.setPixelData(b"\xff\xff\xff\xff" * (EDGES[2] * EDGES[3]), *EDGES)
    doc.waitForDone()
    doc.refreshProjection()
    docker = find_docker(window)
    ctx.record("docker_found", docker is not None)
    docker.prompt_edit.setPlainText("a lighthouse")
    docker.seed_random.setChecked(False)
    docker.seed_spin.setValue(77)
    docker.steps_spin.setValue(4)
    docker.strength_slider.setValue(60)
    docker.controls_fold.button.setChecked(True)  # unfold the control layers (and LoRAs) for the screenshot
    docker.loras_fold.button.setChecked(True)

    # -- mark the painted layer as a canny control layer with the docker's own button
    doc.setActiveNode(edges)
    yield 0.2
    docker.control_type_combo.setCurrentIndex(docker.control_type_combo.findData("canny"))
    docker.control_strength_spin.setValue(0.8)
    docker.mark_layer_button.click()
    yield 0.1
    ctx.record("marked", {
        "message": controller.view.message,
        "rows": [[c.name, c.spec.type, c.spec.strength] for c in controller.view.control_layers],
        "docker_rows": len(docker.controls.rows),
        "annotation": bytes(doc.annotation("easel.controls")).decode() if "easel.controls" in doc.annotationTypes() else None,
        "edges_id": edges.uniqueId().toString(),
    })

    # -- a LoRA from the docker's list
    docker.lora_combo.setCurrentIndex(docker.lora_combo.findData("demo-style"))
    docker.lora_add_button.click()
    docker.loras.rows["demo-style"][1].setValue(0.7)
    yield 0.05
    ctx.record("lora_settings", [[c.id, c.weight] for c in controller.settings.loras])

    # -- Refine and Generate with it, inside a selection
    select(doc, SEL)
    edges.setVisible(False)  # what Refine should read: the visible image without the control layer
    doc.refreshProjection()
    doc.waitForDone()
    source_without_edges = rgba_id(bytes(doc.pixelData(*SEL)), SEL[2], SEL[3])
    edges.setVisible(True)
    doc.refreshProjection()
    doc.waitForDone()
    source_with_edges = rgba_id(bytes(doc.pixelData(*SEL)), SEL[2], SEL[3])
    ctx.record("sources", {"without_edges": source_without_edges, "with_edges": source_with_edges})
    for key, action in (("refine", "easel_refine"), ("generate", "easel_generate")):
        before = names(doc)
        edges_before = bytes(edges.pixelData(*SEL))
        app.action(action).trigger()
        yield from wait_jobs(controller)
        ctx.record(key, {"message": controller.view.message, "error": controller.view.message_is_error,
                         "new_layers": names(doc)[len(before):], "history": latest(controller),
                         "edges_visible": edges.visible(), "jobs_submitted": controller.stats.jobs_submitted,
                         "edges_control_id": rgba_id(edges_before, SEL[2], SEL[3])})

    # -- make a control layer from the visible image with the docker's button
    select(doc, None)
    docker.control_type_combo.setCurrentIndex(docker.control_type_combo.findData("canny"))
    yield 0.05
    before = names(doc)
    docker.make_control_button.click()
    yield from wait_jobs(controller)
    made = layers(doc)[-1]
    pixels = bytes(made.pixelData(0, 0, W, H))
    rgb = set(pixels[0::4]) | set(pixels[1::4]) | set(pixels[2::4])
    ctx.record("preprocess", {
        "message": controller.view.message, "error": controller.view.message_is_error,
        "new_layers": names(doc)[len(before):], "box": alpha_box(pixels, W, H),
        "min_alpha": min(pixels[3::4]), "rgb_values": sorted(rgb)[:4] + sorted(rgb)[-2:], "rgb_count": len(rgb),
        "edge_pixels": sum(1 for v in pixels[0::4] if v == 255),
        "controls": [[c.name, c.spec.type, c.spec.strength] for c in controller.refresh_control_layers()],
        "docker_rows": len(docker.controls.rows),
        "preprocessor": controller.history.latest().request.preprocessor,
        "projection_corner": list(bytes(doc.pixelData(2, 2, 1, 1))),
        "layer_corner": list(bytes(made.pixelData(2, 2, 1, 1))),
    })
    docker.scroll.ensureWidgetVisible(docker.make_control_button)
    yield 0.3
    ctx.screenshot("krita-easel-control-layers.png")
    app.action("edit_undo").trigger()
    doc.waitForDone()
    yield 0.3
    after_undo = names(doc)
    controls_after_undo = [c.name for c in controller.refresh_control_layers()]
    app.action("edit_redo").trigger()
    doc.waitForDone()
    yield 0.3
    ctx.record("preprocess_undo", {"layers_after_undo": after_undo, "controls_after_undo": controls_after_undo,
                                   "layers_after_redo": names(doc),
                                   "controls_after_redo": [c.name for c in controller.refresh_control_layers()]})

    # -- the connection drops mid-job (the proxy aborts both sockets); the job resumes and lands
    docker.prompt_edit.setPlainText("resume me")
    docker.steps_spin.setValue(60)
    before = names(doc)
    states = set()
    app.action("easel_generate").trigger()
    start = time.monotonic()
    on_canvas = False
    while controller.jobs or time.monotonic() - start < 0.1:
        states.add(controller.view.connection)
        preview = next((n for n in layers(doc) if n.name().startswith("Easel preview")), None)
        if preview is not None and preview.visible() and not on_canvas:
            shown = bytes(preview.pixelData(W // 2, H // 2, 1, 1))
            on_canvas = shown[3] == 255 and bytes(doc.pixelData(W // 2, H // 2, 1, 1)) == shown
        if time.monotonic() - start > 240:
            raise AssertionError(f"the resumed job did not finish: {controller.view}")
        yield 0.02
    ctx.record("resume", {"message": controller.view.message, "error": controller.view.message_is_error,
                          "new_layers": names(doc)[len(before):], "history": latest(controller),
                          "connection_states": sorted(states), "connection": controller.view.connection,
                          "preview_on_canvas": on_canvas})
    docker.prompt_edit.setPlainText("a lighthouse")
    docker.steps_spin.setValue(4)

    # -- the marks survive saving and loading (.kra annotation + layer ids)
    path = os.path.join(ctx.artifacts, "control-layers.kra")
    doc.setBatchmode(True)
    saved = doc.saveAs(path)
    doc.setBatchmode(False)
    copy = app.openDocument(path)
    window.addView(copy)
    app.setActiveDocument(copy)
    yield 0.5
    ctx.record("reloaded", {"saved": bool(saved),
                            "controls": [[c.name, c.spec.type, c.spec.strength, c.layer_id]
                                         for c in controller.refresh_control_layers()]})
    copy.setModified(False)
    copy.close()
    app.setActiveDocument(doc)
    yield 0.3

    # -- Upscale x2 with the docker's button: the document doubles, nothing shifts; two undos
    select(doc, None)
    docker.upscale_factor_spin.setValue(2.0)
    before = names(doc)
    sample = bytes(background.pixelData(x0 + 10, y0 + 10, 1, 1))
    docker.set_workspace("upscale")  # the Upscale workspace: its primary button upscales
    docker.primary_button.click()
    yield from wait_jobs(controller)
    result = layers(doc)[-1]
    ctx.record("upscale", {
        "message": controller.view.message, "error": controller.view.message_is_error,
        "size": [doc.width(), doc.height()], "new_layers": names(doc)[len(before):],
        "box": alpha_box(bytes(result.pixelData(0, 0, doc.width(), doc.height())), doc.width(), doc.height()),
        "background_same_place": bytes(background.pixelData(2 * (x0 + 10), 2 * (y0 + 10), 1, 1)) == sample,
        "edges_box": alpha_box(bytes(edges.pixelData(0, 0, doc.width(), doc.height())), doc.width(), doc.height()),
        "history": latest(controller),
    })
    app.action("edit_undo").trigger()
    doc.waitForDone()
    app.action("edit_undo").trigger()
    doc.waitForDone()
    yield 0.3
    ctx.record("upscale_undone", {"size": [doc.width(), doc.height()], "layers": names(doc)})
    docker.set_workspace("generate")

    # -- the image is closed while a job runs: the result is kept in the history, not applied,
    #    and the docker applies it to the image that is open now
    docker.steps_spin.setValue(40)
    app.action("easel_generate").trigger()
    yield (lambda: any(n.name().startswith("Easel preview") for n in layers(doc)), 120)
    doc.setModified(False)
    doc.close()
    yield from wait_jobs(controller)
    closed = {"message": controller.view.message, "history": latest(controller)}
    other = app.createDocument(W, H, "easel-other", "RGBA", "U8", "", 72.0)
    window.addView(other)
    app.setActiveDocument(other)
    yield 0.3
    yield (lambda: docker.history.list.count() > 0, 10)
    closed["button"] = history_menu(docker, 0)[0]
    closed["item"] = history_row(docker, 0)
    history_apply(docker, 0)
    yield (lambda: controller.view.message.startswith("Applied"), 30)  # the layer is written, then named
    applied = layers(other)[-1]
    closed.update(applied_layer=applied.name(), applied_status=controller.history.latest().status,
                  applied_message=controller.view.message,
                  applied_box=alpha_box(bytes(applied.pixelData(0, 0, W, H)), W, H),
                  on_canvas=bytes(other.pixelData(W // 2, H // 2, 1, 1)) == bytes(applied.pixelData(W // 2, H // 2, 1, 1)),
                  button_after=history_menu(docker, 0)[0], menu=history_menu(docker, 0))
    ctx.record("closed", closed)
    other.setModified(False)
