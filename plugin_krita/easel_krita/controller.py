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
from enum import Enum
from typing import Any, Callable, Protocol, Sequence

from . import pixels, wording
from .connection import ConnectFailed, Connection, SubmitFailed
from .geometry import Margins, Placement, PreviewThrottle, Rect
from .history import History, HistoryEntry
from .protocol import (
    ErrorEvent, ImageFormat, ImagePayload, JobAccepted, JobCancelled, JobFailed, JobResult, JobStarted,
    ModelInfo, ModelList, QueuePosition, Refused, StepPreview,
)
from .protocol.transport import Connected, Disconnected, JobLost
from .request import Action, GenerationRequest, GenerationSettings, RequestError, plan

log = logging.getLogger("easel.krita")

#: Largest piece of a layer read or written in one main-thread call (bytes of BGRA).
STRIP_BYTES = 4 * 1024 * 1024
#: A job whose result arrives before any preview was drawn still shows one preview first, when its
#: area is at most this many pixels (above it, drawing a preview only to overwrite it costs too much).
FIRST_PREVIEW_MAX_AREA = 1024 * 1024


def usable_models(models: Sequence[ModelInfo]) -> tuple[ModelInfo, ...]:
    """The models that can run at least one of the plugin's actions (not ControlNets, not
    depth-only models), in the server's order."""
    ours = {action.task for action in Action}
    return tuple(m for m in models if m.kind != "controlnet" and (not m.tasks or ours & set(m.tasks)))


class HostError(Exception):
    """The host cannot do what was asked (no document open, a layer vanished). The message is a
    sentence for the painter."""


class CanvasHost(Protocol):
    """What the controller needs from the painting program. Every method runs on the main thread
    except :meth:`decode_preview` and :meth:`scale_rgba`, which must be safe on a worker thread.

    Documents and layers are opaque handles. Pixel buffers are BGRA (Krita's memory order) with
    straight alpha; selection masks are one byte per pixel, 255 = selected.
    """

    def active_document(self) -> Any: ...
    def is_open(self, doc: Any) -> bool: ...
    def canvas_rect(self, doc: Any) -> Rect: ...
    def selection_rect(self, doc: Any) -> Rect | None: ...
    def read_visible(self, doc: Any, rect: Rect) -> bytes: ...
    def read_selection(self, doc: Any, rect: Rect) -> bytes: ...
    def settle(self, doc: Any) -> None: ...
    def add_layer(self, doc: Any, name: str, locked: bool) -> Any: ...  # hidden until shown
    def show_layer(self, doc: Any, layer: Any) -> None: ...
    def layer_alive(self, doc: Any, layer: Any) -> bool: ...
    def write_layer(self, doc: Any, layer: Any, bgra: bytes, rect: Rect) -> None: ...
    def finish_layer(self, doc: Any, layer: Any, name: str) -> None: ...
    def remove_layer(self, doc: Any, layer: Any) -> None: ...
    def grow_canvas(self, doc: Any, margins: Margins) -> None: ...
    def shrink_canvas(self, doc: Any, margins: Margins) -> None: ...
    def decode_preview(self, jpeg: bytes, width: int, height: int) -> bytes: ...
    def scale_rgba(self, data: bytes, width: int, height: int, new_width: int, new_height: int) -> bytes: ...

    # decode_preview and scale_rgba run on worker threads.


class Phase(str, Enum):
    PREPARING = "preparing"
    SENDING = "sending"
    QUEUED = "queued"
    RUNNING = "running"
    APPLYING = "applying"


@dataclass
class JobRecord:
    """A job this plugin sent and has not seen end."""

    job_id: str
    request: GenerationRequest
    doc: Any
    crop_mask: bytes | None
    phase: Phase = Phase.SENDING
    step: int = 0
    total: int = 0
    queue_position: int = 0
    started: float = 0.0
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


@dataclass(frozen=True)
class ViewState:
    """Everything the docker shows. Replaced (never mutated) on every change."""

    connection: str = "offline"          # offline | connecting | online | reconnecting
    status: str = "Not connected."
    message: str = ""                    # the last error or notice, a plain sentence
    message_is_error: bool = False
    progress: float | None = None        # 0..1 while a job runs, else None
    progress_text: str = ""
    jobs_open: int = 0
    models: tuple[ModelInfo, ...] = ()
    samplers: tuple[str, ...] = ()
    history_size: int = 0


