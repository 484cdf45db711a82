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
wire is dropped.

The live layer is the plugin's, not the painter's: it is added and removed without undo steps
(so turning live mode off leaves the document, its layers and its undo history exactly as the
painter left them), writing it is not an undo step either (so it never triggers a live job), and
it is hidden while the visible image is read (so the source is the painter's picture, never the
previous live result). Control layers are kept out of the source the same way, and guide every
live job as ControlNet units, like the other actions: a stroke on a control layer is a change
like any other, and its new pixels are uploaded (content-addressed: an unchanged control image
is not sent again).

What else makes a new live image: changing the form (prompt, negative prompt, model, LoRAs, the
form's seed while the live seed is "pick one"), the live settings, or the control layers'
markings — debounced like canvas changes; a change nothing in the job depends on sends nothing.

The painter may delete the live layer (an undoable step): the next live image brings it back.
If they undo the deletion, the old layer returns; live mode adopts it (Krita's undo history
refers to it) and takes out the one it inserted meanwhile, so there is never a second live layer.
Saving: :meth:`LiveMode.suspend` takes the live layer out while the host writes the image to a
file and :meth:`LiveMode.resume` puts the same layer back (the Krita side calls them around
Krita's save, export and close handlers; ``krita_save_guard.py``).

No ``krita`` and no Qt here: the Krita side is :class:`~.host.LiveHost` (``krita_live.py``); everything
runs on the connection's asyncio loop, which the host ticks on its main thread.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
from dataclasses import dataclass, replace
from typing import Any, Callable

from . import pixels, wording
from .clientkit.events import SubmitFailed
from .control import ControlError
from .controller import Controller
from .host import HostError, LiveHost
from .geometry import PreviewThrottle, Rect
from .protocol import (
    ErrorEvent, ImageFormat, ImagePayload, JobAccepted, JobCancelled, JobFailed, JobResult, JobStarted, ModelInfo,
    StepPreview,
)
from .protocol.transport import Connected, Disconnected, JobLost
from .live_settings import LiveSettings, LiveStats, LiveView, live_schedule
from .request import Action, GenerationRequest, RequestError, plan

log = logging.getLogger("easel.krita.live")

#: Seconds of quiet after a change before the live job is sent (a burst of changes — an undo
#: held down, a quick series of short strokes — sends one job).
DEBOUNCE_S = 0.2
LIVE_LAYER_NAME = "Easel live"
#: Job ids of this mode's jobs that ended or were dropped, remembered to swallow their late events.
_FORGOTTEN = 256
#: Ids of live layers this mode made, remembered to recognise one an undo brings back.
_KNOWN_LAYERS = 256


@dataclass
class _LiveJob:
    job_id: str
    request: GenerationRequest
    crop_mask: bytes | None
    seed: int


@dataclass
class _Shown:
    """The live layer's current final image: what *Keep* copies."""

    job_id: str
    bgra: bytes
    rect: Rect
    seed: int
    request: GenerationRequest


class LiveMode:
    """Live mode on one document at a time. Methods are called on the main thread.

    ``controller`` supplies the connection, the form's settings and model, the canvas host and
    the message line; live mode takes the events of its own jobs from the controller's event router
    (subscribed first), every other event goes on to the controller.
    """

    def __init__(self, controller: Controller, live_host: LiveHost, *, debounce_s: float = DEBOUNCE_S,
                 preview_budget: float = 0.25) -> None:
        self.controller = controller
        self.host = controller.host
        self.live_host = live_host
        self.connection = controller.connection
        self.debounce_s = debounce_s
        self.settings = LiveSettings()
        self.view = LiveView()
        self.stats = LiveStats()
        self.doc: Any = None
        self.layer: Any = None
        self.seed = 0
        self._listeners: list[Callable[[LiveView], None]] = []
        self._stop_watch: Callable[[], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._sending = False
        self._again = False
        self._jobs: dict[str, _LiveJob] = {}
        self._newest: str | None = None
        self._forgotten: dict[str, None] = {}
        self._last_key: tuple | None = None
        self._shown: _Shown | None = None
        self._written: Rect | None = None   # the live layer's area that holds pixels
        self._latest_preview: tuple[str, StepPreview] | None = None
        self._preview_wakeup = asyncio.Event()
        self._painter: asyncio.Task | None = None
        self._draw_lock = asyncio.Lock()
        self._throttle = PreviewThrottle(preview_budget)
        self._ids = itertools.count(1)
        self._session = os.urandom(3).hex()
        self._live_ids: dict[str, None] = {}
        self._suspended = False
        self._missed = False  # something was not drawn while suspended
        self._reading = False
        self._control_rows: tuple = ()
        controller.router.subscribe(self._take, first=True)
        controller.watch_settings(self._form_changed)
        controller.subscribe(self._controller_view)

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

    def set_settings(self, settings: LiveSettings) -> None:
        """Replace the live settings; when live mode is on, a new live image follows (debounced)."""
        settings.check()
        self.settings = settings
        if settings.seed is not None:
            self.seed = settings.seed
        if self.view.enabled:
            self.stats.form_changes += 1
            self._schedule(self.debounce_s)

    def _form_changed(self, form: Any) -> None:
        """The form's settings changed (the painter typed a prompt, picked a model, a LoRA...):
        a new live image, debounced. The form's seed is followed while the live seed is "pick one"."""
        if not self.view.enabled:
            return
        if self.settings.seed is None and form.seed is not None:
            self.seed = form.seed
        self.stats.form_changes += 1
        self._schedule(self.debounce_s)

    def _controller_view(self, view: Any) -> None:
        """A control layer was marked, unmarked or changed: a new live image, debounced. (Reading
        the marks while a live job is planned updates the view too; that read needs no second.)"""
        rows = tuple((c.layer_id, c.spec) for c in view.control_layers)
        if rows == self._control_rows:
            return
        self._control_rows = rows
        if self.view.enabled and not self._reading:
            self.stats.form_changes += 1
            self._schedule(self.debounce_s)

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
            # A live layer of this session that an undo brought back while live was off is taken
            # over rather than joined by a second one.
            known = self.live_host.find_layers(doc, list(self._live_ids))
            for extra in known[:-1]:
                self.live_host.remove_live_layer(doc, extra)
            layer = known[-1] if known else self.live_host.insert_live_layer(doc, LIVE_LAYER_NAME)
            self._remember(doc, layer)
        except (RequestError, HostError) as exc:
            self._status(f"Live could not start: {exc}", error=True)
            return False
        except Exception as exc:
            log.exception("easel: starting live mode failed")
            self._status(wording.unexpected("start live mode", exc), error=True)
            return False
        self.doc, self.layer = doc, layer
        form_seed = self.controller.settings.seed
        self.seed = next(s for s in (self.settings.seed, form_seed, random.randrange(2 ** 32)) if s is not None)
        self._last_key, self._shown, self._written = None, None, None
        if known:
            self._written = self.host.canvas_rect(doc)  # an older image: cleared by the first write
        self._suspended = False
        try:
            self._stop_watch = self.live_host.watch_changes(doc, self.canvas_changed)
        except Exception:
            log.exception("easel: watching the document failed")
            self._stop_watch = None
        self._update(enabled=True, can_keep=False)
        self._status(f"Live is on (seed {self.seed}); paint, and the live layer follows." if self._stop_watch else
                     f"Live is on (seed {self.seed}), but this Krita cannot report changes: use Refresh.")
        self._schedule(0.0)
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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for job_id in list(self._jobs):
            self.connection.cancel(job_id)
            self._forget(job_id)
        self._newest = None
        self._latest_preview = None
        if self._painter is not None:
            self._painter.cancel()
            self._painter = None
        doc, layer = self.doc, self.layer
        self.doc = self.layer = None
        self._shown = self._written = None
        self._suspended = False  # a suspended layer is out of the image already
        try:
            if (doc is not None and layer is not None and self.host.is_open(doc)
                    and self.live_host.live_layer_alive(doc, layer)):
                self.live_host.remove_live_layer(doc, layer)
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
            self._schedule(0.0, force=True)

    # ------------------------------------------------------------------ keep

    def keep(self) -> Any:
        """Copy the current live result into a new paint layer under the live layer (one undo
        step). Returns the new layer, or None (the reason in the status)."""
        shown = self._shown
        if not self.view.enabled or shown is None:
            self._status("There is no live result to keep yet.", error=True)
            return None
        try:
            if self._suspended:
                raise HostError("the image is being saved; keep the live result once it is done")
            if not self.host.is_open(self.doc):
                raise HostError("the live image was closed")
            self._reconcile(self.doc)
            if self.layer is None:  # the painter deleted it: back with the result it shows
                self._write(shown.bgra, shown.rect)
            name = f"{shown.request.layer_name(shown.seed)} (live)"
            layer = self.live_host.keep_live(self.doc, self.layer, name, shown.bgra, shown.rect)
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
        self._schedule(self.debounce_s)

    def _schedule(self, delay: float, force: bool = False) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if force:
            self._last_key = None
        self._timer = self.connection.loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if not self.view.enabled:
            return
        if self._sending:
            self._again = True  # read again once the current read is sent: the newest state wins
            return
        self._sending = True
        self.connection.spawn(self._send(), "live send")

    async def _send(self) -> None:
        try:
            await self._send_once()
        finally:
            self._sending = False
            if self._again and self.view.enabled:
                self._again = False
                self._fire()

    async def _send_once(self) -> None:
        doc = self.doc
        try:
            if doc is None or not self.host.is_open(doc):
                self.disable("Live is off: its image was closed.")
                return
            try:
                active = self.host.active_document()
            except HostError:
                return
            if not active == doc:  # (Krita hands out a new wrapper per call: compare, not identity)
                return  # the painter works on another image; this one did not change
            if self.live_host.busy(doc) or self._suspended:
                self._schedule(self.debounce_s)  # a stroke (or a save) is still going: read once it is done
                return
            self._reconcile(doc)
            model = self.controller.current_model()
            self._reading = True
            try:
                marked, controls, control_layers = self.controller.guidance(doc, model)
            finally:
                self._reading = False
            self.controller.check_loras(model)
            request = self._plan(doc, model, controls)
            rect = request.input_rect
            hidden = [layer for layer in [self.layer] + [c.layer for c in marked] if layer is not None]
            bgra = self.live_host.read_source(doc, rect, hidden)
            crop_mask = None
            if self.host.selection_rect(doc) is not None:
                selection = self.host.read_selection(doc, request.placement.crop)
                crop_mask = None if not selection.strip(b"\xff") else selection
            image = await asyncio.to_thread(self._payload, bgra, rect)
            control_images = await self.controller.read_control_images(doc, request, control_layers)
        except (RequestError, HostError, ControlError) as exc:
            self._status(f"Live: {exc}", error=True)
            return
        except Exception as exc:
            log.exception("easel: reading the canvas for live mode failed")
            self._status(wording.unexpected("read the canvas for live mode", exc), error=True)
            return
        if not self.view.enabled or doc is not self.doc:
            return
        try:
            job, images = request.submit("", image, None, control_images)
        except RequestError as exc:
            self._status(f"Live: {exc}", error=True)
            return
        # The job's parameters name every control image by content id: a stroke on a control
        # layer changes the key, an untouched one does not.
        key = (image.id, request.placement, crop_mask, job.params)
        if key == self._last_key:
            self.stats.unchanged += 1  # nothing the job would see changed: the last image stands
            return
        self._last_key = key
        job_id = f"live-{self._session}-{next(self._ids)}"
        job = replace(job, job_id=job_id)
        self._jobs[job_id] = _LiveJob(job_id, request, crop_mask, self.seed)
        self._newest = job_id
        self.stats.jobs_sent += 1
        self.stats.control_images.append(tuple(p.id for p in control_images))
        del self.stats.control_images[:-100]
        self.connection.submit(job, images)

    def _plan(self, doc: Any, model: ModelInfo | None, controls: tuple = ()) -> GenerationRequest:
        live = self.settings
        schedule = live_schedule(model, live)
        form = self.controller.settings
        settings = replace(form, strength=live.strength, steps=schedule.steps, seed=self.seed, batch_size=1,
                           sampler=schedule.sampler or form.sampler,
                           cfg_scale=schedule.cfg_scale if schedule.cfg_scale is not None else form.cfg_scale)
        canvas = self.host.canvas_rect(doc)
        selection = self.host.selection_rect(doc)
        return plan(Action.REFINE, settings, canvas, selection, self.controller.native_size, live=True,
                    controls=controls)

    # ------------------------------------------------------------------ the live layer

    def _layer_id(self, doc: Any, layer: Any) -> str:
        return self.host.layer_info(doc, layer)[1]

    def _remember(self, doc: Any, layer: Any) -> None:
        self._live_ids[self._layer_id(doc, layer)] = None
        while len(self._live_ids) > _KNOWN_LAYERS:
            self._live_ids.pop(next(iter(self._live_ids)))

    def _insert(self, doc: Any) -> None:
        self.layer = self.live_host.insert_live_layer(doc, LIVE_LAYER_NAME)
        self._remember(doc, self.layer)
        self._written = None

    def _reconcile(self, doc: Any) -> None:
        """Exactly one live layer while live mode is on (main thread; raises HostError).

        The painter may delete the live layer (one undo step) and undo that later, which brings
        the *old* layer back, maybe next to one live mode inserted meanwhile. Krita's undo history
        refers to the restored one, so that one is kept (adopted, and redrawn with the newest live
        image) and any other live layer, which no undo step knows, is taken out without an undo
        step. A deleted live layer comes back with the next live image (:meth:`_write`).
        """
        if self._suspended:
            return
        current = self.layer if self.layer is not None and self.live_host.live_layer_alive(doc, self.layer) else None
        current_id = self._layer_id(doc, current) if current is not None else None
        restored = [layer for layer in self.live_host.find_layers(doc, list(self._live_ids))
                    if self._layer_id(doc, layer) != current_id]
        if restored:
            for other in restored[:-1] + ([current] if current is not None else []):
                self.live_host.remove_live_layer(doc, other)
            self.layer = restored[-1]
            self._written = self.host.canvas_rect(doc)  # it holds an older image: cleared by the next write
            self.stats.layers_adopted += 1
            if self._shown is not None:
                self._write(self._shown.bgra, self._shown.rect)
            self._status("Live: the live layer came back with the undo; it shows the newest live image again.")
        elif current is None and self.layer is not None:
            self.layer, self._written = None, None
            self._status("Live: the live layer was deleted; the next live image brings it back "
                         "(turn Live off to end live mode).")

    def suspend(self, doc: Any) -> bool:
        """Take the live layer out of ``doc`` (no undo step) while the host writes ``doc`` to a
        file, so it is never saved or exported. Returns False when there was nothing to take out
        (live is off, or on for another image). Until :meth:`resume`, nothing is drawn and no
        live job is read; results that arrive meanwhile are shown when it comes back."""
        if not self.view.enabled or self._suspended or self.doc is None or doc is None or not doc == self.doc:
            return False
        try:
            self._reconcile(doc)
            if self.layer is not None and self.live_host.live_layer_alive(doc, self.layer):
                self.live_host.remove_live_layer(doc, self.layer)
        except Exception as exc:
            log.exception("easel: taking the live layer out for a save failed")
            self._status(wording.unexpected("take the live layer out before saving", exc), error=True)
            return False
        self._suspended, self._missed = True, False
        self.stats.suspended += 1
        self._status("Live: the live layer is out of the image while it is saved.")
        return True

    def resume(self) -> None:
        """After the save: the live layer goes back on top with its pixels (no undo step), and
        the newest live image that arrived meanwhile is drawn. Turns live off with a sentence
        when the image was closed meanwhile."""
        if not self._suspended:
            return
        self._suspended = False
        if not self.view.enabled:
            return
        doc = self.doc
        if doc is None or not self.host.is_open(doc):
            self.disable("Live is off: its image was closed.")
            return
        try:
            if self.layer is not None:
                self.layer = self.live_host.insert_live_layer(doc, LIVE_LAYER_NAME, self.layer)
            else:
                self._insert(doc)
            if self._missed and self._shown is not None:
                self._write(self._shown.bgra, self._shown.rect)
            self._missed = False
            self._status("Live is on; the live layer is back (it is never saved with the image).")
        except HostError as exc:
            self._status(f"Live: {exc}", error=True)
        except Exception as exc:
            log.exception("easel: putting the live layer back after a save failed")
            self._status(wording.unexpected("put the live layer back after saving", exc), error=True)

    @staticmethod
    def _payload(bgra: bytes, rect: Rect) -> ImagePayload:
        """Worker thread: BGRA → an RGBA8 payload, its content id computed here too."""
        image = ImagePayload.build(ImageFormat.RGBA8, rect.width, rect.height,
                                   pixels.swap_red_blue_chunked(bgra, rect.width, rect.height))
        image.id
        return image

    # ------------------------------------------------------------------ events

    def _forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)
        self._forgotten[job_id] = None
        while len(self._forgotten) > _FORGOTTEN:
            self._forgotten.pop(next(iter(self._forgotten)))

    def _take(self, event: Any) -> bool:
        """Handle ``event`` if it belongs to a live job; True when it did. Never raises."""
        try:
            return self._dispatch(event)
        except Exception as exc:
            log.exception("easel: live mode could not handle %s", type(event).__name__)
            self._status(wording.unexpected("handle a live result", exc), error=True)
            return True

    def _dispatch(self, event: Any) -> bool:
        if isinstance(event, (Connected, Disconnected)):
            if isinstance(event, Connected) and self.view.enabled:
                self._last_key = None  # jobs open on the old connection may be lost: send the state again
                self._schedule(self.debounce_s)
            return False  # the controller shows the connection state
        job_id = event.ref if isinstance(event, ErrorEvent) else getattr(event, "job_id", None)
        if not isinstance(job_id, str):
            return False
        if job_id in self._forgotten:
            return True
        record = self._jobs.get(job_id)
        if record is None:
            return False
        newest = job_id == self._newest
        if isinstance(event, (JobAccepted, JobStarted)):
            if newest and isinstance(event, JobStarted):
                self._status(f"Live: working (seed {record.seed}).")
        elif isinstance(event, StepPreview):
            if newest:
                self._latest_preview = (job_id, event)
                if self._painter is None or self._painter.done():
                    self._painter = self.connection.spawn(self._paint_previews(), "live previews")
                self._preview_wakeup.set()
        elif isinstance(event, JobResult):
            self._forget(job_id)
            if newest and self.view.enabled:
                self.connection.spawn(self._apply(record, event), f"live apply {job_id}")
            else:
                self.stats.dropped_results.append(job_id)
                del self.stats.dropped_results[:-100]
        elif isinstance(event, JobCancelled):
            self._forget(job_id)
            if newest:
                self._newest = None
                if event.reason != "superseded":
                    self._status(f"Live: the server cancelled the live job ({event.reason}).")
        elif isinstance(event, (JobFailed, ErrorEvent, SubmitFailed, JobLost)):
            self._forget(job_id)
            if newest:
                self._newest = None
                self._last_key = None  # the same state may be sent again
                message = getattr(event, "message", "") or "the connection dropped"
                self._status(f"Live failed: {message}", error=True)
        return True

    async def _paint_previews(self) -> None:
        """Draws the newest job's newest preview whenever one is due (paced by the throttle)."""
        while self.view.enabled:
            await self._preview_wakeup.wait()
            self._preview_wakeup.clear()
            wait = self._throttle.wait_time(self.connection.clock())
            if wait > 0:
                await asyncio.sleep(wait)
            latest, self._latest_preview = self._latest_preview, None
            if latest is None:
                continue
            job_id, preview = latest
            record = self._jobs.get(job_id)
            if record is None or job_id != self._newest:
                continue  # its result is here already, or a newer job took over
            started = self.connection.clock()
            try:
                placement = record.request.placement
                bgra = await asyncio.to_thread(self.controller.canvas.fit_preview, preview, placement, record.crop_mask)
                async with self._draw_lock:
                    if job_id != self._newest or job_id not in self._jobs or not self.view.enabled:
                        continue
                    self._write(bgra, placement.crop)
                self.stats.previews_drawn += 1
                self.stats.previews_from.append(job_id)
                del self.stats.previews_from[:-200]
            except HostError as exc:
                log.info("easel: live preview not drawn: %s", exc)
            finally:
                self._throttle.drawn(started, self.connection.clock())

    def _write(self, bgra: bytes, rect: Rect) -> None:
        doc = self.doc
        if doc is None or not self.host.is_open(doc):
            raise HostError("the image was closed")
        if self._suspended:
            self._missed = True  # the image is being saved; resume() draws the newest result
            return
        if self.layer is None or not self.live_host.live_layer_alive(doc, self.layer):
            self._reconcile(doc)
            if self.layer is None:  # deleted by the painter: it comes back with this image
                self._insert(doc)
                self.stats.layers_recreated += 1
        clear = self._written if self._written is not None and self._written != rect else None
        self.live_host.write_live(doc, self.layer, bgra, rect, clear)
        self._written = rect

    async def _apply(self, record: _LiveJob, result: JobResult) -> None:
        """The newest job's final image onto the live layer (unless a newer job took over meanwhile)."""
        try:
            placement = record.request.placement
            bgra = await asyncio.to_thread(self.controller.canvas.prepare_result, result.images[0], placement,
                                         record.crop_mask)
            async with self._draw_lock:
                if not self.view.enabled or (self._newest is not None and self._newest != record.job_id):
                    self.stats.dropped_results.append(record.job_id)
                    return
                self._write(bgra, placement.crop)
                seed = (result.finished.seeds or (result.finished.seed,))[0]
                self._shown = _Shown(record.job_id, bgra, placement.crop, seed, record.request.with_seed(seed))
                if self._newest == record.job_id:
                    self._newest = None
            self.stats.results_drawn.append(record.job_id)
            del self.stats.results_drawn[:-100]
            self._update(can_keep=True)
            timings = result.finished.timings or {}
            took = f", {timings['worker']:.1f} s" if "worker" in timings else ""
            self._status(f"Live: done (seed {seed}{took}).")
        except HostError as exc:
            self._status(f"Live: {exc}", error=True)
        except Exception as exc:
            log.exception("easel: drawing the live result failed")
            self._status(wording.unexpected("draw the live result", exc), error=True)
