"""The plugin's model: observable state and the actions a painter can take.

The docker shows :class:`ViewState` and calls the controller's methods; Krita actions call them too.
The controller plans one :class:`~.request.GenerationRequest` per action, reads the canvas through
a :class:`CanvasHost` (the Krita adapter), sends the job over a :class:`~.connection.Connection`,
draws step previews, places results as new layers and records them in the :class:`~.history.History`.

No ``krita`` and no Qt here: the host is an interface, and everything runs on the connection's
asyncio loop, which the host ticks on its main thread. Pixel conversions that take long on a large
canvas (channel swap, crop, mask, resampling) run on worker threads; reading and writing layers
happen on the main thread in strips, so no single step holds the UI for long.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

from . import pixels, wording
from .clientkit.book import Ended, Finished, JobBook, OpenJob, Phase, Previewed, Progressed
from .clientkit.events import ConnectFailed
from .clientkit.links import AsyncLink
from .clientkit.book import EndKind
from .control import ControlError, ControlInput, ControlSpec, plan_controls, preprocessors_for
from .geometry import Placement, PreviewThrottle, Rect
from .history import APPLIED, LOST, NOT_APPLIED, History, HistoryEntry, settings_for
from .batch import place_batch
from .canvas_io import STRIP_BYTES, CanvasIO
from .big_canvas import BigCanvas
from .documents import DocumentHistory, Documents
from .guides import Guides
from .loras import unfit as unfit_loras
from .protocol import (
    ErrorEvent, ImageFormat, ImagePayload, JobResult, ModelInfo, ModelList, Refused, StepPreview,
)
from .protocol.transport import Connected, Disconnected
from .request import Action, GenerationRequest, GenerationSettings, RequestError, plan
from .host import CanvasHost, ControlLayer, HostError, NotPlaced
from .router import EventRouter
from .view import Stats, ViewState, control_rows, usable_models
from .settings import refusal_status

log = logging.getLogger("easel.krita")

#: A job whose result arrives before any preview was drawn still shows one preview first, when its
#: area is at most this many pixels (above it, drawing a preview only to overwrite it costs too much).
FIRST_PREVIEW_MAX_AREA = 1024 * 1024


def _preview_placement(request: GenerationRequest) -> Placement:
    """Where previews are drawn: the result's placement, except for Upscale, whose result lands on
    the scaled document — its previews cover the area it reads, before scaling."""
    if request.action is Action.UPSCALE and request.source is not None:
        return Placement(request.source, request.source)
    return request.placement


@dataclass
class JobRecord:
    """What the controller keeps of an open job: its request and what it placed on the canvas. Its
    place in the job book (phase, step, queue position) is ``ticket``."""

    job_id: str
    request: GenerationRequest
    doc: Any
    crop_mask: bytes | None
    started: float = 0.0
    ticket: OpenJob["JobRecord"] | None = None
    preview_layer: Any = None
    canvas_grown: bool = False
    latest_preview: StepPreview | None = None
    previews_received: int = 0
    previews_drawn: int = 0
    preview_wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    #: Held while a preview is drawn, so a result never lands on a half-written preview.
    draw_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    painter: asyncio.Task | None = None
    throttle: PreviewThrottle = field(default_factory=PreviewThrottle)
    cancel_requested: bool = False
    #: The layers of ``request.controls``, in order; every marked layer (kept out of the visible
    #: image the job reads); the layer a control layer is made from (None: the visible image).
    control_layers: tuple[Any, ...] = ()
    exclude_layers: tuple[Any, ...] = ()
    source_layer: Any = None
    #: The reference and region layers of ``request.references`` / ``request.regions`` (guides.py).
    guide_layers: tuple[Any, ...] = ()
    #: A big-canvas Generate's refine passes (big_canvas.py), while it has any.
    refining: Any = None

    @property
    def phase(self) -> Phase:
        return self.ticket.phase if self.ticket is not None else Phase.PREPARING


class Controller:
    """One per Krita window set (the extension owns it). Methods are called on the main thread."""

    def __init__(self, host: CanvasHost, connection: AsyncLink, history: History | None = None, *,
                 clock: Callable[[], float] = time.monotonic, strip_bytes: int = STRIP_BYTES,
                 preview_budget: float = 0.25) -> None:
        self.host = host
        self.connection = connection
        #: Where the link's events go: live mode subscribes before the controller (see router.py).
        self.router = EventRouter()
        self.router.subscribe(self._take)
        connection.on_event = self.router
        #: Every open job, from the click to its end (the link resumes the sent ones on a new client).
        self.book: JobBook[JobRecord] = JobBook()
        connection.open_jobs = self._sent_jobs
        # One history per open document (found by ``==``, as Krita's document wrappers compare),
        # restored from the document's annotation when first seen. Results whose image was closed
        # (and anything while no image is open) wait in the loose history; the next image shown
        # takes them in, so "Apply to current image" finds them there.
        self.documents = Documents(host, history if history is not None else History(), connection.spawn,
                                   self._measure, clock)
        self._shown: History | None = None
        self.clock = clock
        #: Reads and writes the documents' pixels in strips (canvas_io.py).
        self.canvas = CanvasIO(host, self._measure, strip_bytes=strip_bytes, clock=clock)
        #: Reference and region layers: planned with each guided job, read when it is sent (guides.py).
        self.guides = Guides(host, self.canvas)
        #: A Generate much larger than the model's size: first image, then tiled refine passes.
        self.big_canvas = BigCanvas(self)
        self.settings = GenerationSettings()
        self.view = ViewState()
        self.stats = Stats()
        self.url = ""
        self.token = ""
        self._listeners: list[Callable[[ViewState], None]] = []
        self._history_listeners: list[Callable[[History], None]] = []
        self._settings_listeners: list[Callable[[GenerationSettings], None]] = []
        self._settings_watchers: list[Callable[[GenerationSettings], None]] = []
        self._ids = itertools.count(1)
        self._session = os.urandom(3).hex()
        self._job_outcome = ""  # the last "lost"/"not placed" sentence: a reconnect does not clear it
        self.preview_budget = preview_budget

    @property
    def jobs(self) -> dict[str, JobRecord]:
        """The open jobs' records, oldest first."""
        return {job_id: job.context for job_id, job in self.book.jobs.items()}

    def _sent_jobs(self) -> list[str]:
        return [job_id for job_id, job in self.book.jobs.items() if job.phase is not Phase.PREPARING]

    # ------------------------------------------------------------------ observers

    def subscribe(self, listener: Callable[[ViewState], None]) -> None:
        self._listeners.append(listener)
        listener(self.view)

    def subscribe_history(self, listener: Callable[[History], None]) -> None:
        """``listener`` hears the history the docker shows: the active image's, whenever it
        changes or another image becomes active (see :meth:`follow_active_document`)."""
        self._history_listeners.append(listener)
        listener(self.history)

    # ------------------------------------------------------------------ histories per document

    @property
    def history(self) -> History:
        """The active image's history (restored from the image's file the first time it is seen),
        or, with no usable image open, the loose history."""
        try:
            doc = self.host.active_document()
        except Exception:  # no image, or one Easel cannot work on: nothing of its own to show
            return self.documents.loose
        return self.documents.known(doc).history

    def follow_active_document(self) -> None:
        """Show the active image's history when another image became active (the docker calls
        this when the canvas changes, and now and then). Never raises."""
        try:
            history = self.history
            if history is not self._shown:
                self._history_changed()
        except Exception:
            log.exception("easel: following the active image's history failed")

    def flush_history(self, doc: Any = None) -> None:
        """Write every history change not yet in its document now (the save guard calls this
        before Krita saves; see :meth:`Documents.flush`). Never raises."""
        self.documents.flush(doc)

    def subscribe_settings(self, listener: Callable[[GenerationSettings], None]) -> None:
        """``listener`` hears when the controller changes the form's settings (reuse seed, copy settings)."""
        self._settings_listeners.append(listener)

    def watch_settings(self, watcher: Callable[[GenerationSettings], None]) -> None:
        """``watcher`` hears every replacement of the form's settings, the painter's typing included
        (live mode follows the prompt, the model and the LoRAs this way)."""
        self._settings_watchers.append(watcher)

    def set_settings(self, settings: GenerationSettings, *, notify: bool = True) -> None:
        """Replace the form's settings (the docker calls this with ``notify=False`` as the painter
        types: its own form needs no reload, but :meth:`watch_settings` watchers hear it)."""
        changed = settings != self.settings
        self.settings = settings
        listeners = (list(self._settings_listeners) if notify else []) + (list(self._settings_watchers) if changed else [])
        for listener in listeners:
            try:
                listener(settings)
            except Exception:
                log.exception("easel: a settings listener failed")

    def _update(self, **changes: Any) -> None:
        self.view = replace(self.view, **changes)
        for listener in list(self._listeners):
            try:
                listener(self.view)
            except Exception:
                log.exception("easel: a view listener failed")

    def _history_changed(self, changed: DocumentHistory | None = None) -> None:
        """Tell the docker; a document's history that changed is stored in it."""
        self.documents.store(changed)
        shown = self._shown = self.history
        self._update(history_size=len(shown))
        for listener in list(self._history_listeners):
            try:
                listener(shown)
            except Exception:
                log.exception("easel: a history listener failed")

    def say(self, text: str, error: bool = False) -> None:
        """Show ``text`` (one plain sentence or two) in the docker's message line."""
        text = wording.sentence(text)
        (log.warning if error else log.info)("easel: %s", text)
        self._update(message=text, message_is_error=error)

    def _measure(self, what: str, started: float) -> None:
        self.stats.note(what, self.clock() - started)

    # ------------------------------------------------------------------ connection

    def connect(self, url: str, token: str = "") -> None:
        """(Re)connect; progress and errors arrive in the view state."""
        self.url, self.token = url, token
        self._update(connection="connecting", status=f"Connecting to {url}…")
        self.connection.connect(url, token)

    @property
    def native_size(self) -> int:
        model = self.current_model()
        return model.default_width if model is not None else 512

    def current_model(self) -> ModelInfo | None:
        models = self.view.models
        for model in models:
            if model.id == self.settings.model:
                return model
        return models[0] if models else None

    # ------------------------------------------------------------------ actions

    def start(self, action: Action, live: bool = False) -> str | None:
        """Plan and send ``action`` on the active document. Returns the job id, or ``None`` when
        it cannot start (the reason is in the view's message). Never raises."""
        try:
            doc = self.host.active_document()
            canvas = self.host.canvas_rect(doc)
            selection = self.host.selection_rect(doc) if action is not Action.EXPAND else None
            model = self.current_model()
            if model is not None and model.tasks and action.task not in model.tasks:
                raise RequestError(f"the model {model.name or model.id} cannot {action.label.lower()} "
                                   f"({action.task}); pick another model in the Easel docker")
            if action is Action.PREPROCESS:
                raise RequestError("use make_control_layer() to make a control layer")
            marked = self._marked_layers(doc)
            controls, control_layers = self._plan_controls(marked, model) if action.guided else ((), ())
            self.check_loras(model)
            request = plan(action, self.settings, canvas, selection, self.native_size, live=live, controls=controls)
            request, guide_layers = self.guides.plan(request, doc, marked, model, self.view.server_models,
                                                     self.connection.welcome)
        except (RequestError, HostError, ControlError) as exc:
            self.say(str(exc), error=True)
            return None
        except Exception as exc:
            log.exception("easel: planning %s failed", action.value)
            self.say(wording.unexpected(f"start {action.label}", exc), error=True)
            return None
        return self._launch(request, doc, control_layers=control_layers,
                            exclude_layers=tuple(c.layer for c in marked), guide_layers=guide_layers)

    def _launch(self, request: GenerationRequest, doc: Any, **record_fields: Any) -> str:
        """Record a planned job and start sending it; returns its id."""
        job_id = f"krita-{self._session}-{next(self._ids)}"
        record = JobRecord(job_id, request, doc, None, started=self.clock(),
                           throttle=PreviewThrottle(self.preview_budget), **record_fields)
        record.ticket = self.book.open(job_id, record)
        record.refining = self.big_canvas.track(request, job_id)
        self._refresh_progress()
        self.connection.spawn(self._send(record), f"send {job_id}")
        return job_id

    def cancel_all(self) -> int:
        """Cancel every open job; returns how many were asked to stop."""
        count = 0
        for record in list(self.jobs.values()):
            record.cancel_requested = True
            if record.phase is Phase.PREPARING:
                continue  # _send sees the flag and stops before sending
            if self.connection.cancel(record.job_id):
                count += 1
            elif record.phase is not Phase.APPLYING:
                self._end(record, wording.cancelled(record.request.action.label, "requested"), error=False)
                count += 1
        if not count and not self.jobs:
            self.say("Nothing to cancel.")
        return count

    def apply_history(self, entry_id: int, index: int = 0) -> None:
        """Add history image ``index`` of entry ``entry_id`` again as a new layer on the active
        document, exactly as it was first placed."""
        try:
            entry = self.history.get(entry_id)
            if entry.status == LOST:
                raise RequestError(f"that job was lost ({entry.detail or 'no result came'}); nothing to apply. "
                                   "Use Copy settings and run it again")
            if not entry.has_images:
                raise RequestError("that result's image is no longer kept (the history keeps the newest ones); "
                                   "use Reuse seed to make it again")
            if not 0 <= index < len(entry.images):
                raise RequestError(f"that result has {len(entry.images)} image(s)")
            doc = self.host.active_document()
        except (RequestError, HostError, KeyError) as exc:
            self.say(str(exc.args[0]) if isinstance(exc, KeyError) else str(exc), error=True)
            return
        self.connection.spawn(self._apply_again(entry, index, doc), f"apply history {entry_id}")

    def discard_history(self, entry_id: int) -> None:
        """Drop a result from the active image's history (its layers on the canvas stay)."""
        try:
            doc = self.host.active_document()
            known = self.documents.known(doc)
            known.history.discard(entry_id)
        except (HostError, KeyError) as exc:
            self.say(str(exc.args[0]) if isinstance(exc, KeyError) else str(exc), error=True)
            return
        self._history_changed(known)

    def reuse_seed(self, entry_id: int, index: int = 0) -> None:
        try:
            seed = self.history.get(entry_id).seed_of(index)
        except (KeyError, IndexError) as exc:
            self.say(str(exc.args[0]), error=True)
            return
        self.set_settings(replace(self.settings, seed=seed))
        self.say(f"Seed {seed} set; Generate again to vary other settings with the same seed.")

    def copy_settings(self, entry_id: int, index: int = 0) -> None:
        try:
            settings = settings_for(self.history.get(entry_id), index)
        except (KeyError, IndexError) as exc:
            self.say(str(exc.args[0]), error=True)
            return
        self.set_settings(settings)
        self.say("Settings copied from the history into the form.")

    # ------------------------------------------------------------------ control layers

    def refresh_control_layers(self) -> tuple[ControlLayer, ...]:
        """Read the active document's control layers into the view (the docker lists them).
        Never raises; with no usable document the list is empty."""
        try:
            layers = tuple(self.host.control_layers(self.host.active_document()))
        except HostError:
            layers = ()
        except Exception:
            log.exception("easel: reading the control layers failed")
            layers = ()
        if control_rows(layers) != control_rows(self.view.control_layers):
            self._update(control_layers=layers)
        return layers

    def mark_active_layer(self, spec: ControlSpec) -> bool:
        """Mark the layer the painter selected as a control layer (or change its marking). The
        marking is saved with the document. Returns whether it was marked; the reason is said."""
        try:
            doc = self.host.active_document()
            layer = self.host.active_layer(doc)
            if layer is None:
                raise HostError("select the layer to use as a control layer first")
            name, _ = self.host.layer_info(doc, layer)
            if name.startswith("Easel preview"):
                raise HostError("that is Easel's preview of a running job; pick a layer of your own")
            self.host.mark_control(doc, layer, spec)
        except (HostError, ControlError) as exc:
            self.say(str(exc), error=True)
            return False
        self.refresh_control_layers()
        self.say(f"{name} is a control layer: {spec.describe()}. Its pixels guide Generate, Refine, Fill and Expand.")
        return True

    def set_control(self, layer_id: str, spec: ControlSpec | None) -> None:
        """Change (``None``: remove) the marking of the control layer ``layer_id`` of the active
        document. The layer itself stays as it is."""
        try:
            doc = self.host.active_document()
            match = next((c for c in self.host.control_layers(doc) if c.layer_id == layer_id), None)
            if match is None:
                raise HostError("that control layer is no longer in this image")
            self.host.mark_control(doc, match.layer, spec)
        except (HostError, ControlError) as exc:
            self.say(str(exc), error=True)
            return
        self.refresh_control_layers()
        if spec is None:
            self.say(f"{match.name} is no longer a control layer.")

    def make_control_layer(self, type_id: str, preprocessor: str = "", from_layer: bool = False) -> str | None:
        """Run the server's preprocessor for ``type_id`` (or the one named) on the visible image
        (or, with ``from_layer``, the selected layer) inside the selection (or the canvas), and add
        the result as a new layer marked as a control layer of that type: one undo step, and the
        painter can touch it up. Returns the job id, or ``None`` (the reason is said)."""
        try:
            doc = self.host.active_document()
            if not preprocessor:
                choices = preprocessors_for(type_id, self.view.preprocessors)
                if not choices:
                    raise RequestError(f"the server has no preprocessor that makes {type_id} images; paint the "
                                       f"control layer yourself and mark it with Use selected layer")
                preprocessor = choices[0]
            source_layer = None
            if from_layer:
                source_layer = self.host.active_layer(doc)
                if source_layer is None:
                    raise HostError("select the layer to make the control layer from")
            marked = self._marked_layers(doc)
            request = plan(Action.PREPROCESS, self.settings, self.host.canvas_rect(doc), self.host.selection_rect(doc),
                           self.native_size, preprocessor=preprocessor, control_type=type_id)
        except (RequestError, HostError, ControlError) as exc:
            self.say(str(exc), error=True)
            return None
        except Exception as exc:
            log.exception("easel: planning a control layer failed")
            self.say(wording.unexpected("make a control layer", exc), error=True)
            return None
        return self._launch(request, doc, source_layer=source_layer, exclude_layers=tuple(c.layer for c in marked))

    def _marked_layers(self, doc: Any) -> list[ControlLayer]:
        layers = list(self.host.control_layers(doc))
        if control_rows(layers) != control_rows(self.view.control_layers):
            try:
                if doc == self.host.active_document():
                    self._update(control_layers=tuple(layers))
            except HostError:
                pass
        return layers

    def guidance(self, doc: Any, model: ModelInfo | None) -> tuple[list[ControlLayer], tuple[ControlInput, ...],
                                                                   tuple[Any, ...]]:
        """``doc``'s control layers (all marked ones: none is part of the picture), the control
        inputs a guided job on ``model`` sends, and the layers of those inputs in the same order.
        Raises :class:`ControlError` (a sentence) when the server has no fitting ControlNet."""
        marked = self._marked_layers(doc)
        controls, layers = self._plan_controls(marked, model)
        return marked, controls, layers

    def _plan_controls(self, marked: Sequence[ControlLayer],
                       model: ModelInfo | None) -> tuple[tuple[ControlInput, ...], tuple[Any, ...]]:
        """The job's control inputs (a ControlNet picked per layer for the model's family) and
        their layers, in the same order."""
        if not marked:
            return (), ()
        family = model.family if model is not None else ""
        inputs = plan_controls([(c.name, c.layer_id, c.spec) for c in marked], self.view.server_models, family, model)
        by_id = {c.layer_id: c.layer for c in marked}
        return inputs, tuple(by_id[i.layer_id] for i in inputs)

    def check_loras(self, model: ModelInfo | None) -> None:
        """Refuse, with a sentence, LoRAs the server does not list for the model's family."""
        if not self.settings.loras or not self.view.loras_listed:
            return
        family = model.family if model is not None else ""
        missing = unfit_loras(self.settings.loras, self.view.loras, family)
        if missing:
            raise RequestError(f"the LoRA {missing[0]} is not on this server for {family or 'this'} models; "
                               f"remove it from the LoRA list in the Easel docker")

    # ------------------------------------------------------------------ sending

    async def _read_source(self, record: JobRecord, rect: Rect) -> bytes:
        return await self.canvas.read_source(record.doc, rect, record.source_layer, record.exclude_layers)

    async def read_control_images(self, doc: Any, request: GenerationRequest,
                                  layers: Sequence[Any]) -> list[ImagePayload]:
        """Each control layer's pixels for ``request`` (:meth:`CanvasIO.read_control_images`;
        ``layers`` as :meth:`guidance` gives them). Raises :class:`HostError`."""
        return await self.canvas.read_control_images(doc, request, layers)

    async def _send(self, record: JobRecord) -> None:
        request, doc = record.request, record.doc
        try:
            started = self.clock()
            self.host.settle(doc)
            self._measure("settle document", started)
            image = mask = None
            rect = request.input_rect
            if request.needs_image:
                bgra = await self._read_source(record, rect)
                rgba = await asyncio.to_thread(pixels.swap_red_blue_chunked, bgra, rect.width, rect.height)
                image = ImagePayload.build(ImageFormat.RGBA8, rect.width, rect.height, rgba)
                del bgra
            control_images = await self.read_control_images(doc, request, record.control_layers) if request.controls else []
            crop = request.placement.crop
            # Upscale keeps the selection's bounding box (its crop is on the scaled canvas).
            if request.action not in (Action.EXPAND, Action.UPSCALE) and self.host.selection_rect(doc) is not None:
                started = self.clock()
                selection = self.host.read_selection(doc, crop)
                self._measure("read selection", started)
                record.crop_mask = None if not selection.strip(b"\xff") else selection
            if request.needs_mask:
                started = self.clock()
                region_mask = self.host.read_selection(doc, rect)
                self._measure("read selection", started)
                if pixels.mask_is_empty(region_mask):
                    raise RequestError("the selection is empty; select the area to fill")
                mask = ImagePayload.build(ImageFormat.GREY8, rect.width, rect.height, region_mask)
            job, images = request.submit(record.job_id, image, mask, control_images)
            job, images = await self.guides.attach(doc, request, record.guide_layers, job, images)
        except (RequestError, HostError) as exc:
            self._end(record, str(exc), error=True)
            return
        except Exception as exc:
            log.exception("easel: preparing %s failed", record.job_id)
            self._end(record, wording.unexpected(f"read the canvas for {request.action.label}", exc), error=True)
            return
        if record.cancel_requested:
            self._end(record, wording.cancelled(request.action.label, "requested"), error=False)
            return
        self.book.sent(record.job_id, job)
        self.stats.jobs_submitted += 1
        self._refresh_progress()
        self.connection.submit(job, images)

    # ------------------------------------------------------------------ events

    def _take(self, event: Any) -> bool:
        self.handle_event(event)
        return True

    def handle_event(self, event: Any) -> None:
        """An event from the link (every one no earlier subscriber took), on the main thread. Never raises."""
        try:
            self._dispatch(event)
        except Exception as exc:
            log.exception("easel: handling %s failed", type(event).__name__)
            self.say(wording.unexpected("handle a message from the server", exc), error=True)

    def _dispatch(self, event: Any) -> None:
        if isinstance(event, Connected):
            w = event.welcome
            caps = w.capabilities
            self._update(connection="online", models=usable_models(caps.models), samplers=tuple(caps.samplers),
                         status=wording.connected(w.server_name, w.server_version, caps.device, w.demo, w.notice),
                         server_models=tuple(caps.models), preprocessors=tuple(caps.preprocessors))
            # A connection error is over now; what happened to a job (lost, not placed) is not.
            if (self.view.message_is_error and "server" in self.view.message.lower()
                    and self.view.message != self._job_outcome):
                self._update(message="", message_is_error=False)
            self.connection.list_models()  # the LoRAs come with the model list
            self._refresh_progress()
            return
        if isinstance(event, ConnectFailed):
            self._update(connection="offline" if event.retry_in is None else "connecting",
                         status=refusal_status(event.url, self.token, event.reason) or
                         wording.cannot_connect(event.url, event.retry_in))
            return
        if isinstance(event, Disconnected):
            self._update(connection="reconnecting" if event.will_retry else "offline",
                         status=wording.disconnected(self.url, event.will_retry))
        elif isinstance(event, Refused):
            self._update(connection="offline", status=wording.refused(event.message))
            return
        elif isinstance(event, ModelList):
            self._update(models=usable_models(event.models), server_models=tuple(event.models),
                         loras=tuple(event.loras), loras_listed=True)
            return
        elif isinstance(event, ErrorEvent) and event.ref not in self.book:
            self.say(wording.server_error(event.code, event.message, event.log_id), error=True)
            return
        for outcome in self.book.handle(event):
            self._follow(outcome)
        self._refresh_progress()

    def _follow(self, outcome: Progressed[JobRecord] | Previewed[JobRecord] | Finished[JobRecord] | Ended[JobRecord]) -> None:
        """Apply what the job book made of an event to the job's record and the canvas."""
        record = outcome.job.context
        if isinstance(outcome, Progressed):
            if record.request.effective_seed is None and outcome.job.seed is not None:
                record.request = record.request.with_seed(outcome.job.seed)
        elif isinstance(outcome, Previewed):
            record.latest_preview = outcome.preview
            record.previews_received += 1
            if record.painter is None:
                record.painter = self.connection.spawn(self._paint_previews(record), f"previews {record.job_id}")
            record.preview_wakeup.set()
        elif isinstance(outcome, Finished):
            result = self.big_canvas.next_pass(record, outcome.result)  # None: a refine pass was sent
            if result is not None:
                self.connection.spawn(self._apply_result(record, result), f"apply {record.job_id}")
        elif outcome.kind is EndKind.LOST:
            self._lose(record, outcome.reason)
        else:
            label = record.request.action.label
            self._end(record, outcome.sentence(label), error=outcome.kind is EndKind.FAILED)

    def _refresh_progress(self) -> None:
        if not self.jobs:
            self._update(progress=None, progress_text="", jobs_open=0)
            return
        job = next(iter(self.book.jobs.values()))
        record = job.context
        label = record.request.action.label
        fraction = job.fraction
        text = wording.progress(label, job.phase.value, job.step, job.total, job.queue_position)
        text += self.big_canvas.note(record)
        if len(self.jobs) > 1:
            text += f" (+{len(self.jobs) - 1} waiting)"
        if self.view.connection in ("reconnecting", "connecting") and record.phase not in (Phase.PREPARING, Phase.APPLYING):
            text += " " + wording.waiting_for_connection()
        self._update(progress=fraction, progress_text=text, jobs_open=len(self.jobs))

    # ------------------------------------------------------------------ previews

    async def _paint_previews(self, record: JobRecord) -> None:
        """Draws the newest preview whenever one is due; older ones are dropped.

        Decoding, scaling and masking run on a worker thread; the layer is written in strips.
        Drawing (all of it, wall time) is paced by the throttle so that on a large selection
        previews take a bounded share of the machine and of the main thread.
        """
        while True:
            await record.preview_wakeup.wait()
            record.preview_wakeup.clear()
            wait = record.throttle.wait_time(self.clock())
            if wait > 0:
                await asyncio.sleep(wait)
            preview, record.latest_preview = record.latest_preview, None
            # Once the result is here only a first preview is still worth drawing (a fast job
            # should show at least one step on the canvas), and only while that is cheap.
            late = record.phase is Phase.APPLYING and (
                record.previews_drawn or record.request.placement.crop.area > FIRST_PREVIEW_MAX_AREA)
            if preview is None or late:
                continue
            started = self.clock()
            try:
                async with record.draw_lock:
                    await self._draw_preview(record, preview)
            except HostError as exc:
                log.info("easel: preview not drawn: %s", exc)
            finally:
                record.throttle.drawn(started, self.clock())

    async def _draw_preview(self, record: JobRecord, preview: StepPreview) -> None:
        doc, placement = record.doc, _preview_placement(record.request)
        bgra = await asyncio.to_thread(self.canvas.fit_preview, preview, placement, record.crop_mask)
        if not self.host.is_open(doc):
            raise HostError("the image was closed")
        if record.job_id not in self.jobs:
            return  # the job ended meanwhile
        if record.request.action is Action.EXPAND and not record.canvas_grown:
            started = self.clock()
            self._grow(record)
            self._measure("grow canvas", started)
        if record.preview_layer is None or not self.host.layer_alive(doc, record.preview_layer):
            started = self.clock()
            name = f"Easel preview: {record.request.layer_name(record.request.effective_seed or 0)}"
            record.preview_layer = self.host.add_layer(doc, name, True)
            self._measure("add preview layer", started)
        await self.canvas.write_strips(doc, record.preview_layer, bgra, placement.crop)
        if record.previews_drawn == 0:
            self.host.show_layer(doc, record.preview_layer)
        record.previews_drawn += 1
        self.stats.previews_drawn += 1

    def _grow(self, record: JobRecord) -> None:
        request = record.request
        if self.host.canvas_rect(record.doc) != request.canvas:
            raise HostError("the canvas changed size while Expand ran; the result is in the history")
        self.host.grow_canvas(record.doc, request.settings.margins)
        record.canvas_grown = True

    # ------------------------------------------------------------------ results

    async def _stop_painter(self, record: JobRecord) -> None:
        """Let a preview being drawn finish (and a first one be drawn), then stop the painter."""
        painter = record.painter
        if painter is None:
            return
        async with record.draw_lock:
            record.painter = None
            if not painter.done():
                painter.cancel()
        await asyncio.wait([painter])  # it stops without taking the caller's cancellation

    async def _apply_result(self, record: JobRecord, result: JobResult) -> None:
        request, doc = record.request, record.doc
        finished = result.finished
        seeds = tuple(finished.seeds) or (finished.seed,)
        request = request.with_seed(seeds[0])
        await self._stop_painter(record)
        entry: HistoryEntry | None = None
        history, known = self.documents.of(doc)
        try:
            # Into the history first: from here on the result is kept whatever happens to the canvas.
            entry = history.add(request, seeds, tuple(result.images), record.crop_mask, finished.timings or {})
            self._history_changed(known)
            if not self.host.is_open(doc):
                raise NotPlaced("the image was closed")
            if request.action is Action.EXPAND and not record.canvas_grown:
                self._grow(record)
            if request.action is Action.UPSCALE:
                self._scale_for_upscale(record)
            placement = request.placement
            batch = await place_batch(self, record, seeds, result.images)  # several images: one group, one undo step
            for index, image in enumerate(() if batch else result.images):
                bgra = await asyncio.to_thread(self.canvas.prepare_result, image, placement, record.crop_mask)
                name = request.layer_name(seeds[index] if index < len(seeds) else seeds[0])
                layer = record.preview_layer if index == 0 else None
                if layer is None or not self.host.layer_alive(doc, layer):
                    started = self.clock()
                    layer = self.host.add_layer(doc, name, False)
                    self._measure("add layer", started)
                await self.canvas.write_strips(doc, layer, bgra, placement.crop)
                started = self.clock()
                self.host.finish_layer(doc, layer, name)
                self._measure("finish layer", started)
                if index == 0:
                    record.preview_layer = None
                if request.action is Action.PREPROCESS:
                    self._mark_made_layer(doc, layer, request)
                self.stats.layers_created.append(name)
                self.stats.results_applied += 1
            elapsed = self.clock() - record.started
            done = f"{request.action.label} done: seed {seeds[0]}, {elapsed:.1f} s."
            if request.action is Action.PREPROCESS:
                done = (f"Made the control layer {request.layer_name(0)} in {elapsed:.1f} s; it guides the next jobs. "
                        "Paint on it to touch it up.")
            self._end(record, done, error=False, keep_canvas=True)
        except (NotPlaced, HostError) as exc:
            self._not_placed(record, entry, str(exc), history, known)
        except Exception as exc:
            log.exception("easel: applying %s failed", record.job_id)
            self._not_placed(record, entry, wording.unexpected(f"place the {request.action.label} result", exc),
                             history, known)

    def _not_placed(self, record: JobRecord, entry: HistoryEntry | None, reason: str,
                    history: History, known: DocumentHistory | None) -> None:
        """A result that arrived but could not be placed: it stays in the history with its
        pixels and a status saying why; the painter can apply it to the current image."""
        label = record.request.action.label
        if entry is not None:
            try:
                if entry.id not in {e.id for e in history}:  # a loose entry the image shown took in meanwhile
                    known = self.documents.holding(entry.id)
                    history = known.history if known is not None else history
                history.set_status(entry.id, NOT_APPLIED, reason)
                self._history_changed(known)
            except KeyError:
                pass
            self._end(record, wording.not_applied(label, reason), error=True, keep_canvas=True)
        else:
            self._end(record, f"{label}: {reason}", error=True, keep_canvas=True)

    def _lose(self, record: JobRecord, reason: str) -> None:
        """A job whose result will never come: into the history as lost, off the canvas."""
        request = record.request
        seed = request.effective_seed
        history, known = self.documents.of(record.doc)
        history.add(request, (seed,) if seed is not None else (), (), status=LOST, detail=reason)
        self._history_changed(known)
        self._end(record, wording.job_lost(request.action.label, reason), error=True)
        self._job_outcome = self.view.message

    def _scale_for_upscale(self, record: JobRecord) -> None:
        """Upscale's canvas step: the preview layer goes (leaving no trace when it is still the
        newest step), then the whole document is scaled by the factor (one undo step), so every
        layer keeps its place relative to the result."""
        request, doc = record.request, record.doc
        if record.preview_layer is not None:
            if self.host.layer_alive(doc, record.preview_layer):
                self.host.remove_layer(doc, record.preview_layer)
            record.preview_layer = None
        if self.host.canvas_rect(doc) != request.canvas:
            raise NotPlaced("the canvas changed size while Upscale ran")
        scaled = request.scaled_canvas
        started = self.clock()
        self.host.scale_canvas(doc, scaled.width, scaled.height)
        self._measure("scale canvas", started)

    def _mark_made_layer(self, doc: Any, layer: Any, request: GenerationRequest) -> None:
        """A control layer made by the preprocessor is marked with its type at full strength."""
        self.host.mark_control(doc, layer, ControlSpec(request.control_type))
        self.refresh_control_layers()

    async def _apply_again(self, entry: HistoryEntry, index: int, doc: Any) -> None:
        request = entry.request
        try:
            placement = request.placement
            canvas = self.host.canvas_rect(doc)
            if request.action is Action.UPSCALE and canvas == request.canvas and canvas != request.scaled_canvas:
                scaled = request.scaled_canvas  # the image as it was before the upscale: scale it first
                self.host.scale_canvas(doc, scaled.width, scaled.height)
                canvas = self.host.canvas_rect(doc)
            if not canvas.contains(placement.crop):
                raise HostError("the canvas is smaller than where this result was placed; "
                                "undo the size change or apply it on a larger image")
            bgra = await asyncio.to_thread(self.canvas.prepare_result, entry.images[index], placement, entry.mask)
            name = request.layer_name(entry.seed_of(index))
            layer = self.host.add_layer(doc, name, False)
            await self.canvas.write_strips(doc, layer, bgra, placement.crop)
            self.host.finish_layer(doc, layer, name)
            if request.action is Action.PREPROCESS:
                self._mark_made_layer(doc, layer, request)
            self.stats.layers_created.append(name)
            history, known = self.documents.of(doc)
            if entry.status != APPLIED and entry.id in {e.id for e in history}:
                history.set_status(entry.id, APPLIED)
                self._history_changed(known)
                self.say(f"Applied {name} to the current image as a new layer.")
            else:
                self.say(f"Applied {name} again as a new layer.")
        except HostError as exc:
            self.say(str(exc), error=True)
        except Exception as exc:
            log.exception("easel: applying history entry %s failed", entry.id)
            self.say(wording.unexpected("apply the result again", exc), error=True)

    def _end(self, record: JobRecord, message: str, *, error: bool, keep_canvas: bool = False) -> None:
        """Forget a job: stop its previews, take away its preview layer (and an Expand's grown
        canvas) unless the result now lives there, and tell the painter."""
        self.book.release(record.job_id)
        if record.painter is not None:
            record.painter.cancel()
            record.painter = None
        try:
            if record.preview_layer is not None and self.host.is_open(record.doc):
                if self.host.layer_alive(record.doc, record.preview_layer):
                    self.host.remove_layer(record.doc, record.preview_layer)
                record.preview_layer = None
            if record.canvas_grown and not keep_canvas and self.host.is_open(record.doc):
                request = record.request
                grown = request.placement.region
                if self.host.canvas_rect(record.doc) == grown:
                    self.host.shrink_canvas(record.doc, request.settings.margins)
                record.canvas_grown = False
        except Exception:
            log.exception("easel: cleaning up after %s failed", record.job_id)
        self.say(message, error=error)
        self._refresh_progress()

