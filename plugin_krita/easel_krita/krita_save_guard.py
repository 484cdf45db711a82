"""Keeps the live layer out of every file Krita writes: :class:`SaveGuard`.

Krita 5.1 has no "about to save" signal (``Notifier.imageSaved`` comes after the file is written),
and a save copies the image *inside* the handler of the action that started it
(``KisDocument::lockAndCloneForSaving``, synchronous; the copy is then written in the
background). So the guard runs around Krita's own handlers:

* **Save, Save As, Export, Export Advanced** — whether from the menu, the toolbar, a shortcut or a script's ``action(...).trigger()``, they all emit the action's
  ``triggered``, whose slots Qt calls in the order they were connected; Krita connected its handler
  (``KisMainWindow::slotFileSave``, ...) when it made the action. The guard connects its *before*
  slot, disconnects Krita's handler, connects it again and connects its *after* slot: before →
  Krita → after, other slots untouched. PyQt can name a C++ slot of an object whose class it does
  not wrap: a bound method whose function carries a ``pyqtSlot`` signature with the slot's name
  resolves, in ``connect``/``disconnect``, to that C++ slot itself (no Python proxy). When the
  disconnect fails (a Krita that wires the action differently), the action is left as it is, not
  listed in :attr:`SaveGuard.guarded`, and only warned about (below).
* **Save Incremental Version / Backup** are handled by ``KisViewManager``, an object with no Qt
  parent that Python cannot reach in 5.1, so its handler cannot be named: after either action
  runs with live on, the live status says that file holds the live layer and what to do.
* **Closing an image with unsaved changes** asks "save it?" inside the view's close handling
  (``KisView::queryClose``), with no action involved, and on *Yes* saves inside it too; closing
  Krita or *Close All* closes every view the same way. An event filter on each view's sub-window
  takes the close event, takes the live layer out, hands the event on to the sub-window's own
  handling (``QApplication.sendEvent``: the prompt and the save run inside it) and returns only
  when that is over. Krita processes events while it saves (``blockUntilOperationsFinished``), so
  a put-back that merely waited for the prompt to go away could run *inside* the save, before the
  copy is made, and the file would hold the live layer: the put-back waits for the close handling
  to return, and when the close went through, for the sub-window to be deleted (the image is then
  closed, and live mode turns off).
* **Quitting** (*Quit*, or closing Krita's last window) asks "save it?" for every modified image
  before any view closes (``KisPart::closeSession`` calls each ``KisView::queryClose`` itself): the
  *Quit* action is wrapped like the saving ones, and the window's close event is taken like a
  view's.

*Before* takes the live layer out (``LiveMode.suspend``: no undo step, the document's modified
flag untouched); *after* puts the same layer back (``LiveMode.resume``) once no saving or closing
handler is running, no closed sub-window is still to be deleted and no modal dialog is open. Not
covered, and said so in docs/krita.md and the Live button's tooltip: the incremental saves (warned
about), Krita's autosave (a recovery copy may hold the live layer) and scripts calling
``Document.save``/``saveAs``/``exportImage`` directly.
"""
from __future__ import annotations

import logging
import types
from typing import Any, Callable

from PyQt5 import sip
from PyQt5.QtCore import QEvent, QObject, Qt, QTimer, pyqtSlot
from PyQt5.QtWidgets import QApplication, QMdiSubWindow

log = logging.getLogger("easel.krita.live")

#: (action id, class of the object whose slot Krita connected, that slot) for every action that
#: writes the active image to a file (Krita 5.1.5).
GUARDED_ACTIONS: tuple[tuple[str, str, str], ...] = (
    ("file_save", "KisMainWindow", "slotFileSave"),
    ("file_save_as", "KisMainWindow", "slotFileSaveAs"),
    ("file_export_file", "KisMainWindow", "slotExportFile"),
    ("file_export_advanced", "KisMainWindow", "slotExportAdvance"),
)
#: The same for actions whose handler asks "save it?" for every modified image and saves the ones
#: answered Yes: quitting (``KisPart::closeSession`` calls each image's ``KisView::queryClose``
#: itself, before any window or view gets a close event).
CLOSING_ACTIONS: tuple[tuple[str, str, str], ...] = (
    ("file_quit", "KisMainWindow", "slotFileQuit"),
)
#: Actions that write the image but whose handler the guard cannot name: (action id, its label).
WARNED_ACTIONS: tuple[tuple[str, str], ...] = (
    ("save_incremental_version", "Save Incremental Version"),
    ("save_incremental_backup", "Save Incremental Backup"),
)
#: How often a put-back that has to wait (for a prompt, a file dialog, a close) looks again, in ms.
RESUME_POLL_MS = 50


def address(obj: QObject) -> int:
    """The address of ``obj``'s C++ object: a key that holds while it lives (``id`` of a PyQt
    wrapper does not: PyQt makes a new wrapper for a Krita object once the old one is gone)."""
    return sip.unwrapinstance(obj)


