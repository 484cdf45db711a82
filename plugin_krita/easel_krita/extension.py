"""Krita extension: owns the controller, the asyncio timer and the actions (with shortcuts).

Default shortcuts come from ``easel_krita.action`` (installed next to the plugin by Krita's
importer), so painters can change them in Settings ▸ Configure Krita ▸ Keyboard Shortcuts.
Every slot catches its own exceptions: an exception escaping a Qt slot makes Krita open a modal
traceback dialog that blocks the whole application.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace
from typing import Any, Callable

from krita import Extension, Krita

from .qt import QtCore, QtGui

from . import wording
from .clientkit.links import AsyncLink
from .controller import Controller
from .history import History
from .history_preview import HistoryPreview
from .krita_adapter import KritaCanvas
from .krita_live import KritaLiveHost
from .krita_save_guard import SaveGuard
from .live import LiveMode
from .model_setup import ModelSetup
from .geometry import Margins
from .probe import probe
from .request import Action, RequestError
from .settings import GROUP, LARGEST_SIDE_MAX, Preferences, ProbeResult
from .ui.expand_dialog import ExpandDialog
from .ui.settings_dialog import SettingsDialog

QTimer, QIcon = QtCore.QTimer, QtGui.QIcon

log = logging.getLogger("easel.krita")

VERSION = "0.1.0"
#: Milliseconds between asyncio ticks while work is in flight, and while idle.
BUSY_TICK_MS = 10
IDLE_TICK_MS = 50

#: (action id, menu text, what it does) — ids and default shortcuts also in easel_krita.action.
ACTIONS: tuple[tuple[str, str, Action | None], ...] = (
    ("easel_generate", "Easel: Generate", Action.GENERATE),
    ("easel_refine", "Easel: Refine", Action.REFINE),
    ("easel_fill", "Easel: Fill", Action.FILL),
    ("easel_expand", "Easel: Expand", Action.EXPAND),
    ("easel_upscale", "Easel: Upscale", Action.UPSCALE),
    ("easel_cancel", "Easel: Cancel", None),
)
#: Live mode's actions: (action id, menu text, LiveMode method name); shortcuts in easel_krita.action.
#: The settings dialog's action (also the docker's gear).
SETTINGS_ACTION = ("easel_settings", "Easel: Settings…")
#: How long an error stays on the canvas as Krita's floating message (milliseconds).
FLOATING_MS = 6000
LIVE_ACTIONS: tuple[tuple[str, str, str], ...] = (
    ("easel_live", "Easel: Live on/off", "toggle"),
    ("easel_live_keep", "Easel: Keep the live result", "keep"),
)


class EaselExtension(Extension):
    """Created once when Krita starts. ``controller`` is shared by every window's docker."""

    def __init__(self, parent: Any) -> None:
        super().__init__(parent)
        self.app = Krita.instance()
        self.prefs = Preferences.load(lambda key, default: self.app.readSetting(GROUP, key, default))
        self.connection = AsyncLink(lambda event: None, client_name="krita", client_version=VERSION)
        self.controller = Controller(KritaCanvas(self.app), self.connection, History())
        self.controller.settings = self.prefs.form
        self.controller.big_canvas.largest_side = self.prefs.largest_side
        self.live = LiveMode(self.controller, KritaLiveHost(self.controller.host))
        self.model_setup = ModelSetup(self.controller)  # missing models and their downloads
        self._restore_live_settings()
        #: A history result shown on the canvas for a look (a click on its thumbnail).
        self.history_preview = HistoryPreview(self.controller)
        # Saving, exporting or closing an image first writes the newest history into the image (it
        # is stored in the file) and takes the live layer out (never saved).
        self.save_guard = SaveGuard(self.app, self.live, self._before_save)
        self.timer = QTimer(self)
        self.timer.timeout.connect(self._tick)
        #: The open settings / Expand dialog. Both are modeless (``show()``): no nested event loop, and
        #: the canvas stays usable while one is open.
        self.settings_dialog: Any = None
        self.expand_dialog: Any = None
        self._floated = ""
        self.controller.subscribe(self._float_error)

    # -- Krita's hooks

    def setup(self) -> None:
        self.timer.start(IDLE_TICK_MS)
        self.app.notifier().applicationClosing.connect(self.shutdown)
        self.save_guard.start()
        self.controller.connect(self.prefs.url, self.prefs.token)

    def createActions(self, window: Any) -> None:
        for action_id, text, action in ACTIONS:
            qaction = window.createAction(action_id, text, "tools/scripts/easel")
            if action is None:
                qaction.triggered.connect(self.cancel)
            else:
                qaction.triggered.connect(self._starter(action))
        for action_id, text, method in LIVE_ACTIONS:
            window.createAction(action_id, text, "tools/scripts/easel").triggered.connect(self._live_slot(method))
        window.createAction(*SETTINGS_ACTION, "tools/scripts/easel").triggered.connect(self.open_settings)

    # -- slots

    def _starter(self, action: Action) -> Callable[[], None]:
        def start(*_: Any) -> None:
            self.run(action)
        return start

    def _live_slot(self, method: str) -> Callable[..., None]:
        def slot(*_: Any) -> None:
            try:
                getattr(self.live, method)()
            except Exception as exc:  # never let an exception reach Qt
                log.exception("easel: live %s failed", method)
                self.controller.say(wording.unexpected(f"{method} live mode", exc), error=True)
        return slot

    def run(self, action: Action) -> str | None:
        """Start ``action`` on the active image; returns the job id or ``None`` (reason in the docker).
        Expand first asks for the margins (:meth:`ask_expand`) and starts when the painter says OK."""
        try:
            self.history_preview.hide()  # a job reads the visible image: never the preview's pixels
            if action is Action.EXPAND:
                self.ask_expand()
                return None
            self.save_preferences()
            return self.controller.start(action)
        except Exception as exc:  # never let an exception reach Qt
            log.exception("easel: %s failed", action.value)
            self.controller.say(wording.unexpected(f"start {action.label}", exc), error=True)
            return None

    def ask_expand(self) -> None:
        """Open the Expand dialog (prefilled with the margins used last); OK starts the job. Refused
        while an Expand runs or its dialog is open (a second click would grow the canvas twice)."""
        if any(record.request.action is Action.EXPAND for record in self.controller.jobs.values()):
            self.controller.say("Expand is already running; wait for it to finish or cancel it first.", error=True)
            return
        if self.expand_dialog is not None and self.expand_dialog.isVisible():
            _show(self.expand_dialog)
            return
        doc = self.app.activeDocument()
        if doc is None:
            self.controller.start(Action.EXPAND)  # says what is missing
            return
        window = self.app.activeWindow()
        dialog = ExpandDialog(self.controller.settings.margins, (doc.width(), doc.height()),
                              window.qwindow() if window is not None else None)
        dialog.accepted.connect(lambda: self._expand_with(dialog.margins()))
        self.expand_dialog = dialog
        _show(dialog)

    def _expand_with(self, margins: Margins) -> None:
        try:
            self.controller.set_settings(replace(self.controller.settings, margins=margins))
            self.save_preferences()
            self.controller.start(Action.EXPAND)
        except Exception as exc:  # never let an exception reach Qt
            log.exception("easel: expand failed")
            self.controller.say(wording.unexpected("start Expand", exc), error=True)

    # -- settings

    def open_settings(self, *_: Any) -> None:
        """The settings dialog (Tools ▸ Scripts ▸ Easel: Settings…, and the docker's gear)."""
        try:
            if self.settings_dialog is not None and self.settings_dialog.isVisible():
                _show(self.settings_dialog)
                return
            view = self.controller.view
            welcome = self.connection.welcome
            window = self.app.activeWindow()
            dialog = SettingsDialog(self.prefs, self._probe, [(m.name or m.id, m.id) for m in view.models],
                                    welcome.limits.max_image_side if welcome is not None else LARGEST_SIDE_MAX,
                                    window.qwindow() if window is not None else None)
            dialog.accepted.connect(lambda: self._settings_accepted(dialog))
            self.settings_dialog = dialog
            _show(dialog)
        except Exception as exc:  # never let an exception reach Qt
            log.exception("easel: opening the settings failed")
            self.controller.say(wording.unexpected("open the Easel settings", exc), error=True)

    def _probe(self, url: str, token: str, report: Callable[[ProbeResult], None]) -> None:
        async def run() -> None:
            result = await probe(url, token, client_name="krita", client_version=VERSION)
            try:
                report(result)
            except Exception:
                log.exception("easel: showing the connection test failed")
        self.connection.spawn(run(), "the settings' connection test")

    def _settings_accepted(self, dialog: Any) -> None:
        try:
            values = dialog.values()
            reconnect = (values.url, values.token) != (self.prefs.url, self.prefs.token)
            self.prefs.url, self.prefs.token = values.url, values.token
            self.prefs.default_model, self.prefs.largest_side = values.default_model, values.largest_side
            self.controller.big_canvas.largest_side = values.largest_side
            if values.default_model:
                self.controller.set_settings(replace(self.controller.settings, model=values.default_model))
            self.save_preferences()
            if reconnect:
                self.controller.connect(values.url, values.token)
        except Exception as exc:  # never let an exception reach Qt
            log.exception("easel: applying the settings failed")
            self.controller.say(wording.unexpected("apply the Easel settings", exc), error=True)

    def _float_error(self, view: Any) -> None:
        """An error also shows on the canvas as Krita's floating message (the docker may be hidden
        or scrolled away)."""
        if not (view.message_is_error and view.message) or view.message == self._floated:
            if not view.message_is_error:
                self._floated = ""
            return
        self._floated = view.message
        try:
            window = self.app.activeWindow()
            active = window.activeView() if window is not None else None
            if active is not None:
                active.showFloatingMessage(view.message, QIcon(), FLOATING_MS, 1)
        except Exception:
            log.exception("easel: showing a floating message failed")

    def cancel(self, *_: Any) -> None:
        try:
            self.controller.cancel_all()
        except Exception as exc:
            log.exception("easel: cancel failed")
            self.controller.say(wording.unexpected("cancel", exc), error=True)

    def reconnect(self, url: str, token: str) -> None:
        self.prefs.url, self.prefs.token = url, token
        self.save_preferences()
        self.controller.connect(url, token)

    def _before_save(self, doc: Any = None) -> None:
        """Before Krita saves, exports or closes an image: no history preview in the file, and the
        newest history in it."""
        self.history_preview.hide()
        self.controller.flush_history(doc)

    def _restore_live_settings(self) -> None:
        """Live strength, steps and seed as the painter left them (issue 13: 0.35 came back as 0.50)."""
        if not self.prefs.live:
            return
        try:
            self.live.set_settings(replace(self.live.settings, **self.prefs.live))
        except (RequestError, TypeError) as exc:
            log.warning("easel: ignoring the saved live settings: %s", exc)

    def save_preferences(self) -> None:
        self.prefs.form = self.controller.settings
        self.prefs.live = asdict(self.live.settings)
        self.prefs.save(lambda key, value: self.app.writeSetting(GROUP, key, value))

    def _tick(self) -> None:
        try:
            started = time.perf_counter()
            self.connection.tick()
            self.controller.stats.note("network tick", time.perf_counter() - started)
            busy = self.connection.busy or bool(self.controller.jobs) or self.live.view.enabled
            interval = BUSY_TICK_MS if busy else IDLE_TICK_MS
            if self.timer.interval() != interval:
                self.timer.setInterval(interval)
        except Exception:
            log.exception("easel: the network tick failed")

    def shutdown(self) -> None:
        try:
            self.live.disable()  # the live layer is not the painter's: it goes before Krita closes
            self.timer.stop()
            self.save_preferences()
            self.connection.close()
        except Exception:
            log.exception("easel: shutting down failed")


def _show(dialog: Any) -> None:
    """Show ``dialog`` modeless, in front."""
    dialog.setModal(False)
    dialog.show()
    dialog.raise_()
    dialog.activateWindow()
