"""Live mode's jobs: from a change to one live job on the server, and from its events to the
live layer.

A change (a stroke, the form, the live settings, a control layer's or region's marking) is
debounced, then the visible image without the live layer and the control layers is read once the
painter's stroke is done, and one live job is sent, guided by the control layers, the reference
layers and the region layers (``live_guides.py``) — unless nothing it would see changed since the
last one.
Latest wins: only the newest job's previews and result reach the live layer (through the
:class:`~.painter.PreviewPainter`), a result that crossed a newer request on the wire is dropped,
and the events of jobs that ended are swallowed.

:class:`LiveJobs` takes the events of its jobs from the plugin's :class:`~.router.EventRouter`
(live mode subscribes it first); it asks the controller through :class:`LiveForm` and live mode
through :class:`LiveShell`. No ``krita`` and no Qt here.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
from dataclasses import dataclass, replace
from typing import Callable, Protocol, Sequence

from . import pixels, wording
from .canvas_io import CanvasIO
from .clientkit.events import SubmitFailed
from .clientkit.links import AsyncLink, LinkEvent
from .control import ControlError, ControlInput
from .geometry import Rect
from .guides import Guides
from .host import CanvasHost, ControlLayer, Doc, HostError, Layer, LiveHost
from .live_guides import LiveGuides
from .live_layer import LiveImage, LiveLayer
from .live_settings import LiveSettings, LiveStats, LiveView, live_schedule
from .painter import PreviewPainter, PreviewTarget
from .protocol import (
    ErrorEvent, ImageFormat, ImagePayload, JobAccepted, JobCancelled, JobFailed, JobResult, JobStarted, ModelInfo,
    StepPreview,
)
from .protocol.transport import Connected, Disconnected, JobLost
from .request import Action, GenerationRequest, GenerationSettings, RequestError, plan
from .router import EventRouter
from .view import ViewState

log = logging.getLogger("easel.krita.live")

#: Job ids of this mode's jobs that ended or were dropped, remembered to swallow their late events.
_FORGOTTEN = 256


@dataclass
class LiveJob:
    """A live job sent and not ended: what its previews and result need."""

    job_id: str
    request: GenerationRequest
    crop_mask: bytes | None
    seed: int


class LiveForm(Protocol):
    """What live mode needs of the rest of the plugin: the controller, seen through this seam."""

    host: CanvasHost
    connection: AsyncLink
    router: EventRouter
    canvas: CanvasIO
    settings: GenerationSettings
    guides: Guides
    view: ViewState

    @property
    def native_size(self) -> int: ...
    def current_model(self) -> ModelInfo | None: ...
    def guidance(self, doc: Doc, model: ModelInfo | None) -> tuple[list[ControlLayer], tuple[ControlInput, ...],
                                                                   tuple[Layer, ...]]: ...
    def check_loras(self, model: ModelInfo | None) -> None: ...
    async def read_control_images(self, doc: Doc, request: GenerationRequest,
                                  layers: Sequence[Layer]) -> list[ImagePayload]: ...
    def watch_settings(self, watcher: Callable[[GenerationSettings], None]) -> None: ...
    def subscribe(self, listener: Callable[[ViewState], None]) -> None: ...


class LiveShell(Protocol):
    """What the live jobs ask of live mode (:class:`~.live.LiveMode`)."""

    settings: LiveSettings
    seed: int
    stats: LiveStats
    debounce_s: float

    @property
    def view(self) -> LiveView: ...
    def notice(self, text: str, error: bool = False) -> None: ...
    def disable(self, reason: str = "") -> None: ...
    def result_shown(self) -> None: ...


class LiveJobs:
    """The live jobs of one live mode. Methods are called on the main thread."""

    def __init__(self, form: LiveForm, live_host: LiveHost, live_layer: LiveLayer, shell: LiveShell, *,
                 preview_budget: float = 0.25) -> None:
        self.form = form
        self.host = form.host
        self.connection = form.connection
        self.live_host = live_host
        self.live_layer = live_layer
        self.shell = shell
        self.stats = shell.stats
        #: Open jobs by id; the newest one sent (None once it ended); the debounce timer; whether a
        #: read is being sent (and whether to read again after it).
        self.open: dict[str, LiveJob] = {}
        self._newest: str | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.sending = False
        self._again = False
        #: The live layer's current final image (what *Keep* copies).
        self.shown: LiveImage | None = None
        #: True while the control layers are read for a job (their view update needs no new job).
        self.reading = False
        self.session = os.urandom(3).hex()
        self._ids = itertools.count(1)
        self._forgotten: dict[str, None] = {}
        self._last_key: tuple | None = None
        #: Draws the newest live job's previews, and its result after them, into the live layer.
        self._painter = PreviewPainter(form.canvas, self.connection.spawn, self.connection.clock,
                                       budget=preview_budget, what="live previews")
        #: The reference and region layers of the live jobs, and what the model cannot take of them.
        self.guides = LiveGuides(form, shell.notice)

    def reset(self) -> None:
        """Live mode turned on: no live image shown yet, and the next read is sent whatever it holds."""
        self._last_key, self.shown = None, None

    def stop(self) -> None:
        """Live mode turned off: nothing more is sent or drawn; the open live jobs are cancelled
        on the server (their late events are swallowed)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for job_id in list(self.open):
            self.connection.cancel(job_id)
            self._forget(job_id)
        self._newest = None
        self._painter.stop()
        self.shown = None

    def schedule(self, delay: float, force: bool = False) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if force:
            self._last_key = None
        self.timer = self.connection.loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self.timer = None
        if not self.shell.view.enabled:
            return
        if self.sending:
            self._again = True  # read again once the current read is sent: the newest state wins
            return
        self.sending = True
        self.connection.spawn(self._send(), "live send")

    async def _send(self) -> None:
        try:
            await self._send_once()
        finally:
            self.sending = False
            if self._again and self.shell.view.enabled:
                self._again = False
                self._fire()

    async def _send_once(self) -> None:
        doc = self.live_layer.doc
        try:
            if doc is None or not self.host.is_open(doc):
                self.shell.disable("Live is off: its image was closed.")
                return
            try:
                active = self.host.active_document()
            except HostError:
                return
            if not active == doc:  # (Krita hands out a new wrapper per call: compare, not identity)
                return  # the painter works on another image; this one did not change
            if self.live_host.busy(doc) or self.live_layer.suspended:
                self.schedule(self.shell.debounce_s)  # a stroke (or a save) is still going: read once it is done
                return
            self.live_layer.reconcile(self.shown)
            model = self.form.current_model()
            self.reading = True
            try:
                marked, controls, control_layers = self.form.guidance(doc, model)
            finally:
                self.reading = False
            self.form.check_loras(model)
            request, guide_layers = self.guides.plan(self._plan(doc, model, controls), doc, marked, model)
            rect = request.input_rect
            hidden = [layer for layer in [self.live_layer.layer] + [c.layer for c in marked] if layer is not None]
            bgra = self.live_host.read_source(doc, rect, hidden)
            crop_mask = None
            if self.host.selection_rect(doc) is not None:
                selection = self.host.read_selection(doc, request.placement.crop)
                crop_mask = None if not selection.strip(b"\xff") else selection
            image = await asyncio.to_thread(self._payload, bgra, rect)
            control_images = await self.form.read_control_images(doc, request, control_layers)
            job, images = request.submit("", image, None, control_images)
            job, images = await self.form.guides.attach(doc, request, guide_layers, job, images)
        except (RequestError, HostError, ControlError) as exc:
            self.shell.notice(f"Live: {exc}", error=True)
            return
        except Exception as exc:
            log.exception("easel: reading the canvas for live mode failed")
            self.shell.notice(wording.unexpected("read the canvas for live mode", exc), error=True)
            return
        if not self.shell.view.enabled or doc is not self.live_layer.doc:
            return
        # The job's parameters name every control image, reference and region mask by content id:
        # a stroke on such a layer changes the key, an untouched one does not.
        key = (image.id, request.placement, crop_mask, job.params)
        if key == self._last_key:
            self.stats.unchanged += 1  # nothing the job would see changed: the last image stands
            return
        self._last_key = key
        job_id = f"live-{self.session}-{next(self._ids)}"
        job = replace(job, job_id=job_id)
        self.open[job_id] = LiveJob(job_id, request, crop_mask, self.shell.seed)
        self._newest = job_id
        self.stats.jobs_sent += 1
        self.stats.control_images.append(tuple(p.id for p in control_images))
        del self.stats.control_images[:-100]
        self.connection.submit(job, images)

    def _plan(self, doc: Doc, model: ModelInfo | None, controls: tuple[ControlInput, ...] = ()) -> GenerationRequest:
        live = self.shell.settings
        schedule = live_schedule(model, live)
        form = self.form.settings
        settings = replace(form, strength=live.strength, steps=schedule.steps, seed=self.shell.seed, batch_size=1,
                           sampler=schedule.sampler or form.sampler,
                           cfg_scale=schedule.cfg_scale if schedule.cfg_scale is not None else form.cfg_scale)
        canvas = self.host.canvas_rect(doc)
        selection = self.host.selection_rect(doc)
        return plan(Action.REFINE, settings, canvas, selection, self.form.native_size, live=True,
                    controls=controls)

    @staticmethod
    def _payload(bgra: bytes, rect: Rect) -> ImagePayload:
        """Worker thread: BGRA → an RGBA8 payload, its content id computed here too."""
        image = ImagePayload.build(ImageFormat.RGBA8, rect.width, rect.height,
                                   pixels.swap_red_blue_chunked(bgra, rect.width, rect.height))
        image.id
        return image

    # ------------------------------------------------------------------ events

    def _forget(self, job_id: str) -> None:
        self.open.pop(job_id, None)
        self._forgotten[job_id] = None
        while len(self._forgotten) > _FORGOTTEN:
            self._forgotten.pop(next(iter(self._forgotten)))

    def take(self, event: LinkEvent) -> bool:
        """Handle ``event`` if it belongs to a live job; True when it did. Never raises."""
        try:
            return self._dispatch(event)
        except Exception as exc:
            log.exception("easel: live mode could not handle %s", type(event).__name__)
            self.shell.notice(wording.unexpected("handle a live result", exc), error=True)
            return True

    def _dispatch(self, event: LinkEvent) -> bool:
        if isinstance(event, (Connected, Disconnected)):
            if isinstance(event, Connected) and self.shell.view.enabled:
                self._last_key = None  # jobs open on the old connection may be lost: send the state again
                self.schedule(self.shell.debounce_s)
            return False  # the controller shows the connection state
        job_id = event.ref if isinstance(event, ErrorEvent) else getattr(event, "job_id", None)
        if not isinstance(job_id, str):
            return False
        if job_id in self._forgotten:
            return True
        record = self.open.get(job_id)
        if record is None:
            return False
        newest = job_id == self._newest
        if isinstance(event, (JobAccepted, JobStarted)):
            if newest and isinstance(event, JobStarted):
                self.shell.notice(f"Live: working (seed {record.seed}).")
        elif isinstance(event, StepPreview):
            if newest:
                self._painter.offer(event, self._preview_target(record))
        elif isinstance(event, JobResult):
            self._forget(job_id)
            if newest and self.shell.view.enabled:
                self.connection.spawn(self._apply(record, event), f"live apply {job_id}")
            else:
                self.stats.dropped_results.append(job_id)
                del self.stats.dropped_results[:-100]
        elif isinstance(event, JobCancelled):
            self._forget(job_id)
            if newest:
                self._newest = None
                if event.reason != "superseded":
                    self.shell.notice(f"Live: the server cancelled the live job ({event.reason}).")
        elif isinstance(event, (JobFailed, ErrorEvent, SubmitFailed, JobLost)):
            self._forget(job_id)
            if self.guides.learn(record.request, event):  # the model takes no references/regions
                if newest:
                    self._newest = None
                    self.schedule(0.0, force=True)  # the same state again, without them
            elif newest:
                self._newest = None
                self._last_key = None  # the same state may be sent again
                message = getattr(event, "message", "") or "the connection dropped"
                self.shell.notice(f"Live failed: {message}", error=True)
        return True

    def _preview_target(self, record: LiveJob) -> PreviewTarget:
        """A live job's previews go into the live layer while it is the newest job."""
        job_id, crop = record.job_id, record.request.placement.crop

        def wanted() -> bool:
            return self.shell.view.enabled and job_id == self._newest and job_id in self.open

        async def draw(bgra: bytes) -> None:
            if not wanted():
                return  # its result is here already, or a newer job took over
            self._write(bgra, crop)
            self.stats.previews_drawn += 1
            self.stats.previews_from.append(job_id)
            del self.stats.previews_from[:-200]

        return PreviewTarget(record.request.placement, record.crop_mask, wanted, draw)

    def _write(self, bgra: bytes, rect: Rect) -> None:
        self.live_layer.write(bgra, rect, self.shown)

    async def _apply(self, record: LiveJob, result: JobResult) -> None:
        """The newest job's final image onto the live layer (unless a newer job took over meanwhile)."""
        try:
            placement = record.request.placement
            seed = (result.finished.seeds or (result.finished.seed,))[0]

            def wanted() -> bool:
                return self.shell.view.enabled and (self._newest is None or self._newest == record.job_id)

            async def draw(bgra: bytes) -> None:
                self._write(bgra, placement.crop)
                self.shown = LiveImage(record.job_id, bgra, placement.crop, seed, record.request.with_seed(seed))
                if self._newest == record.job_id:
                    self._newest = None

            target = PreviewTarget(placement, record.crop_mask, wanted, draw)
            if not await self._painter.paint_result(result.images[0], target):
                self.stats.dropped_results.append(record.job_id)
                return
            self.stats.results_drawn.append(record.job_id)
            del self.stats.results_drawn[:-100]
            self.shell.result_shown()
            timings = result.finished.timings or {}
            took = f", {timings['worker']:.1f} s" if "worker" in timings else ""
            left_out = f"; {self.guides.left_out}" if self.guides.left_out else ""
            self.shell.notice(f"Live: done (seed {seed}{took}){left_out}.")
        except HostError as exc:
            self.shell.notice(f"Live: {exc}", error=True)
        except Exception as exc:
            log.exception("easel: drawing the live result failed")
            self.shell.notice(wording.unexpected("draw the live result", exc), error=True)
