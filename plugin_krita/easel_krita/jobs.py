"""Generate's jobs, from the click to their single end: each job's record, sending it (the canvas
read in strips, the selection, the control layers), following what the job book makes of the link's
events, step previews on a preview layer, the result placed as new layers (or kept in the history
as not placed, or lost), and the canvas put back when a job ends without one.

The :class:`~.controller.Controller` plans the requests and hands them to :meth:`JobRunner.launch`;
what the runner tells the painter goes back through a :class:`JobsShell` (the controller). No
``krita`` and no Qt here: the document is reached through the :class:`~.host.CanvasHost`.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from . import pixels, wording
from .batch import place_batch
from .canvas_io import CanvasIO
from .clientkit.book import EndKind, Ended, Finished, JobBook, OpenJob, Phase, Previewed, Progressed
from .clientkit.links import AsyncLink, LinkEvent
from .control import ControlSpec
from .documents import DocumentHistory, Documents
from .big_canvas import BigCanvas, Refining
from .guides import Guides
from .geometry import Placement, Rect
from .painter import PreviewPainter, PreviewTarget
from .history import APPLIED, LOST, NOT_APPLIED, History, HistoryEntry
from .host import CanvasHost, ControlLayer, Doc, HostError, Layer, NotPlaced
from .protocol import ImageFormat, ImagePayload, JobResult
from .request import Action, GenerationRequest, RequestError
from .view import Stats, ViewState

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
    """What the plugin keeps of an open job: its request and what it placed on the canvas. Its
    place in the job book (phase, step, queue position) is ``ticket``."""

    job_id: str
    request: GenerationRequest
    doc: Doc
    crop_mask: bytes | None
    #: Draws the job's step previews into ``preview_layer`` (painter.py); a result waits for it.
    painter: PreviewPainter
    started: float = 0.0
    ticket: OpenJob["JobRecord"] | None = None
    preview_layer: Layer = None
    canvas_grown: bool = False
    previews_received: int = 0
    previews_drawn: int = 0
    cancel_requested: bool = False
    #: The layers of ``request.controls``, in order; every marked layer (kept out of the visible
    #: image the job reads); the layer a control layer is made from (None: the visible image).
    control_layers: tuple[Layer, ...] = ()
    exclude_layers: tuple[Layer, ...] = ()
    source_layer: Layer = None
    #: The reference and region layers of ``request.references`` / ``request.regions`` (guides.py).
    guide_layers: tuple[Layer, ...] = ()
    #: A big-canvas Generate's refine passes (big_canvas.py), while it has any.
    refining: Refining | None = None
    #: Said after the done line (a failed refine pass, guides Upscale does not use); ``partial``: as an error.
    note: str = ""
    partial: bool = False

    @property
    def phase(self) -> Phase:
        return self.ticket.phase if self.ticket is not None else Phase.PREPARING


class JobsShell(Protocol):
    """What the job runner tells the person painting (the docker's message and progress) and asks of the
    rest of the plugin: the controller."""

    @property
    def view(self) -> ViewState: ...
    def say(self, text: str, error: bool = False) -> None: ...
    def show_progress(self, progress: float | None, text: str, jobs_open: int) -> None: ...
    def history_changed(self, changed: DocumentHistory | None = None) -> None: ...
    def refresh_control_layers(self) -> tuple[ControlLayer, ...]: ...


class JobRunner:
    """Generate's open jobs (one runner per controller). Methods are called on the main thread."""

    def __init__(self, host: CanvasHost, connection: AsyncLink, canvas: CanvasIO, documents: Documents,
                 guides: Guides, big_canvas: BigCanvas, shell: JobsShell, stats: Stats,
                 measure: Callable[[str, float], None], *,
                 clock: Callable[[], float] = time.monotonic, preview_budget: float = 0.25) -> None:
        self.host = host
        self.connection = connection
        self.canvas = canvas
        self.documents = documents
        self.guides = guides
        self.big_canvas = big_canvas
        self.shell = shell
        self.stats = stats
        self.clock = clock
        self.preview_budget = preview_budget
        self._measure = measure
        #: Every open job, from the click to its end (the link resumes the sent ones on a new client).
        self.book: JobBook[JobRecord] = JobBook()
        self._ids = itertools.count(1)
        self._session = os.urandom(3).hex()
        self.last_outcome = ""  # the last "lost"/"not placed" sentence: a reconnect does not clear it

    @property
    def records(self) -> dict[str, JobRecord]:
        """The open jobs' records, oldest first."""
        return {job_id: job.context for job_id, job in self.book.jobs.items()}

    def sent_ids(self) -> list[str]:
        """The open jobs that were sent (the link asks for them to resume them on a new client)."""
        return [job_id for job_id, job in self.book.jobs.items() if job.phase is not Phase.PREPARING]

    def handle(self, event: LinkEvent) -> None:
        """A job event from the link: into the job book, its outcomes onto the records and the canvas."""
        for outcome in self.book.handle(event):
            self._follow(outcome)
        self.refresh_progress()

    def launch(self, request: GenerationRequest, doc: Doc, **record_fields: Layer | tuple[Layer, ...]) -> str:
        """Record a planned job and start sending it; returns its id."""
        job_id = f"krita-{self._session}-{next(self._ids)}"
        painter = PreviewPainter(self.canvas, self.connection.spawn, self.clock, budget=self.preview_budget,
                                 what=f"previews {job_id}")
        record = JobRecord(job_id, request, doc, None, painter, started=self.clock(), **record_fields)
        record.ticket = self.book.open(job_id, record)
        record.refining = self.big_canvas.track(request, job_id)
        record.note = self.guides.left_out(request, doc)  # Upscale says which guides it does not use
        self.refresh_progress()
        self.connection.spawn(self._send(record), f"send {job_id}")
        return job_id

    def cancel_all(self) -> int:
        """Cancel every open job; returns how many were asked to stop."""
        count = 0
        for record in list(self.records.values()):
            record.cancel_requested = True
            if record.phase is Phase.PREPARING:
                continue  # _send sees the flag and stops before sending
            if self.connection.cancel(record.job_id):
                count += 1
            elif record.phase is not Phase.APPLYING:
                self._end(record, wording.cancelled(record.request.action.label, "requested"), error=False)
                count += 1
        if not count and not self.records:
            self.shell.say("Nothing to cancel.")
        return count

    # ------------------------------------------------------------------ sending

    async def _read_source(self, record: JobRecord, rect: Rect) -> bytes:
        return await self.canvas.read_source(record.doc, rect, record.source_layer, record.exclude_layers)

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
            control_images = await self.canvas.read_control_images(doc, request, record.control_layers) if request.controls else []
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
        self.refresh_progress()
        self.connection.submit(job, images)

    # ------------------------------------------------------------------ events

    def _follow(self, outcome: Progressed[JobRecord] | Previewed[JobRecord] | Finished[JobRecord] | Ended[JobRecord]) -> None:
        """Apply what the job book made of an event to the job's record and the canvas."""
        record = outcome.job.context
        if isinstance(outcome, Progressed):
            if record.request.effective_seed is None and outcome.job.seed is not None:
                record.request = record.request.with_seed(outcome.job.seed)
        elif isinstance(outcome, Previewed):
            record.previews_received += 1
            record.painter.offer(outcome.preview, self._preview_target(record))
        elif isinstance(outcome, Finished):
            result = self.big_canvas.next_pass(record, outcome.result)  # None: a refine pass was sent
            if result is not None:
                self.connection.spawn(self._apply_result(record, result), f"apply {record.job_id}")
        elif (rescued := self.big_canvas.rescue(record, outcome)) is not None:  # a refine pass failed
            self.connection.spawn(self._apply_result(record, rescued), f"apply {record.job_id}")
        elif outcome.kind is EndKind.LOST:
            self._lose(record, outcome.reason)
        else:
            label = record.request.action.label
            self._end(record, outcome.sentence(label), error=outcome.kind is EndKind.FAILED)

    def refresh_progress(self) -> None:
        if not self.records:
            self.shell.show_progress(None, "", 0)
            return
        job = next(iter(self.book.jobs.values()))
        record = job.context
        label = record.request.action.label
        fraction = job.fraction
        text = wording.progress(label, job.phase.value, job.step, job.total, job.queue_position)
        text += self.big_canvas.note(record)
        if len(self.records) > 1:
            text += f" (+{len(self.records) - 1} waiting)"
        if self.shell.view.connection in ("reconnecting", "connecting") and record.phase not in (Phase.PREPARING, Phase.APPLYING):
            text += " " + wording.waiting_for_connection()
        self.shell.show_progress(fraction, text, len(self.records))

    # ------------------------------------------------------------------ previews

    def _preview_target(self, record: JobRecord) -> PreviewTarget:
        """The job's previews go into its preview layer, over the result's placement (Upscale:
        the area it reads). Once the result is here only a first preview is still worth drawing
        (a fast job should show at least one step on the canvas), and only while that is cheap."""

        def wanted() -> bool:
            return not (record.phase is Phase.APPLYING and (
                record.previews_drawn or record.request.placement.crop.area > FIRST_PREVIEW_MAX_AREA))

        return PreviewTarget(_preview_placement(record.request), record.crop_mask, wanted,
                             lambda bgra: self._draw_preview(record, bgra))

    async def _draw_preview(self, record: JobRecord, bgra: bytes) -> None:
        """One preview (BGRA over the preview placement's crop) into the job's preview layer,
        made on the first one; an Expand's canvas grows first."""
        doc, placement = record.doc, _preview_placement(record.request)
        if not self.host.is_open(doc):
            raise HostError("the image was closed")
        if record.job_id not in self.records:
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

    async def _apply_result(self, record: JobRecord, result: JobResult) -> None:
        request, doc = record.request, record.doc
        finished = result.finished
        seeds = tuple(finished.seeds) or (finished.seed,)
        request = request.with_seed(seeds[0])
        await record.painter.finish()  # a preview being drawn (or a first one) lands first
        entry: HistoryEntry | None = None
        history, known = self.documents.of(doc)
        try:
            # Into the history first: from here on the result is kept whatever happens to the canvas.
            entry = history.add(request, seeds, tuple(result.images), record.crop_mask, finished.timings or {})
            self.shell.history_changed(known)
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
            self._end(record, done + record.note, error=record.partial, keep_canvas=True)
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
                self.shell.history_changed(known)
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
        self.shell.history_changed(known)
        self._end(record, wording.job_lost(request.action.label, reason), error=True)
        self.last_outcome = self.shell.view.message

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

    def _mark_made_layer(self, doc: Doc, layer: Layer, request: GenerationRequest) -> None:
        """A control layer made by the preprocessor is marked with its type at full strength."""
        self.host.mark_control(doc, layer, ControlSpec(request.control_type))
        self.shell.refresh_control_layers()

    def _end(self, record: JobRecord, message: str, *, error: bool, keep_canvas: bool = False) -> None:
        """Forget a job: stop its previews, take away its preview layer (and an Expand's grown
        canvas) unless the result now lives there, and tell the painter."""
        self.book.release(record.job_id)
        record.painter.stop()
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
        self.shell.say(message, error=error)
        self.refresh_progress()

    async def apply_again(self, entry: HistoryEntry, index: int, doc: Doc) -> None:
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
                self.shell.history_changed(known)
                self.shell.say(f"Applied {name} to the current image as a new layer.")
            else:
                self.shell.say(f"Applied {name} again as a new layer.")
        except HostError as exc:
            self.shell.say(str(exc), error=True)
        except Exception as exc:
            log.exception("easel: applying history entry %s failed", entry.id)
            self.shell.say(wording.unexpected("apply the result again", exc), error=True)