def cxx_slot(receiver: QObject, name: str) -> Callable[[], None]:
    """A stand-in PyQt resolves to ``receiver``'s C++ slot ``name()`` in ``connect`` and
    ``disconnect`` (it is never called itself)."""
    def slot(self: Any) -> None:
        pass
    slot.__name__ = name
    return types.MethodType(pyqtSlot(name=name)(slot), receiver)


class _CloseWatcher(QObject):
    """Event filter: runs a watched widget's close handling (a view's sub-window or Krita's window:
    Krita's "save it?" prompt and the save it starts) between ``before()`` and
    ``after(widget, accepted)``.

    PyQt may not call a protected method (``QWidget.event``) of a widget Krita made, so the filter
    hands the event on with ``QApplication.sendEvent`` and lets that second delivery through: the
    widget's other filters (``QMdiArea``'s) and its own handler run inside it, then Qt reads the
    event's accepted flag as usual. Application-wide filters see the close event twice."""

    def __init__(self, before: Callable[[], None], after: Callable[[QObject, bool], None]) -> None:
        super().__init__()
        self.before = before
        self.after = after
        self._delivering: set[int] = set()  # (addresses of) widgets whose close event is being handed on

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt's name)
        if event.type() != QEvent.Close or address(watched) in self._delivering:
            return False
        try:
            self.before()
        except Exception:  # never into Qt
            log.exception("easel: taking the live layer out before a close failed")
        key = address(watched)
        self._delivering.add(key)
        try:
            QApplication.sendEvent(watched, event)
        finally:
            self._delivering.discard(key)
            try:
                self.after(watched, event.isAccepted())
            except Exception:
                log.exception("easel: putting the live layer back after a close failed")
        return True  # handled above; Qt closes the widget or not by the accepted flag


