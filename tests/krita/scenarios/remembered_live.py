"""Inside Krita: live strength, steps and seed come back as the painter left them (issue 13)."""
import sys

from PyQt5.QtWidgets import QDockWidget


def run(ctx):
    ext = sys.modules["easel_krita"].extension
    window = ctx.app.activeWindow()
    box = None
    for dock in window.qwindow().findChildren(QDockWidget):
        found = [w for w in dock.findChildren(object) if hasattr(w, "live_widgets")]
        if found:
            box = found[0].live_widgets
    yield 0.2
    settings = ext.live.settings
    ctx.record("loaded", {"strength": settings.strength, "steps": settings.steps, "seed": settings.seed})
    ctx.record("docker", None if box is None else {"strength": box["strength"].value(), "steps": box["steps"].value(),
                                                    "seed": box["seed"].value()})
    if box is not None:  # the painter changes them in the docker; Krita quits next
        box["strength"].setValue(0.45)
        box["steps"].setValue(5)
    yield 0.2
