"""Live mode: the image follows the brush.

While live mode is on, every finished stroke or other undoable change of the document (the host's
change signal; in Krita the Undo History model's reset) is debounced for :data:`DEBOUNCE_S` and
then sends one live img2img job (``JobParams.live``) of the visible image — the canvas, or the
selection's bounds — with the live settings: a low step count, the live strength, and a fixed seed
so the picture stays put between strokes. The result shows in one *live layer* at the top of the
stack, updated by the job's step previews and then by its final image; *Keep* copies the current
live result into a new paint layer (one undo step).

Latest wins, on both ends: the server replaces this client's pending live job and stops the
running one (``job_cancelled`` ``superseded``, docs/protocol.md section 7); here only the newest
job's previews and result reach the live layer, so a result that crossed a newer request on the
wire is dropped (``live_jobs.py``).

The live layer (``live_layer.py``) is the plugin's, not the painter's: no undo step adds,
writes or removes it, and it is hidden while the visible image is read. Control layers are kept
out of the source the same way, and guide every live job as ControlNet units, like the other
actions: a stroke on a control layer is a change like any other, and its new pixels are uploaded
(content-addressed: an unchanged control image is not sent again).

What else makes a new live image: changing the form (prompt, negative prompt, model, LoRAs, the
form's seed while the live seed is "pick one"), the live settings, or the control layers'
markings — debounced like canvas changes; a change nothing in the job depends on sends nothing.

Saving: :meth:`LiveMode.suspend` takes the live layer out while the host writes the image to a
file and :meth:`LiveMode.resume` puts the same layer back (the Krita side calls them around
Krita's save, export and close handlers; ``krita_save_guard.py``). Previews and results reach the
live layer through the same :class:`~.painter.PreviewPainter` Generate uses.

Live mode takes its jobs' events from the plugin's :class:`~.router.EventRouter` (subscribed first)
and asks the rest of the plugin for what it needs through :class:`LiveForm` (the controller).
No ``krita`` and no Qt here: the Krita side is :class:`~.host.LiveHost` (``krita_live.py``);
everything runs on the connection's asyncio loop, which the host ticks on its main thread.
"""
from __future__ import annotations

import logging
import random
from dataclasses import replace
from typing import Any, Callable

from . import wording
from .host import Doc, HostError, Layer, LiveHost
from .live_jobs import LiveForm, LiveJobs
from .live_layer import LIVE_LAYER_NAME, LiveLayer
from .live_settings import LiveSettings, LiveStats, LiveView, live_schedule
from .request import Action, GenerationSettings, RequestError
from .view import ViewState

#: Re-exported: the Live section, the tests and the scenarios take them from here.
__all__ = ["DEBOUNCE_S", "LIVE_LAYER_NAME", "LiveMode", "LiveSettings", "LiveView", "live_schedule"]

log = logging.getLogger("easel.krita.live")

#: Seconds of quiet after a change before the live job is sent (a burst of changes — an undo
#: held down, a quick series of short strokes — sends one job).
DEBOUNCE_S = 0.2


