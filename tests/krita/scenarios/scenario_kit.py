"""Helpers the scenarios share. Runs inside Krita (the test driver puts this folder on
``sys.path`` before it loads a scenario); not a scenario itself (it has no ``run``)."""
from __future__ import annotations

import hashlib
import os
import time

from PyQt5.QtWidgets import QDockWidget


def digest(data):
    return hashlib.sha256(bytes(data)).hexdigest()


def layers(doc):
    """The layer stack's paint layers, bottom first (Krita also lists e.g. the global selection
    as a "Selection Mask" child of the root)."""
    return [node for node in doc.rootNode().childNodes() if node.type() == "paintlayer"]


def names(doc):
    """The paint layers' names, bottom first."""
    return [node.name() for node in layers(doc)]


def find_docker(window):
    for dock in window.qwindow().findChildren(QDockWidget):
        if type(dock).__name__ == "EaselDocker":
            return dock
    return None


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
