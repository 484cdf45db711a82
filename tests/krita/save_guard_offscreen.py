"""Krita's close handling rebuilt with real Qt widgets offscreen, around the plugin's ``SaveGuard``;
reports what happened as JSON.

    python3 save_guard_offscreen.py PACKAGE_DIR

PACKAGE_DIR is ``plugin_krita/easel_krita`` (imported without its ``__init__``, which registers
with Krita). Run by ``test_krita_save_guard.py`` under Debian's Python with PyQt5 (Krita 5's
binding); the assertions are there.

What is real: Qt's ``QMdiArea``/``QMdiSubWindow`` (the guard's event filter sits on the
sub-window, as in Krita), ``QMessageBox`` and the event loop. What stands in for Krita: a view
widget whose ``closeEvent`` does what ``KisView::closeEvent``/``queryClose`` do in Krita 5.1 —
asks "save it?" with Yes/No/Cancel; on Yes waits for the image while *processing events*
(``KisViewManager::blockUntilOperationsFinished``) and then copies the layers for the file; on No
marks the image unmodified; on Cancel refuses the close — and an image that closes when its last
view is deleted (``KisPart::removeView``). Live mode is a recorder with ``suspend``/``resume``.
Every step lands, in order, in one trace.
"""
from __future__ import annotations

import json
import os
import sys
import time
import types
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
package = types.ModuleType("easel_krita")
package.__path__ = [str(Path(sys.argv[1]))]  # type: ignore[attr-defined]
sys.modules["easel_krita"] = package

from PyQt5.QtCore import QObject, Qt, QTimer, pyqtSignal, pyqtSlot  # noqa: E402
from PyQt5.QtWidgets import (QAction, QApplication, QMainWindow, QMdiArea, QMdiSubWindow, QMessageBox,  # noqa: E402
                             QWidget)

from easel_krita.krita_save_guard import RESUME_POLL_MS, SaveGuard  # noqa: E402

LIVE = "Easel live"
#: How long the stand-in save processes events before it copies the image: several put-back polls.
SAVE_BUSY_S = 6 * RESUME_POLL_MS / 1000

trace: list[list] = []


class Image:
    def __init__(self, name: str, layers: list[str]) -> None:
        self.name, self.layers = name, layers
        self.modified, self.open = False, True
        self.files: list[list[str]] = []  # the layers of every copy written to a file


class Live:
    """What SaveGuard uses of LiveMode: suspend(doc) -> bool, resume(), doc."""

    def __init__(self, doc: Image) -> None:
        self.doc, self.out = doc, False

    def suspend(self, doc: Image | None) -> bool:
        if doc is not self.doc or self.out:
            return False
        doc.layers.remove(LIVE)
        self.out = True
        trace.append(["suspend", list(doc.layers)])
        return True

    def resume(self) -> None:
        self.out = False
        if self.doc.open:
            self.doc.layers.append(LIVE)
            trace.append(["put back", list(self.doc.layers)])
        else:
            trace.append(["live off: image closed"])


class View(QWidget):
    """A stand-in for KisView: its close handling is Krita 5.1's ``queryClose``."""

    def __init__(self, doc: Image) -> None:
        super().__init__()
        self.doc = doc

    def query_close(self) -> bool:
        doc = self.doc
        if doc.modified:
            answer = QMessageBox.warning(self, "Krita", f"The document '{doc.name}' has been modified. Save it?",
                                         QMessageBox.Yes | QMessageBox.No | QMessageBox.Cancel, QMessageBox.Yes)
            if answer == QMessageBox.Yes:
                end = time.monotonic() + SAVE_BUSY_S  # waiting for the image: Krita processes events
                while time.monotonic() < end:
                    QApplication.processEvents()
                    time.sleep(0.002)
                doc.files.append(list(doc.layers))  # lockAndCloneForSaving: this copy is written
                doc.modified = False
                trace.append(["saved", list(doc.layers)])
            elif answer == QMessageBox.No:
                doc.modified = False
            else:
                return False
        return True

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        trace.append(["close handling starts", list(self.doc.layers)])
        accepted = self.query_close()
        event.setAccepted(accepted)
        trace.append(["close handling returns", accepted, list(self.doc.layers)])


class Window(QMainWindow):
    """A stand-in for KisMainWindow: its Quit handler is Krita 5.1's ``KisPart::closeSession``
    (every image's ``queryClose`` first, then the windows close)."""

    @pyqtSlot()
    def slotFileQuit(self) -> None:  # noqa: N802 (Krita's name)
        trace.append(["quit handling starts", list(live.doc.layers)])
        subs = self.findChildren(QMdiSubWindow)
        quits = all(sub.widget().query_close() for sub in subs)
        if quits:
            for sub in subs:  # Krita closes its windows, which close their views (no prompt now)
                sub.close()
        trace.append(["quit handling returns", quits, list(live.doc.layers)])