class SaveGuard:
    """Wraps Krita's saving actions and watches its views' sub-windows for one ``LiveMode``
    (``live``: anything with ``suspend(doc) -> bool``, ``resume()`` and ``doc``). Main thread.

    Call :meth:`start` once from the extension's ``setup``; windows and views are picked up as
    Krita creates them.
    """

    def __init__(self, app: Any, live: Any, before_save: Callable[[Any], None] | None = None) -> None:
        """``before_save(doc)`` runs first, before Krita copies the image for writing (``doc`` the
        active image) and before a closing view's prompt (``doc`` ``None``: any image): the
        extension stores the newest history in the image there."""
        self.app = app
        self.live = live
        self.before_save = before_save
        #: The guarded action ids, per window (``id`` of its ``KisMainWindow``), and those only
        #: warned about; tests read them.
        self.guarded: dict[int, list[str]] = {}
        self.warned: dict[int, list[str]] = {}
        self._windows: list[Any] = []     # keeps the guarded KisMainWindow wrappers alive
        self._pending: dict[int, list[str]] = {}  # per window: actions Krita had not made yet
        self._watched: set[int] = set()
        self._watcher = _CloseWatcher(self._closing, self._closed)
        self._slots: list[Any] = []       # keeps the before/after closures alive
        #: Krita's saving or closing handlers running now (they nest): no put-back meanwhile.
        self._busy = 0
        #: Widgets whose close went through and that Qt has not deleted yet: no put-back either.
        self._closing_widgets: set[int] = set()
        self._owed = False                # the guard took the live layer out and must put it back
        self._waiting = False

    def start(self) -> None:
        notifier = self.app.notifier()
        notifier.windowCreated.connect(self._windows_changed)
        notifier.viewCreated.connect(lambda *_: QTimer.singleShot(0, self._views_changed))
        self._windows_changed()

    # -- windows and their actions

    def _windows_changed(self, *_: Any) -> None:
        try:
            for window in self.app.windows():
                qwindow = window.qwindow()
                if qwindow is not None and id(qwindow) not in self.guarded:
                    self.guarded[id(qwindow)], self.warned[id(qwindow)] = [], []
                    self._pending[id(qwindow)] = ([action_id for action_id, _, _ in GUARDED_ACTIONS + CLOSING_ACTIONS]
                                                  + [action_id for action_id, _ in WARNED_ACTIONS])
                    self._windows.append(qwindow)
                    self._watch_close(qwindow)  # closing Krita's window asks about every image too
            self._views_changed()
        except Exception:
            log.exception("easel: guarding Krita's save actions failed")

    def _guard_actions(self, qwindow: QObject, wanted: list[str]) -> list[str]:
        """Put the before/after slots around Krita's handler of the ``wanted`` saving actions of
        the window that is Krita's current one (``Krita.action`` looks there), or a warning after
        those it cannot guard. Returns the ids it handled; an action Krita has not made yet is
        tried again when a view is created."""
        handled = []
        labels = dict(WARNED_ACTIONS)
        closing = {action_id for action_id, _, _ in CLOSING_ACTIONS}
        for action_id, owner_class, slot_name in GUARDED_ACTIONS + CLOSING_ACTIONS:
            if action_id not in wanted or self.app.action(action_id) is None:
                continue
            action = self.app.action(action_id)
            before = self._closing_slot() if action_id in closing else self._before_slot()
            after = self._after_slot()
            action.triggered.connect(before)
            try:
                action.triggered.disconnect(cxx_slot(qwindow, slot_name))
            except (TypeError, RuntimeError):
                action.triggered.disconnect(before)
                log.warning("easel: Krita's %s is not %s.%s; saving with it keeps the live layer",
                            action_id, owner_class, slot_name)
                if action_id in closing:
                    handled.append(action_id)  # nothing to warn about after the fact: Krita is gone
                else:
                    labels[action_id] = action.text().replace("&", "")
            else:
                action.triggered.connect(cxx_slot(qwindow, slot_name))  # Krita's own handler, now second
                action.triggered.connect(after)
                self._slots += [before, after]
                self.guarded[id(qwindow)].append(action_id)
                handled.append(action_id)
        for action_id, label in labels.items():
            if action_id not in wanted or self.app.action(action_id) is None:
                continue
            warn = self._warn_slot(label)
            self.app.action(action_id).triggered.connect(warn)
            self._slots.append(warn)
            self.warned[id(qwindow)].append(action_id)
            handled.append(action_id)
        return handled

    def _warn_slot(self, label: str) -> Callable[..., None]:
        def warn(*_: Any) -> None:
            try:
                doc = self.app.activeDocument()
                if self.live.view.enabled and doc is not None and self.live.doc is not None and doc == self.live.doc:
                    self.live.notice(f"Live: {label} saved a file with the Easel live layer in it (Easel cannot "
                                     "take it out for that command). Delete that layer in the new file, or turn "
                                     "Live off before using it.", error=True)
            except Exception:
                log.exception("easel: warning about %s failed", label)
        return warn

    def _before_slot(self) -> Callable[..., None]:
        def before(*_: Any) -> None:
            self._busy += 1
            self._before_save(self.app.activeDocument())
            try:
                if self.live.suspend(self.app.activeDocument()):
                    self._owed = True
            except Exception:
                log.exception("easel: taking the live layer out before saving failed")
        return before

    def _closing_slot(self) -> Callable[..., None]:
        def before(*_: Any) -> None:
            self._closing()
        return before

    def _after_slot(self) -> Callable[..., None]:
        def after(*_: Any) -> None:
            self._busy = max(0, self._busy - 1)
            self._resume_when_idle()
        return after

    # -- views: the "save changes?" prompt when one closes

    def _views_changed(self) -> None:
        for qwindow in list(self._windows):
            try:
                subs = qwindow.findChildren(QMdiSubWindow)
            except RuntimeError:  # the window is gone
                self._windows.remove(qwindow)
                continue
            pending = self._pending.get(id(qwindow))
            if pending:
                done = self._guard_actions(qwindow, pending)
                self._pending[id(qwindow)] = [action_id for action_id in pending if action_id not in done]
            for sub in subs:
                self._watch_close(sub)

    def _watch_close(self, widget: QObject) -> None:
        if address(widget) not in self._watched:
            widget.installEventFilter(self._watcher)
            self._watched.add(address(widget))
            widget.destroyed.connect(lambda *_, key=address(widget): self._gone(key))

    def _closing(self) -> None:
        """A view or Krita's window is about to close, or Krita to quit (and may ask to save an
        image first): whichever image it shows, the live layer goes out until the close is done or
        cancelled."""
        self._busy += 1
        self._before_save(None)
        try:
            if self.live.suspend(self.live.doc):
                self._owed = True
        except Exception:
            log.exception("easel: taking the live layer out before a close failed")

    def _closed(self, widget: QObject, accepted: bool) -> None:
        """The close handling of ``widget`` (a view's sub-window or Krita's window) returned. Went
        through: Qt deletes it (and with it Krita's views; the last view of an image takes the
        image along) once control is back in the event loop, and the put-back waits for that.
        Refused (*Cancel*, a failed save): the layer goes back as soon as nothing else holds it."""
        self._busy = max(0, self._busy - 1)
        if accepted and widget.testAttribute(Qt.WA_DeleteOnClose):
            self._closing_widgets.add(address(widget))
        self._resume_when_idle()

    def _gone(self, key: int) -> None:
        self._watched.discard(key)
        if key in self._closing_widgets:
            self._closing_widgets.discard(key)
            self._resume_when_idle()

    def _before_save(self, doc: Any) -> None:
        if self.before_save is not None:
            try:
                self.before_save(doc)
            except Exception:
                log.exception("easel: preparing the image for saving failed")

    def _resume_when_idle(self) -> None:
        if self._owed and not self._waiting:
            self._waiting = True
            QTimer.singleShot(0, self._try_resume)

    def _try_resume(self) -> None:
        """Put the live layer back, unless a handler of Krita's that may still copy the image for
        a file is running (Krita processes events inside it), a closed sub-window or window is
        still to be deleted, or a prompt or file dialog is open: then look again in RESUME_POLL_MS."""
        if self._busy or self._closing_widgets or QApplication.activeModalWidget() is not None:
            QTimer.singleShot(RESUME_POLL_MS, self._try_resume)
            return
        self._waiting = False
        if not self._owed:
            return
        self._owed = False
        try:
            self.live.resume()
        except Exception:
            log.exception("easel: putting the live layer back after saving failed")