class LiveMode:
    """Live mode on one document at a time. Methods are called on the main thread.

    ``controller`` supplies the connection, the form's settings and model, the canvas host and
    the control layers; live mode takes the events of its own jobs from the controller's event
    router (subscribed first), every other event goes on to the controller.
    """

    def __init__(self, controller: LiveForm, live_host: LiveHost, *, debounce_s: float = DEBOUNCE_S,
                 preview_budget: float = 0.25) -> None:
        self.controller = controller
        self.host = controller.host
        self.live_host = live_host
        self.connection = controller.connection
        self.debounce_s = debounce_s
        self.settings = LiveSettings()
        self.view = LiveView()
        self.stats = LiveStats()
        #: The live layer and the document it is in (live_layer.py).
        self.live_layer = LiveLayer(self.host, live_host, self.stats, lambda text: self._status(text))
        self.seed = 0
        self._listeners: list[Callable[[LiveView], None]] = []
        self._stop_watch: Callable[[], None] | None = None
        self._control_rows: tuple = ()
        #: Sends the live jobs and draws what comes back (live_jobs.py); their events come from
        #: the plugin's event router, before the controller sees them.
        self.jobs = LiveJobs(controller, live_host, self.live_layer, self, preview_budget=preview_budget)
        controller.router.subscribe(self.jobs.take, first=True)
        controller.watch_settings(self._form_changed)
        controller.subscribe(self._controller_view)
        controller.guides.watch(self._regions_changed)

    # ------------------------------------------------------------------ observers

    def subscribe(self, listener: Callable[[LiveView], None]) -> None:
        self._listeners.append(listener)
        listener(self.view)

    def _update(self, **changes: Any) -> None:
        self.view = replace(self.view, **changes)
        for listener in list(self._listeners):
            try:
                listener(self.view)
            except Exception:
                log.exception("easel: a live view listener failed")

    def _status(self, text: str, error: bool = False) -> None:
        text = wording.sentence(text)
        (log.warning if error else log.info)("easel live: %s", text)
        self._update(status=text, error=error)

    def notice(self, text: str, error: bool = False) -> None:
        """Show ``text`` in the Live section's status line (the Krita side's warnings)."""
        self._status(text, error)

    def result_shown(self) -> None:
        """A live result is on the live layer: *Keep* can copy it."""
        self._update(can_keep=True)

    def set_settings(self, settings: LiveSettings) -> None:
        """Replace the live settings; when live mode is on, a new live image follows (debounced)."""
        settings.check()
        self.settings = settings
        if settings.seed is not None:
            self.seed = settings.seed
        if self.view.enabled:
            self.stats.form_changes += 1
            self.jobs.schedule(self.debounce_s)

    def _form_changed(self, form: GenerationSettings) -> None:
        """The form's settings changed (the painter typed a prompt, picked a model, a LoRA...):
        a new live image, debounced. The form's seed is followed while the live seed is "pick one"."""
        if not self.view.enabled:
            return
        if self.settings.seed is None and form.seed is not None:
            self.seed = form.seed
        self.stats.form_changes += 1
        self.jobs.schedule(self.debounce_s)

    def _controller_view(self, view: ViewState) -> None:
        """A control layer was marked, unmarked or changed: a new live image, debounced. (Reading
        the marks while a live job is planned updates the view too; that read needs no second.)"""
        rows = tuple((c.layer_id, c.spec) for c in view.control_layers)
        if rows == self._control_rows:
            return
        self._control_rows = rows
        if self.view.enabled and not self.jobs.reading:
            self.stats.form_changes += 1
            self.jobs.schedule(self.debounce_s)

    def _regions_changed(self) -> None:
        """A region layer was marked, unmarked or given another prompt: a new live image, debounced."""
        if self.view.enabled:
            self.stats.form_changes += 1
            self.jobs.schedule(self.debounce_s)

    # ------------------------------------------------------------------ on and off

    def enable(self) -> bool:
        """Turn live mode on for the active document: add the live layer, start following its
        changes, and make the first live image. False (the reason in the status) when it cannot."""
        if self.view.enabled:
            return True
        try:
            self.settings.check()
            if not self.connection.connected:
                raise RequestError("connect to the Easel server first")
            model = self.controller.current_model()
            if model is not None and model.tasks and Action.REFINE.task not in model.tasks:
                raise RequestError(f"the model {model.name or model.id} cannot refine images; pick another model")
            doc = self.host.active_document()
            self.live_layer.attach(doc)
        except (RequestError, HostError) as exc:
            self._status(f"Live could not start: {exc}", error=True)
            return False
        except Exception as exc:
            log.exception("easel: starting live mode failed")
            self._status(wording.unexpected("start live mode", exc), error=True)
            return False
        form_seed = self.controller.settings.seed
        self.seed = next(s for s in (self.settings.seed, form_seed, random.randrange(2 ** 32)) if s is not None)
        self.jobs.reset()
        try:
            self._stop_watch = self.live_host.watch_changes(doc, self.canvas_changed)
        except Exception:
            log.exception("easel: watching the document failed")
            self._stop_watch = None
        self._update(enabled=True, can_keep=False)
        self._status(f"Live is on (seed {self.seed}); paint, and the live layer follows." if self._stop_watch else
                     f"Live is on (seed {self.seed}), but this Krita cannot report changes: use Refresh.")
        self.jobs.schedule(0.0)
        return True

    def disable(self, reason: str = "") -> None:
        """Turn live mode off: stop following changes, cancel the open live jobs on the server and
        take the live layer away (no undo step). The document is left as the painter left it."""
        if not self.view.enabled:
            return
        self._update(enabled=False, can_keep=False)
        if self._stop_watch is not None:
            try:
                self._stop_watch()
            except Exception:
                log.exception("easel: stopping the change watch failed")
            self._stop_watch = None
        self.jobs.stop()
        try:
            self.live_layer.detach()
        except Exception as exc:
            log.exception("easel: removing the live layer failed")
            self._status(wording.unexpected("remove the live layer", exc), error=True)
            return
        self._status(reason or "Live is off.")

    def toggle(self) -> bool:
        """Turn live mode on or off; returns whether it is on now."""
        if self.view.enabled:
            self.disable()
        else:
            self.enable()
        return self.view.enabled

    def refresh(self) -> None:
        """Make a live image now (as if the canvas had changed)."""
        if self.view.enabled:
            self.jobs.schedule(0.0, force=True)

    # ------------------------------------------------------------------ keep

    @property
    def doc(self) -> Doc:
        """The document live mode is on (None while it is off)."""
        return self.live_layer.doc

    def keep(self) -> Layer:
        """Copy the current live result into a new paint layer under the live layer (one undo
        step). Returns the new layer, or None (the reason in the status)."""
        shown = self.jobs.shown
        if not self.view.enabled or shown is None:
            self._status("There is no live result to keep yet.", error=True)
            return None
        try:
            name = f"{shown.request.layer_name(shown.seed)} (live)"
            layer = self.live_layer.keep(name, shown)
        except HostError as exc:
            self._status(str(exc), error=True)
            return None
        except Exception as exc:
            log.exception("easel: keeping the live result failed")
            self._status(wording.unexpected("keep the live result", exc), error=True)
            return None
        self.stats.kept += 1
        self._status(f"Kept the live result as the layer {name}.")
        return layer

    # ------------------------------------------------------------------ changes

    def canvas_changed(self) -> None:
        """The host's change signal (main thread). Debounced; never raises."""
        if not self.view.enabled:
            return
        self.stats.changes += 1
        self.jobs.schedule(self.debounce_s)

    # ------------------------------------------------------------------ saving

    def suspend(self, doc: Doc) -> bool:
        """Take the live layer out of ``doc`` (no undo step) while the host writes ``doc`` to a
        file, so it is never saved or exported. Returns False when there was nothing to take out
        (live is off, or on for another image). Until :meth:`resume`, nothing is drawn and no
        live job is read; results that arrive meanwhile are shown when it comes back."""
        if (not self.view.enabled or self.live_layer.suspended or self.doc is None or doc is None
                or not doc == self.doc):
            return False
        try:
            self.live_layer.take_out(self.jobs.shown)
        except Exception as exc:
            log.exception("easel: taking the live layer out for a save failed")
            self._status(wording.unexpected("take the live layer out before saving", exc), error=True)
            return False
        self.stats.suspended += 1
        self._status("Live: the live layer is out of the image while it is saved.")
        return True

    def resume(self) -> None:
        """After the save: the live layer goes back on top with its pixels (no undo step), and
        the newest live image that arrived meanwhile is drawn. Turns live off with a sentence
        when the image was closed meanwhile."""
        if not self.live_layer.suspended:
            return
        self.live_layer.suspended = False
        if not self.view.enabled:
            return
        doc = self.doc
        if doc is None or not self.host.is_open(doc):
            self.disable("Live is off: its image was closed.")
            return
        try:
            self.live_layer.put_back(self.jobs.shown)
            self._status("Live is on; the live layer is back (it is never saved with the image).")
        except HostError as exc:
            self._status(f"Live: {exc}", error=True)
        except Exception as exc:
            log.exception("easel: putting the live layer back after a save failed")
            self._status(wording.unexpected("put the live layer back after saving", exc), error=True)
