"""Easel's test driver: a Krita plugin that runs one scenario inside Krita, writes what it saw to a
JSON file, and quits Krita cleanly. Installed only into the isolated homes of ``tests/krita``.

Environment: ``EASEL_TEST_SCENARIO`` (a .py file with ``run(ctx)``, a generator), ``EASEL_TEST_OUT``
(the JSON file to write), ``EASEL_TEST_ARTIFACTS`` (a folder for screenshots).

A scenario yields to let Krita's event loop run: ``yield 0.5`` sleeps half a second;
``yield predicate`` waits until ``predicate()`` is true (60 s, then fails); ``yield (predicate,
seconds)`` waits with another limit. ``ctx.record(key, value)`` stores an observation.

While the scenario runs, a 5 ms timer measures how long the main thread goes without running it
(``ctx.probe``): the UI's longest stall. Modal dialogs (e.g. Krita's "An exception occurred") are
recorded and closed, because quitting Krita under a modal dialog crashes it. A scenario that
expects a dialog sets ``ctx.dialog_handler`` (called with the modal widget; returning True means
it answered the dialog, which is then recorded under ``handled_dialogs`` instead). The driver quits
Krita with every image marked unmodified, unless the scenario set ``ctx.quit_with_changes``: then
Krita asks "save it?" on the way out and ``ctx.dialog_handler`` answers. A scenario must
not start what opens a modal dialog from inside ``run`` itself (the dialog's event loop would call
the generator while it runs): use ``QTimer.singleShot(0, ...)``.
"""
import importlib.util
import json
import os
import sys
import time
import traceback

from krita import Extension, Krita
from PyQt5.QtCore import QTimer
from PyQt5.QtWidgets import QApplication, QLabel, QPlainTextEdit, QTextEdit

WAIT_LIMIT_S = 60.0


class Probe:
    """Longest gap between 5 ms timer ticks: how long the UI thread was blocked."""

    def __init__(self):
        self.timer = QTimer()
        self.timer.setInterval(5)
        self.timer.timeout.connect(self._tick)
        self.last = None
        self.max_gap = 0.0
        self.gaps = []

    def start(self):
        self.reset()
        self.timer.start()

    def reset(self):
        self.last = time.perf_counter()
        self.max_gap = 0.0
        self.gaps = []

    def _tick(self):
        now = time.perf_counter()
        if self.last is not None:
            gap = now - self.last
            self.gaps.append(gap)
            self.max_gap = max(self.max_gap, gap)
            if len(self.gaps) > 100000:
                del self.gaps[:50000]
        self.last = now


class Context:
    def __init__(self, out_path, artifacts):
        self.app = Krita.instance()
        self.out_path = out_path
        self.artifacts = artifacts
        self.data = {"observations": {}, "dialogs": [], "handled_dialogs": [], "error": None, "finished": False}
        self.probe = Probe()
        self.dialog_handler = None
        self.quit_with_changes = False

    def record(self, key, value):
        self.data["observations"][key] = value
        self.flush()

    def flush(self):
        tmp = self.out_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, default=str)
        os.replace(tmp, self.out_path)

    def screenshot(self, name):
        path = os.path.join(self.artifacts, name)
        QApplication.primaryScreen().grabWindow(0).save(path)
        return path


class Runner:
    def __init__(self):
        self.ctx = None
        self.gen = None
        self.waiting = None
        self.deadline = None
        self.resume_at = 0.0
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self.step)

    def start(self):
        out = os.environ["EASEL_TEST_OUT"]
        artifacts = os.environ.get("EASEL_TEST_ARTIFACTS", os.path.dirname(out))
        self.ctx = Context(out, artifacts)
        try:
            scenario = os.environ["EASEL_TEST_SCENARIO"]
            if os.path.dirname(scenario) not in sys.path:  # scenarios import their shared helpers
                sys.path.insert(0, os.path.dirname(scenario))
            spec = importlib.util.spec_from_file_location("easel_scenario", scenario)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            self.ctx.probe.start()
            self.gen = module.run(self.ctx)
        except BaseException:
            self.ctx.data["error"] = traceback.format_exc()
            self.finish()
            return
        self.timer.start()

    def close_dialogs(self):
        for turn in range(10):
            widget = QApplication.activeModalWidget()
            if widget is None:
                if turn:
                    self.ctx.flush()  # Krita may quit right after (a prompt answered on the way out)
                return
            texts = [w.text() for w in widget.findChildren(QLabel)]
            texts += [w.toPlainText() for w in widget.findChildren(QTextEdit) + widget.findChildren(QPlainTextEdit)]
            text = " ".join(texts)
            handler = self.ctx.dialog_handler
            if handler is not None:
                try:
                    handled = handler(widget)
                except BaseException:
                    handled = False
                    self.ctx.data["error"] = traceback.format_exc()
                if handled:
                    self.ctx.data["handled_dialogs"].append({"title": widget.windowTitle(), "text": text[:2000]})
                    continue
            self.ctx.data["dialogs"].append({"title": widget.windowTitle(), "text": text[:2000]})
            widget.close()
            if hasattr(widget, "reject"):
                widget.reject()

    def step(self):
        self.close_dialogs()
        now = time.monotonic()
        if now < self.resume_at:
            return
        if self.waiting is not None:
            try:
                done = self.waiting()
            except BaseException:
                done = False
                self.fail(traceback.format_exc())
                return
            if not done:
                if now > self.deadline:
                    name = getattr(self.waiting, "__name__", repr(self.waiting))
                    self.fail(f"timed out waiting for {name}")
                return
            self.waiting = None
        try:
            item = next(self.gen)
        except StopIteration:
            self.ctx.data["finished"] = True
            self.finish()
            return
        except BaseException:
            self.fail(traceback.format_exc())
            return
        if isinstance(item, (int, float)):
            self.resume_at = now + item
        elif isinstance(item, tuple):
            self.waiting, limit = item
            self.deadline = now + limit
        elif callable(item):
            self.waiting, self.deadline = item, now + WAIT_LIMIT_S
        else:
            self.fail(f"the scenario yielded {item!r}; yield seconds, a predicate or (predicate, seconds)")

    def fail(self, message):
        self.ctx.data["error"] = message
        self.finish()

    def finish(self):
        self.timer.stop()
        self.ctx.probe.timer.stop()
        try:
            if self.gen is not None:
                self.gen.close()
        except BaseException:
            pass
        self.close_dialogs()
        self.ctx.flush()
        QTimer.singleShot(100, self.quit)

    def quit(self):
        self.close_dialogs()
        app = Krita.instance()
        if self.ctx.quit_with_changes:  # Krita's prompts on the way out go to ctx.dialog_handler
            self.timer.timeout.disconnect(self.step)
            self.timer.timeout.connect(self.close_dialogs)
            self.timer.start()
        else:
            for doc in app.documents():
                doc.setModified(False)
        self.ctx.flush()
        app.action("file_quit").trigger()


class DriverExtension(Extension):
    def __init__(self, parent):
        super().__init__(parent)
        self.runner = Runner()

    def setup(self):
        if os.environ.get("EASEL_TEST_SCENARIO"):
            Krita.instance().notifier().windowCreated.connect(lambda: QTimer.singleShot(200, self.runner.start))

    def createActions(self, window):
        pass


Krita.instance().addExtension(DriverExtension(Krita.instance()))
