"""Inside Krita: the compact docker's missing-model banner against a server that offers downloads
(issue 17). The banner names the missing model and offers "Download (size)"; its button is clicked
and the progress bar is read while the download runs; afterwards the model is in the docker's
model list; then a layer marked canny on that model names the missing canny ControlNet, whose
download makes the next job's ControlNet pick work. Records what it saw; the assertions are in ``test_krita_model_download_e2e.py``."""
import sys

from krita import Krita
from PyQt5.QtCore import QPoint, QRect
from PyQt5.QtWidgets import QDockWidget

SD15_ID, CANNY_ID = "v1-5-pruned-emaonly", "control_v11p_sd15_canny_fp16"


def inside(widget, root):
    return widget.isVisible() and root.rect().contains(QRect(widget.mapTo(root, QPoint(0, 0)), widget.size()))


def shot(ctx, dock, name):
    ctx.screenshot(f"{name}.png")
    dock.grab().save(f"{ctx.artifacts}/{name}_dock.png")


def run(ctx):
    app = Krita.instance()
    ext = sys.modules["easel_krita"].extension
    controller, setup = ext.controller, ext.model_setup
    window = app.activeWindow()
    window.qwindow().setGeometry(0, 0, 1400, 900)
    dock = next(d for d in window.qwindow().findChildren(QDockWidget) if type(d).__name__ == "EaselCompactDocker")
    doc = app.createDocument(320, 240, "download", "RGBA", "U8", "", 72.0)
    window.addView(doc)
    app.setActiveDocument(doc)
    dock.setFloating(True)
    dock.widget().setFixedSize(260, 240)  # the content area of a docked ~260x240 dock
    dock.adjustSize()
    banner = dock.banner
    yield (lambda: banner.isVisible() and banner.button.isVisible(), 120)
    yield 0.3
    root, body = dock.widget(), dock.body
    shot(ctx, dock, "model_banner_missing")
    top = banner.mapTo(body.scroll.widget(), QPoint(0, 0)).y()
    body.scroll.ensureWidgetVisible(banner.button)  # a short dock scrolls to it
    yield 0.2
    ctx.record("before", {"text": banner.label.text(), "button": banner.button.text(),
                          "progress_shown": banner.progress.isVisible(), "top_of_scroll": top,
                          "label_whole": banner.label.height() >= banner.label.heightForWidth(banner.label.width()),
                          "button_inside": inside(banner.button, body.scroll.viewport()) and inside(banner.button, root),
                          "primary_inside": inside(body.primary_button, root),
                          "message_inside": inside(body.message_label, root),
                          "models": [body.model_combo.itemData(i) for i in range(body.model_combo.count())]})
    shot(ctx, dock, "model_banner_scrolled")
    banner.button.click()
    seen, shown = [], False
    while setup.tracker.view is None or setup.tracker.view.running:
        if banner.progress.isVisible():
            seen.append({"value": banner.progress.value(), "text": banner.label.text(),
                         "button": banner.button.isVisible()})
            if not shown and banner.progress.value() > 0:
                shot(ctx, dock, "model_banner_downloading")
                shown = True
        yield 0.05
    ctx.record("progress", seen)
    ctx.record("ended", setup.tracker.view.state)
    yield (lambda: body.model_combo.findData(SD15_ID) >= 0, 60)
    yield 0.3
    ctx.record("after", {"text": banner.label.text(), "visible": banner.isVisible(),
                         "button": banner.button.isVisible(),
                         "models": [body.model_combo.itemData(i) for i in range(body.model_combo.count())]})
    shot(ctx, dock, "model_banner_done")
    banner.close_button.click()
    yield 0.2
    ctx.record("closed", banner.isVisible())

    # The new model, and a layer marked canny with the docker's own controls: the ControlNet is named next.
    body.model_combo.setCurrentIndex(body.model_combo.findData(SD15_ID))
    sketch = doc.createNode("Sketch", "paintlayer")
    doc.rootNode().addChildNode(sketch, None)
    doc.setActiveNode(sketch)
    yield 0.2
    body.controls_fold.button.setChecked(True)
    body.control_type_combo.setCurrentIndex(body.control_type_combo.findData("canny"))
    body.mark_layer_button.click()
    yield (lambda: banner.isVisible() and "ControlNet" in banner.label.text(), 30)
    yield 0.3
    shot(ctx, dock, "model_banner_controlnet")
    ctx.record("controlnet", {"text": banner.label.text(), "button": banner.button.text()})
    banner.button.click()
    yield (lambda: any(m.id == CANNY_ID for m in controller.view.server_models), 60)
    _, inputs, _ = controller.guidance(app.activeDocument(), controller.current_model())
    ctx.record("guided_by", [i.model for i in inputs])
    ctx.record("model_used", controller.current_model().id)
    doc.setModified(False)
