"""The plugin's model: observable state and the actions a painter can take.

The docker shows :class:`~.view.ViewState` and calls the controller's methods; Krita actions call
them too. The controller plans one :class:`~.request.GenerationRequest` per action (control layers
and LoRAs checked here) and hands it to its :class:`~.jobs.JobRunner`, which reads the canvas
through a :class:`~.host.CanvasHost` (the Krita adapter), sends the job over the link, draws step
previews and places the results as new layers. Each document's history is in
:class:`~.documents.Documents`; the link's events come through the :class:`~.router.EventRouter`.

No ``krita`` and no Qt here: the host is an interface, and everything runs on the connection's
asyncio loop, which the host ticks on its main thread.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any, Callable, Sequence

from . import wording
from .clientkit.events import ConnectFailed
from .clientkit.links import AsyncLink, LinkEvent
from .control_layers import ControlLayers
from .control import ControlError, ControlInput, ControlSpec, preprocessors_for
from .history import LOST, History, settings_for
from .canvas_io import STRIP_BYTES, CanvasIO
from .big_canvas import BigCanvas
from .documents import DocumentHistory, Documents
from .guides import Guides
from .clientkit.book import JobBook
from .jobs import JobRecord, JobRunner
from .loras import unfit as unfit_loras
from .protocol import ErrorEvent, ImagePayload, ModelInfo, ModelList, Refused
from .protocol.transport import Connected, Disconnected
from .request import Action, GenerationRequest, GenerationSettings, RequestError, plan
from .host import CanvasHost, ControlLayer, Doc, HostError, Layer
from .router import EventRouter
from .view import Stats, ViewState, usable_models
from .settings import refusal_status

log = logging.getLogger("easel.krita")

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
        #: The documents' control layers and the ControlNet units they make (control_layers.py).
        self.control = ControlLayers(host, self)
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
        #: Generate's open jobs, from the click to their end (jobs.py); the link resumes the sent
        #: ones on a new client.
        self.runner = JobRunner(host, connection, self.canvas, self.documents, self.guides, self.big_canvas, self,
                                self.stats, self._measure, clock=clock, preview_budget=preview_budget)
        connection.open_jobs = self.runner.sent_ids

    @property
    def jobs(self) -> dict[str, JobRecord]:
        """The open jobs' records, oldest first."""
        return self.runner.records

    @property
    def book(self) -> JobBook[JobRecord]:
        """Generate's job book (the runner's; big_canvas.py sends its refine passes through it)."""
        return self.runner.book

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
                self.history_changed()
        except Exception:
            log.exception("easel: following the active image's history failed")

    def flush_history(self, doc: Doc = None) -> None:
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

    def history_changed(self, changed: DocumentHistory | None = None) -> None:
        """Tell the docker; a document's history that changed is stored in it."""
        self.documents.store(changed)
        shown = self._shown = self.history
        self._update(history_size=len(shown))
        for listener in list(self._history_listeners):
            try:
                listener(shown)
            except Exception:
                log.exception("easel: a history listener failed")

    def show_progress(self, progress: float | None, text: str, jobs_open: int) -> None:
        """Show the open jobs' progress (the job runner calls this)."""
        self._update(progress=progress, progress_text=text, jobs_open=jobs_open)

    def show_control_layers(self, layers: tuple[ControlLayer, ...]) -> None:
        """Show ``layers`` as the active document's control layers (the control-layer room calls this)."""
        self._update(control_layers=layers)

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
            marked = self.control.marked(doc)
            controls, control_layers = self.control.plan(marked, model) if action.guided else ((), ())
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
        return self.runner.launch(request, doc, control_layers=control_layers,
                                  exclude_layers=tuple(c.layer for c in marked), guide_layers=guide_layers)

    def cancel_all(self) -> int:
        """Cancel every open job; returns how many were asked to stop."""
        return self.runner.cancel_all()

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
        self.connection.spawn(self.runner.apply_again(entry, index, doc), f"apply history {entry_id}")

    def discard_history(self, entry_id: int) -> None:
        """Drop a result from the active image's history (its layers on the canvas stay)."""
        try:
            doc = self.host.active_document()
            known = self.documents.known(doc)
            known.history.discard(entry_id)
        except (HostError, KeyError) as exc:
            self.say(str(exc.args[0]) if isinstance(exc, KeyError) else str(exc), error=True)
            return
        self.history_changed(known)

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
        return self.control.refresh()

    def mark_active_layer(self, spec: ControlSpec) -> bool:
        """Mark the layer the painter selected as a control layer (or change its marking). The
        marking is saved with the document. Returns whether it was marked; the reason is said."""
        return self.control.mark_active(spec)

    def set_control(self, layer_id: str, spec: ControlSpec | None) -> None:
        """Change (``None``: remove) the marking of the control layer ``layer_id`` of the active
        document. The layer itself stays as it is."""
        self.control.set(layer_id, spec)

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
            marked = self.control.marked(doc)
            request = plan(Action.PREPROCESS, self.settings, self.host.canvas_rect(doc), self.host.selection_rect(doc),
                           self.native_size, preprocessor=preprocessor, control_type=type_id)
        except (RequestError, HostError, ControlError) as exc:
            self.say(str(exc), error=True)
            return None
        except Exception as exc:
            log.exception("easel: planning a control layer failed")
            self.say(wording.unexpected("make a control layer", exc), error=True)
            return None
        return self.runner.launch(request, doc, source_layer=source_layer, exclude_layers=tuple(c.layer for c in marked))

    def guidance(self, doc: Doc, model: ModelInfo | None) -> tuple[list[ControlLayer], tuple[ControlInput, ...],
                                                                   tuple[Layer, ...]]:
        """``doc``'s control layers, the control inputs a guided job on ``model`` sends, and their
        layers in the same order (:meth:`ControlLayers.guidance`). Raises :class:`ControlError`."""
        return self.control.guidance(doc, model)

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

    async def read_control_images(self, doc: Doc, request: GenerationRequest,
                                  layers: Sequence[Layer]) -> list[ImagePayload]:
        """Each control layer's pixels for ``request`` (:meth:`CanvasIO.read_control_images`;
        ``layers`` as :meth:`guidance` gives them). Raises :class:`HostError`."""
        return await self.canvas.read_control_images(doc, request, layers)

    # ------------------------------------------------------------------ events

    def _take(self, event: LinkEvent) -> bool:
        self.handle_event(event)
        return True

    def handle_event(self, event: LinkEvent) -> None:
        """An event from the link (every one no earlier subscriber took), on the main thread. Never raises."""
        try:
            self._dispatch(event)
        except Exception as exc:
            log.exception("easel: handling %s failed", type(event).__name__)
            self.say(wording.unexpected("handle a message from the server", exc), error=True)

    def _dispatch(self, event: LinkEvent) -> None:
        if isinstance(event, Connected):
            w = event.welcome
            caps = w.capabilities
            self._update(connection="online", models=usable_models(caps.models), samplers=tuple(caps.samplers),
                         status=wording.connected(w.server_name, w.server_version, caps.device, w.demo, w.notice),
                         server_models=tuple(caps.models), preprocessors=tuple(caps.preprocessors))
            # A connection error is over now; what happened to a job (lost, not placed) is not.
            if (self.view.message_is_error and "server" in self.view.message.lower()
                    and self.view.message != self.runner.last_outcome):
                self._update(message="", message_is_error=False)
            self.connection.list_models()  # the LoRAs come with the model list
            self.runner.refresh_progress()
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
        elif isinstance(event, ErrorEvent) and event.ref not in self.runner.book:
            self.say(wording.server_error(event.code, event.message, event.log_id), error=True)
            return
        self.runner.handle(event)
