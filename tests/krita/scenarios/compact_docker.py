"""Inside Krita: the compact Easel docker at the default dock size and at 240 px wide, during a job
(issue 13). Records widget geometry; the assertions are in ``test_krita_compact_docker.py``."""
from krita import Krita
from PyQt5.QtCore import QPoint, QRect

from scenario_kit import easel_window


def inside(widget, root):
    if not widget.isVisible():
        return False
    return root.rect().contains(QRect(widget.mapTo(root, QPoint(0, 0)), widget.size()))


def run(ctx):
    app = Krita.instance()
    ext, controller, window, dock = easel_window(app)
    yield (lambda: controller.view.connection == "online", 120)
    doc = app.createDocument(320, 240, "compact", "RGBA", "U8", "", 72.0)
    window.addView(doc)
    app.setActiveDocument(doc)
    body = dock.body
    ctx.record("first_button", body.primary_button.text())  # a new painter's first look
    body.prompt_edit.setPlainText("a lighthouse at dusk")
    body.steps_spin.setValue(40)  # long enough to look at it while it runs
    ctx.record("limits", {"steps_max": body.steps_spin.maximum(), "batch_max": body.batch_spin.maximum()})
    body.steps_spin.setValue(200)
    ctx.record("steps_after_200", body.steps_spin.value())
    body.steps_spin.setValue(40)
    dock.setFloating(True)
    seen, idle = {}, {}
    for name, (width, height) in (("default", (260, 240)), ("narrow", (240, 240))):
        dock.widget().setFixedSize(width, height)  # the content area of a docked ~260x240 dock
        dock.adjustSize()
        yield 1.2  # the docker's once-a-second poll shows the plan for this 320x240 canvas
        root = dock.widget()
        idle[name] = {
            "min_width": body.minimumSizeHint().width(),
            "extras_fit": body.scroll.widget().width() <= body.scroll.viewport().width(),
            "hbar": body.scroll.horizontalScrollBar().isVisible(),
            "primary": inside(body.primary_button, root), "message": inside(body.message_label, root),
            "message_whole": body.message_label.height() >= body.message_label.heightForWidth(body.message_label.width()),
            "message_text": body.message_label.text(),
        }
        dock.grab().save(f"{ctx.artifacts}/compact_docker_{name}_idle_dock.png")
        body.primary_button.click()
        yield (lambda: controller.jobs and (controller.view.progress or 0) > 0, 120)
        yield 0.2
        root = dock.widget()
        seen[name] = {
            "size": [root.width(), root.height()],
            "min_width": body.minimumSizeHint().width(),
            "extras_fit": body.scroll.widget().width() <= body.scroll.viewport().width(),
            "hbar": body.scroll.horizontalScrollBar().isVisible(),
            "primary": inside(body.primary_button, root), "progress": inside(body.progress_bar, root),
            "message": inside(body.message_label, root),
            "message_whole": body.message_label.height() >= body.message_label.heightForWidth(body.message_label.width()),
            "message_text": body.message_label.text(), "progress_value": body.progress_bar.value(),
            "jobs": len(controller.jobs),
        }
        ctx.screenshot(f"compact_docker_{name}.png")
        dock.grab().save(f"{ctx.artifacts}/compact_docker_{name}_dock.png")
        ext.cancel()
        yield (lambda: not controller.jobs, 60)
    ctx.record("docker", seen)
    ctx.record("idle", idle)
    doc.setModified(False)
