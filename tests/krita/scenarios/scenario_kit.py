"""Helpers the scenarios share. Runs inside Krita (the test driver puts this folder on
``sys.path`` before it loads a scenario); not a scenario itself (it has no ``run``)."""
from __future__ import annotations

import hashlib
import os
import sys
import time

from PyQt5.QtWidgets import QAbstractItemView, QDockWidget


def digest(data):
    return hashlib.sha256(bytes(data)).hexdigest()


def rgba(bgra):
    """Krita's BGRA pixels as RGBA (what the plugin uploads)."""
    out = bytearray(bgra)
    out[0::4], out[2::4] = bgra[2::4], bgra[0::4]
    return bytes(out)


def painted(doc, name, box, bgra, parent=None):
    """A new paint layer (on top of ``parent``, else of the image) with ``box`` filled with ``bgra``."""
    node = doc.createNode(name, "paintlayer")
    (parent or doc.rootNode()).addChildNode(node, None)
    node.setPixelData(bytes(bgra) * (box[2] * box[3]), *box)
    return node


def undo_rows(window):
    """The rows of Krita's Undo History model (one per undo step, plus the first)."""
    for view in window.qwindow().findChildren(QAbstractItemView):
        model = view.model()
        if model is not None and model.metaObject().className() == "KisUndoModel":
            return model.rowCount()
    return None


def layers(doc):
    """The layer stack's paint layers, bottom first (Krita also lists e.g. the global selection
    as a "Selection Mask" child of the root)."""
    return [node for node in doc.rootNode().childNodes() if node.type() == "paintlayer"]


def names(doc):
    """The paint layers' names, bottom first."""
    return [node.name() for node in layers(doc)]


def easel_window(app, width=1400, height=900):
    """The running plugin's extension and controller, the active window sized (no window manager
    under Xvfb) and its Easel docker (the ``QDockWidget``; its content is ``.body``)."""
    ext = sys.modules["easel_krita"].extension
    window = app.activeWindow()
    window.qwindow().setGeometry(0, 0, width, height)
    dock = next(d for d in window.qwindow().findChildren(QDockWidget) if type(d).__name__ == "EaselCompactDocker")
    return ext, ext.controller, window, dock


def find_docker(window):
    """The Easel docker's content (``ui/docker_body.DockerBody``): its fields, buttons and history grid."""
    for dock in window.qwindow().findChildren(QDockWidget):
        if type(dock).__name__ == "EaselCompactDocker":
            return dock.body
    return None


def history_row(docker, row=0):
    """Thumbnail ``row``'s hover text as one line: "<action>: <prompt> · seed <n> (<status>)"."""
    lines = docker.history.list.item(row).toolTip().split("\n")
    text = " · ".join(lines[:2])
    return text + (f" ({lines[2]})" if len(lines) > 3 else "")


def history_menu(docker, row=0):
    """The texts of thumbnail ``row``'s right-click menu."""
    return [action.text() for action in docker.history.menu_for(docker.history.list.item(row)).actions()]


def history_apply(docker, row=0):
    """Double-click the history grid's thumbnail ``row`` (newest first): apply it as a new layer."""
    docker.history.list.itemDoubleClicked.emit(docker.history.list.item(row))


def wait_jobs(controller, limit=180):
    """Yield until the controller has no job left; fail after ``limit`` seconds."""
    start = time.monotonic()
    yield 0.05
    while controller.jobs:
        if time.monotonic() - start > limit:
            raise AssertionError(f"jobs did not finish: {controller.view}")
        yield 0.02


def save_target(app, doc, path):
    """Make ``path`` (and Krita's backup ``path~``) absent, point ``doc`` at it without dialogs,
    and return the list Krita's ``imageSaved`` notifications are appended to."""
    for stale in (path, path + "~"):
        if os.path.exists(stale):
            os.remove(stale)
    doc.setFileName(path)
    doc.setBatchmode(True)
    saved = []
    app.notifier().imageSaved.connect(lambda p: saved.append(p))
    return saved
