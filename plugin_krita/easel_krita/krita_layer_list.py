"""Keeps Krita 5.1.5's layer list from touching a closed image's layers: :func:`flush_layer_lists`.

Krita's layer list (the Layers docker's ``KisNodeModel``) does not redraw a row when a layer's name,
visibility or lock changes: it queues the layer's stand-in (a raw ``KisNodeDummy`` pointer) and
redraws the queued rows one second later. Closing the image within that second deletes the
stand-ins but leaves them queued, and the delayed redraw crashes Krita (SIGSEGV in
``KisNodeModel::processUpdateQueue``, seen with a script closing the image right after a result
layer was finished). After this plugin changes a layer's properties it runs that redraw at once
(``processUpdateQueue`` is a Qt slot, so it can be invoked by name); the queue is then empty when
the timer fires, whenever the image is closed. Main thread only.
"""
from __future__ import annotations

import logging
from typing import Any

from PyQt5 import sip
from PyQt5.QtCore import QAbstractItemModel, QMetaObject, Qt

log = logging.getLogger("easel.krita")

#: Krita's layer-list model class and the slot that redraws its queued rows (Krita 5.1.5).
LAYER_LIST_CLASS = "KisNodeModel"
REDRAW_SLOT = "processUpdateQueue"


#: The layer lists found per window (the address of its ``QMainWindow``): a window's Layers docker makes its
#: list once, so the widget tree is searched once per window, not at every flush.
_found: dict[int, tuple[Any, list[QAbstractItemModel]]] = {}


def layer_lists(app: Any) -> list[QAbstractItemModel]:
    """Every layer-list model of Krita's windows (one per Layers docker)."""
    models = []
    for window in app.windows():
        qwindow = window.qwindow()
        if qwindow is None:
            continue
        key = sip.unwrapinstance(qwindow)  # the C++ window (PyQt may hand out a new wrapper each time)
        known = _found.get(key)
        if known is None or sip.isdeleted(known[0]) or any(sip.isdeleted(m) for m in known[1]):
            known = (qwindow, [m for m in qwindow.findChildren(QAbstractItemModel) if m.inherits(LAYER_LIST_CLASS)])
            _found[key] = known
        models.extend(known[1])
    return models


def flush_layer_lists(app: Any) -> int:
    """Redraw the rows Krita's layer lists queued, now; returns how many lists were flushed.
    Never raises (a Krita without the slot only loses the protection, and says so in the log)."""
    flushed = 0
    try:
        for model in layer_lists(app):
            try:  # PyQt returns None, or raises RuntimeError when the object has no such slot
                QMetaObject.invokeMethod(model, REDRAW_SLOT, Qt.DirectConnection)
                flushed += 1
            except RuntimeError:
                log.warning("easel: Krita's layer list has no %s slot; closing an image right after a "
                            "layer changed may crash this Krita", REDRAW_SLOT)
    except Exception:
        log.exception("easel: flushing Krita's layer list failed")
    return flushed
