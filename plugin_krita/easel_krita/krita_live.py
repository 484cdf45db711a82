"""Live mode's Krita side: :class:`KritaLiveHost` (a :class:`~.host.LiveHost`) — the live layer,
added and removed without undo steps, written and shown, hidden while the picture is read, and
*Keep* as one undoable new layer.

Facts this relies on (Krita 5.1.5; each checked by ``tests/krita/test_krita_live_e2e.py``):

* ``Node.addChildNode`` and ``Node.remove`` are undo steps (and reset the Undo History model,
  which live mode takes as "the painter changed something"). ``Node.setChildNodes(nodes)`` is
  not: it goes through ``KisImage::addNode``/``removeNode`` directly. In 5.1 it removes only the
  *bottom* child of the node (its loop stops after one) and then adds ``nodes`` on top, in
  order. So one call with the bottom child moves it to the top, and a few such calls insert or
  remove one layer anywhere while every other layer ends where it was. The painter's active
  layer changes on the way and is set back. If a later Krita removes every child as documented,
  the first call shows it and the whole stack is set in one call instead.
* ``setPixelData``, ``setVisible`` and ``setLocked`` are not undo steps, and in 5.1 they do not
  update the projection either: ``Document.refreshProjection()`` does (all of it, on Krita's
  worker threads; ``waitForDone`` waits for it).
* ``Document.waitForDone()`` while the painter is in the middle of a stroke would wait for the
  stroke; ``Document.tryBarrierLock()`` tells without waiting whether anything is running.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from .host import HostError
from .geometry import Rect
from .qt import QtCore
from .krita_adapter import PAINT_LAYER, KritaCanvas
from .krita_layer_list import flush_layer_lists

log = logging.getLogger("easel.krita.live")


def _uid(node: Any) -> str:
    return node.uniqueId().toString()


class KritaLiveHost:
    """:class:`~.host.LiveHost` on Krita's scripting API. Main thread only."""

    def __init__(self, canvas: KritaCanvas) -> None:
        self.canvas = canvas
        self.app = canvas.app

    # -- state

    def busy(self, doc: Any) -> bool:
        if doc.tryBarrierLock():
            doc.unlock()
            return False
        return True

    def live_layer_alive(self, doc: Any, layer: Any) -> bool:
        return layer is not None and layer.parentNode() is not None and self.canvas.is_open(doc)

    # -- the live layer, without undo steps

    def insert_live_layer(self, doc: Any, name: str, layer: Any = None) -> Any:
        node = layer if layer is not None else doc.createNode(name, PAINT_LAYER)
        if node is None:
            raise HostError("Krita could not create the live layer")
        root = doc.rootNode()
        before = root.childNodes()
        active = doc.activeNode()
        self._restack(root, before, before + [node])
        node.setLocked(True)  # the painter's brush cannot land on it by accident
        self._restore_active(doc, active, node)
        doc.refreshProjection()
        return node

    def find_layers(self, doc: Any, ids: list[str]) -> list[Any]:
        wanted = set(ids)
        return [node for node in doc.rootNode().childNodes() if _uid(node) in wanted] if wanted else []

    def remove_live_layer(self, doc: Any, layer: Any) -> None:
        root = doc.rootNode()
        before = root.childNodes()
        uid = _uid(layer)
        if uid not in [_uid(n) for n in before]:
            return
        active = doc.activeNode()
        self._restack(root, before, [n for n in before if _uid(n) != uid])
        self._restore_active(doc, active, layer)
        doc.refreshProjection()

    def _restack(self, root: Any, current: list[Any], wanted: list[Any]) -> None:
        """Make ``root``'s children ``wanted`` (``current`` plus or minus one layer, the others in
        their order) without an undo step. Raises HostError if Krita did not end up there."""
        want = [_uid(n) for n in wanted]
        if not current:
            root.setChildNodes(wanted)
        else:
            self._rotate_to(root, current, wanted)
        got = [_uid(n) for n in root.childNodes()]
        if got != want:
            log.error("easel: the layer stack is %s, expected %s", got, want)
            raise HostError("Krita did not put the layers where expected; check the layer stack (Ctrl+Z does not "
                            "undo this) and report it")

    @staticmethod
    def _rotate_to(root: Any, current: list[Any], wanted: list[Any]) -> None:
        current_ids = [_uid(n) for n in current]
        wanted_ids = [_uid(n) for n in wanted]
        if len(wanted) > len(current):  # insert the new (last) one at the top
            new = wanted[-1]
            if len(current) == 1:  # removing the bottom child removes every child: one call either way
                root.setChildNodes(wanted)
                return
            root.setChildNodes([new, current[0]])
            if [_uid(n) for n in root.childNodes()] == [_uid(new), current_ids[0]]:
                root.setChildNodes(wanted)  # this Krita replaced every child: set the whole stack at once
                return
            # Now [c1 .. cn-1, new, c0]: move each bottom child to the top until the stack is wanted.
            for _ in range(len(current)):
                root.setChildNodes([root.childNodes()[0]])
            return
        gone = next(uid for uid in current_ids if uid not in wanted_ids)
        index = current_ids.index(gone)
        for step in range(index):  # bring the one to remove to the bottom
            bottom = root.childNodes()[0]
            root.setChildNodes([bottom])
            if step == 0 and [_uid(n) for n in root.childNodes()] == [current_ids[0]]:
                root.setChildNodes(wanted)  # this Krita replaced every child: set the whole stack at once
                return
        root.setChildNodes([])  # removes the bottom child: the one to remove
        if not root.childNodes() and len(current) > 1:
            root.setChildNodes(wanted)  # this Krita removed every child: put the others back at once
            return
        for _ in range(len(current) - 1 - index):  # the ones that were above it go back on top
            root.setChildNodes([root.childNodes()[0]])

    @staticmethod
    def _restore_active(doc: Any, active: Any, ours: Any) -> None:
        if active is not None and active.parentNode() is not None and _uid(active) != _uid(ours):
            doc.setActiveNode(active)

    # -- pixels

    def write_live(self, doc: Any, layer: Any, bgra: bytes, rect: Rect, clear: Rect | None) -> None:
        if clear is not None:
            self.canvas.write_layer(doc, layer, bytes(clear.area * 4), clear)
        self.canvas.write_layer(doc, layer, bgra, rect)
        doc.refreshProjection()  # writing pixels does not show them in 5.1

    def read_source(self, doc: Any, rect: Rect, hidden: list[Any]) -> bytes:
        shown = [layer for layer in hidden if layer is not None and layer.parentNode() is not None and layer.visible()]
        for layer in shown:
            layer.setVisible(False)
        try:
            doc.refreshProjection()
            doc.waitForDone()
            return self.canvas.read_visible(doc, rect)
        finally:
            for layer in shown:
                layer.setVisible(True)
            doc.refreshProjection()
            flush_layer_lists(self.canvas.app)  # the layer list's delayed redraw would crash a closed image

    # -- keep (one undo step)

    def keep_live(self, doc: Any, layer: Any, name: str, bgra: bytes, rect: Rect) -> Any:
        node = doc.createNode(name, PAINT_LAYER)
        if node is None:
            raise HostError("Krita could not create a paint layer")
        self.canvas.write_layer(doc, node, bgra, rect)  # before it is added: the add shows its pixels
        root = doc.rootNode()
        children = root.childNodes()
        uids = [_uid(n) for n in children]
        index = uids.index(_uid(layer)) if _uid(layer) in uids else len(children)
        above = children[index - 1] if index > 0 else None
        active = doc.activeNode()
        if root.addChildNode(node, above) is False:
            raise HostError("Krita refused to add a layer to this image")
        self._keep_active(doc, active, node)
        return node

    def _keep_active(self, doc: Any, active: Any, added: Any) -> None:
        """Krita makes an added layer the active one, later (its node manager hears of the new layer
        through queued signals); the painter's next stroke belongs on their own layer, not on the
        kept picture, so theirs is made active again once Krita is done — unless the painter has
        picked another layer meanwhile."""
        self._restore_active(doc, active, added)
        doc.waitForDone()  # the layer is in: Krita's activation of it is queued from here on

        def again() -> None:
            try:
                current = doc.activeNode()
                if current is not None and _uid(current) == _uid(added):
                    self._restore_active(doc, active, added)
            except Exception:  # the image may have been closed meanwhile
                log.debug("easel: could not make the painter's layer active again", exc_info=True)

        for delay_ms in (0, 150):
            QtCore.QTimer.singleShot(delay_ms, again)

    # -- changes

    def watch_changes(self, doc: Any, callback: Callable[[], None]) -> Callable[[], None] | None:
        window = self.app.activeWindow()
        if window is None:
            return None
        return self.canvas.watch_changes(window, callback)