@dataclass
class Stats:
    """Counters the tests and the benchmark notes read."""

    jobs_submitted: int = 0
    results_applied: int = 0
    previews_drawn: int = 0
    longest_main_thread_step_s: float = 0.0
    longest_main_thread_step: str = ""
    layers_created: list[str] = field(default_factory=list)
    #: The most recent main-thread steps that took over 30 ms, as (what, seconds); at most 200.
    slow_steps: list[tuple[str, float]] = field(default_factory=list)

    def note(self, what: str, seconds: float) -> None:
        if seconds > self.longest_main_thread_step_s:
            self.longest_main_thread_step_s, self.longest_main_thread_step = seconds, what
        if seconds > 0.03:
            self.slow_steps.append((what, round(seconds, 4)))
            del self.slow_steps[:-200]


class Controller:
    """One per Krita window set (the extension owns it). Methods are called on the main thread."""

    def __init__(self, host: CanvasHost, connection: Connection, history: History | None = None, *,
                 clock: Callable[[], float] = time.monotonic, strip_bytes: int = STRIP_BYTES,
                 preview_budget: float = 0.25) -> None:
        self.host = host
        self.connection = connection
        connection.on_event = self.handle_event
        self.history = history if history is not None else History()
        self.clock = clock
        self.strip_bytes = strip_bytes
        self.settings = GenerationSettings()
        self.view = ViewState()
        self.stats = Stats()
        self.jobs: dict[str, JobRecord] = {}
        self.url = ""
        self._listeners: list[Callable[[ViewState], None]] = []
        self._history_listeners: list[Callable[[History], None]] = []
        self._settings_listeners: list[Callable[[GenerationSettings], None]] = []
        self._ids = itertools.count(1)
        self._session = os.urandom(3).hex()
        self.preview_budget = preview_budget

    # ------------------------------------------------------------------ observers

    def subscribe(self, listener: Callable[[ViewState], None]) -> None:
        self._listeners.append(listener)
        listener(self.view)

    def subscribe_history(self, listener: Callable[[History], None]) -> None:
        self._history_listeners.append(listener)
        listener(self.history)

    def subscribe_settings(self, listener: Callable[[GenerationSettings], None]) -> None:
        """``listener`` hears when the controller changes the form's settings (reuse seed, copy settings)."""
        self._settings_listeners.append(listener)

    def set_settings(self, settings: GenerationSettings, *, notify: bool = True) -> None:
        """Replace the form's settings (the docker calls this with ``notify=False`` as the painter types)."""
        self.settings = settings
        if notify:
            for listener in list(self._settings_listeners):
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

    def _history_changed(self) -> None:
        self._update(history_size=len(self.history))
        for listener in list(self._history_listeners):
            try:
                listener(self.history)
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
        self.url = url
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
            request = plan(action, self.settings, canvas, selection, self.native_size, live=live)
        except (RequestError, HostError) as exc:
            self.say(str(exc), error=True)
            return None
        except Exception as exc:
            log.exception("easel: planning %s failed", action.value)
            self.say(wording.unexpected(f"start {action.label}", exc), error=True)
            return None
        job_id = f"krita-{self._session}-{next(self._ids)}"
        record = JobRecord(job_id, request, doc, None, phase=Phase.PREPARING, started=self.clock(),
                           throttle=PreviewThrottle(self.preview_budget))
        self.jobs[job_id] = record
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
            settings = self.history.get(entry_id).settings_for(index)
        except (KeyError, IndexError) as exc:
            self.say(str(exc.args[0]), error=True)
            return
        self.set_settings(settings)
        self.say("Settings copied from the history into the form.")

    # ------------------------------------------------------------------ sending

    async def _read_strips(self, doc: Any, rect: Rect) -> bytes:
        """The visible pixels of ``rect``, read in strips so the UI keeps running between them."""
        parts = []
        for first, rows in pixels.row_chunks(rect.width, rect.height, self.strip_bytes):
            started = self.clock()
            parts.append(self.host.read_visible(doc, Rect(rect.x, rect.y + first, rect.width, rows)))
            self._measure("read canvas strip", started)
            await asyncio.sleep(0)
        return b"".join(parts)

    async def _send(self, record: JobRecord) -> None:
        request, doc = record.request, record.doc
        try:
            started = self.clock()
            self.host.settle(doc)
            self._measure("settle document", started)
            image = mask = None
            rect = request.input_rect
            if request.needs_image:
                bgra = await self._read_strips(doc, rect)
                rgba = await asyncio.to_thread(pixels.swap_red_blue_chunked, bgra, rect.width, rect.height)
                image = ImagePayload.build(ImageFormat.RGBA8, rect.width, rect.height, rgba)
                del bgra
            crop = request.placement.crop
            if request.action is not Action.EXPAND and self.host.selection_rect(doc) is not None:
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
            job, images = request.submit(record.job_id, image, mask)
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
        record.phase = Phase.SENDING
        self.stats.jobs_submitted += 1
        self._refresh_progress()
        self.connection.submit(job, images)

    # ------------------------------------------------------------------ events

    def handle_event(self, event: Any) -> None:
        """Every event from the connection, on the main thread. Never raises."""
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
                         status=wording.connected(w.server_name, w.server_version, caps.device, w.demo, w.notice))
            if self.view.message_is_error and "server" in self.view.message.lower():
                self._update(message="", message_is_error=False)
            return
        if isinstance(event, ConnectFailed):
            self._update(connection="offline" if event.retry_in is None else "connecting",
                         status=wording.cannot_connect(event.url, event.retry_in))
            return
        if isinstance(event, Disconnected):
            self._update(connection="reconnecting" if event.will_retry else "offline",
                         status=wording.disconnected(self.url, event.will_retry))
            return
        if isinstance(event, Refused):
            self._update(connection="offline", status=wording.refused(event.message))
            return
        if isinstance(event, ModelList):
            self._update(models=usable_models(event.models))
            return
        if isinstance(event, ErrorEvent):
            record = self.jobs.get(event.ref)
            if record is not None:
                self._end(record, wording.job_failed(record.request.action.label, event.code, event.message, event.log_id), error=True)
            else:
                self.say(wording.server_error(event.code, event.message, event.log_id), error=True)
            return
        job_id = getattr(event, "job_id", None)
        record = self.jobs.get(job_id) if job_id is not None else None
        if record is None:
            return  # a job that already ended here (e.g. cancelled while its result was on the way)
        label = record.request.action.label
        if isinstance(event, SubmitFailed):
            self._end(record, f"{label} was not sent: {event.message}", error=True)
        elif isinstance(event, JobAccepted):
            record.phase, record.queue_position = Phase.QUEUED, event.queue_position
        elif isinstance(event, QueuePosition):
            record.queue_position = event.queue_position
        elif isinstance(event, JobStarted):
            record.phase, record.total = Phase.RUNNING, event.steps
            if record.request.effective_seed is None:
                record.request = record.request.with_seed(event.seed)
        elif isinstance(event, StepPreview):
            record.phase, record.step, record.total = Phase.RUNNING, event.step, event.total
            record.latest_preview = event
            record.previews_received += 1
            if record.painter is None:
                record.painter = self.connection.spawn(self._paint_previews(record), f"previews {job_id}")
            record.preview_wakeup.set()
        elif isinstance(event, JobResult):
            record.phase = Phase.APPLYING
            self.connection.spawn(self._apply_result(record, event), f"apply {job_id}")
        elif isinstance(event, JobFailed):
            self._end(record, wording.job_failed(label, event.code, event.message, event.log_id), error=True)
        elif isinstance(event, JobCancelled):
            self._end(record, wording.cancelled(label, event.reason), error=False)
        elif isinstance(event, JobLost):
            self._end(record, wording.job_lost(label), error=True)
        self._refresh_progress()

    def _refresh_progress(self) -> None:
        if not self.jobs:
            self._update(progress=None, progress_text="", jobs_open=0)
            return
        record = next(iter(self.jobs.values()))
        label = record.request.action.label
        fraction = record.step / record.total if record.total else 0.0
        if record.phase is Phase.APPLYING:
            fraction = 1.0
        text = wording.progress(label, record.phase.value, record.step, record.total, record.queue_position)
        if len(self.jobs) > 1:
            text += f" (+{len(self.jobs) - 1} waiting)"
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
        doc, placement = record.doc, record.request.placement
        bgra = await asyncio.to_thread(self._fit_preview, preview, placement, record.crop_mask)
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
        await self._write_strips(doc, record.preview_layer, bgra, placement.crop)
        if record.previews_drawn == 0:
            self.host.show_layer(doc, record.preview_layer)
        record.previews_drawn += 1
        self.stats.previews_drawn += 1

    def _fit_preview(self, preview: StepPreview, placement: Placement, mask: bytes | None) -> bytes:
        """Worker thread: the preview as BGRA over the placement's crop — decoded, scaled to the
        region, cropped, masked to the selection."""
        region, crop = placement.region, placement.crop_in_region
        bgra = self.host.decode_preview(preview.jpeg, region.width, region.height)
        bgra = pixels.crop(bgra, region.width, region.height, crop.x, crop.y, crop.width, crop.height)
        if mask is not None:
            bgra = pixels.apply_mask(bgra, mask, crop.width, crop.height)
        return bgra

    def _grow(self, record: JobRecord) -> None:
        request = record.request
        if self.host.canvas_rect(record.doc) != request.canvas:
            raise HostError("the canvas changed size while Expand ran; the result is in the history")
        self.host.grow_canvas(record.doc, request.settings.margins)
        record.canvas_grown = True

    # ------------------------------------------------------------------ results

    def _prepare_result(self, image: ImagePayload, placement: Placement, mask: bytes | None) -> bytes:
        """Worker thread: a result image as BGRA over the crop, scaled and masked."""
        region, crop = placement.region, placement.crop_in_region
        rgba = image.data
        if placement.needs_scaling(image.width, image.height):
            rgba = self.host.scale_rgba(rgba, image.width, image.height, region.width, region.height)
        rgba = pixels.crop(rgba, region.width, region.height, crop.x, crop.y, crop.width, crop.height)
        bgra = pixels.swap_red_blue_chunked(rgba, crop.width, crop.height)
        if mask is not None:
            bgra = pixels.apply_mask(bgra, mask, crop.width, crop.height)
        return bgra

    async def _write_strips(self, doc: Any, layer: Any, bgra: bytes, rect: Rect) -> None:
        view = memoryview(bgra)
        stride = rect.width * pixels.BPP
        for first, rows in pixels.row_chunks(rect.width, rect.height, self.strip_bytes):
            started = self.clock()
            self.host.write_layer(doc, layer, bytes(view[first * stride:(first + rows) * stride]),
                                  Rect(rect.x, rect.y + first, rect.width, rows))
            self._measure("write layer strip", started)
            await asyncio.sleep(0)

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
        try:
            self.history.add(request, seeds, tuple(result.images), record.crop_mask, finished.timings or {})
            self._history_changed()
            if not self.host.is_open(doc):
                raise HostError("the image was closed before the result arrived; it is in the history")
            if request.action is Action.EXPAND and not record.canvas_grown:
                self._grow(record)
            placement = request.placement
            for index, image in enumerate(result.images):
                bgra = await asyncio.to_thread(self._prepare_result, image, placement, record.crop_mask)
                name = request.layer_name(seeds[index] if index < len(seeds) else seeds[0])
                layer = record.preview_layer if index == 0 else None
                if layer is None or not self.host.layer_alive(doc, layer):
                    started = self.clock()
                    layer = self.host.add_layer(doc, name, False)
                    self._measure("add layer", started)
                await self._write_strips(doc, layer, bgra, placement.crop)
                started = self.clock()
                self.host.finish_layer(doc, layer, name)
                self._measure("finish layer", started)
                if index == 0:
                    record.preview_layer = None
                self.stats.layers_created.append(name)
                self.stats.results_applied += 1
            elapsed = self.clock() - record.started
            self._end(record, f"{request.action.label} done: seed {seeds[0]}, {elapsed:.1f} s.", error=False,
                      keep_canvas=True)
        except HostError as exc:
            self._end(record, str(exc), error=True, keep_canvas=True)
        except Exception as exc:
            log.exception("easel: applying %s failed", record.job_id)
            self._end(record, wording.unexpected(f"place the {request.action.label} result", exc), error=True,
                      keep_canvas=True)

    async def _apply_again(self, entry: HistoryEntry, index: int, doc: Any) -> None:
        request = entry.request
        try:
            placement = request.placement
            canvas = self.host.canvas_rect(doc)
            if not canvas.contains(placement.crop):
                raise HostError("the canvas is smaller than where this result was placed; "
                                "undo the size change or apply it on a larger image")
            bgra = await asyncio.to_thread(self._prepare_result, entry.images[index], placement, entry.mask)
            name = request.layer_name(entry.seed_of(index))
            layer = self.host.add_layer(doc, name, False)
            await self._write_strips(doc, layer, bgra, placement.crop)
            self.host.finish_layer(doc, layer, name)
            self.stats.layers_created.append(name)
            self.say(f"Applied {name} again as a new layer.")
        except HostError as exc:
            self.say(str(exc), error=True)
        except Exception as exc:
            log.exception("easel: applying history entry %s failed", entry.id)
            self.say(wording.unexpected("apply the result again", exc), error=True)

    def _end(self, record: JobRecord, message: str, *, error: bool, keep_canvas: bool = False) -> None:
        """Forget a job: stop its previews, take away its preview layer (and an Expand's grown
        canvas) unless the result now lives there, and tell the painter."""
        self.jobs.pop(record.job_id, None)
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