class Notifier(QObject):
    windowCreated = pyqtSignal()  # noqa: N815 (Krita's names)
    viewCreated = pyqtSignal(object)  # noqa: N815


class KritaWindow:
    def __init__(self, qwindow: QMainWindow) -> None:
        self._qwindow = qwindow

    def qwindow(self) -> QMainWindow:
        return self._qwindow


class App:
    """What SaveGuard uses of ``Krita.instance()``; of the actions only Quit, its handler connected
    as Krita connects it (the real-Krita test covers the saving actions)."""

    def __init__(self, window: KritaWindow, quit_action: QAction) -> None:
        self._notifier, self._window, self.quit_action = Notifier(), window, quit_action

    def notifier(self) -> Notifier:
        return self._notifier

    def windows(self) -> list[KritaWindow]:
        return [self._window]

    def action(self, name: str) -> QAction | None:
        return self.quit_action if name == "file_quit" else None

    def activeDocument(self) -> None:  # noqa: N802 (Krita's name)
        return None


def wait_until(predicate, limit_s: float = 10.0) -> bool:
    end = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > end:
            return False
        QApplication.processEvents()
        time.sleep(0.002)
    return True


def settle(seconds: float) -> None:
    wait_until(lambda: False, seconds)


def answer_prompt(button) -> list:
    """Click ``button`` on the next modal prompt; the list gets the image's layers at the prompt."""
    seen: list = []

    def look() -> None:
        box = QApplication.activeModalWidget()
        if isinstance(box, QMessageBox):
            seen.append(list(live.doc.layers))
            trace.append(["prompt answered", box.button(button).text().replace("&", "")])
            box.button(button).click()
        else:
            QTimer.singleShot(5, look)

    QTimer.singleShot(0, look)
    return seen


def close(sub) -> dict:
    """Close ``sub`` as Krita's Close does (``QMdiSubWindow.close``), from the event loop; ``sub``
    None: quit as Krita's Quit does (its action)."""
    done: dict = {}

    def run() -> None:
        if sub is None:
            quit_action.trigger()
            done["accepted"] = all(s.widget().doc is not live.doc for s in area.subWindowList())
        else:
            done["accepted"] = sub.close()
        trace.append(["close returned", done["accepted"], list(live.doc.layers)])

    QTimer.singleShot(0, run)
    wait_until(lambda: "accepted" in done)
    return done


def open_view(area: QMdiArea, doc: Image):
    view = View(doc)
    sub = area.addSubWindow(view)
    sub.setAttribute(Qt.WA_DeleteOnClose)
    view.destroyed.connect(lambda *_: setattr(doc, "open", False))  # its only view: the image closes
    sub.show()
    guard._views_changed()
    return sub


app = QApplication([])
main = Window()
area = QMdiArea()
main.setCentralWidget(area)
main.show()
quit_action = QAction("Quit", main)
quit_action.triggered.connect(main.slotFileQuit)  # Krita connects its handler when it makes the action
painted = Image("painted", ["Background", "Paint", LIVE])
live = Live(painted)
guard = SaveGuard(App(KritaWindow(main), quit_action), live)
guard.start()
report: dict = {"guarded": [action for actions in guard.guarded.values() for action in actions]}


def case(name: str, sub, doc: Image, button=None) -> None:
    """Close ``sub`` (a view of ``doc``), answering the prompt with ``button`` (None: ``doc`` is
    unmodified, no prompt); record what happened once the guard has nothing left to do."""
    trace.clear()
    doc.modified = button is not None
    prompts = answer_prompt(button) if button is not None else []
    closed = close(sub)
    wait_until(lambda: not live.out and not guard._waiting, 10)
    settle(3 * RESUME_POLL_MS / 1000)
    report[name] = {"accepted": closed["accepted"], "prompts": prompts, "files": list(doc.files),
                    "image_open": doc.open, "modified": doc.modified, "layers": list(live.doc.layers),
                    "trace": [list(step) for step in trace]}


other = Image("other", ["Background"])
painted_view = open_view(area, painted)
case("other image closes", open_view(area, other), other)  # unmodified: no prompt
case("cancel", painted_view, painted, QMessageBox.Cancel)
case("yes", painted_view, painted, QMessageBox.Yes)
again = Image("painted again", ["Background", "Paint", LIVE])
live.doc = again
case("no", open_view(area, again), again, QMessageBox.No)
last = Image("last", ["Background", LIVE])
live.doc = last
open_view(area, last)
case("quit cancelled", None, last, QMessageBox.Cancel)
case("quit", None, last, QMessageBox.Yes)
print("REPORT " + json.dumps(report), flush=True)
