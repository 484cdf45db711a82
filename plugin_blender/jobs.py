"""The add-on's view of its jobs: link events in, outcomes for the host out. No ``bpy`` here.

The job tracking itself is :class:`clientkit.book.JobBook` (every open job from submit to its
single end; the only code that turns failures, cancels and lost jobs into outcomes) and the history
is :class:`clientkit.history.History`. This module adds what is Blender's own: the kinds of job
(texture, refine), the host data each result needs (``context``), the status line the panel shows,
the server's models, and the outcomes the dispatcher applies — :class:`Preview`, :class:`Finished`,
:class:`Ended`.

A result is never dropped once it arrived whole. :meth:`JobBook.handle` records it as
``received`` before the host sees it; the host then :meth:`~JobBook.settle`\\ s it as ``applied``,
or as ``kept`` with the reason (its objects are gone, another file was opened) — a kept result
keeps its image bytes and can be applied later from the history. A drop of the connection while
jobs run keeps them open (the transport reconnects with the same client id and the server resumes
them); a job the server no longer has after the reconnect ends as ``lost``.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterable

from .clientkit import book as kit
from .clientkit import wording
from .clientkit.book import BusyError, EndKind, Phase
from .clientkit.events import ConnectFailed, Submitted
from .clientkit.history import History, HistoryEntry as _Entry, Status
from .protocol import ErrorEvent, ImagePayload, ModelInfo, ModelList, SubmitJob, Welcome
from .protocol.transport import Connected, Disconnected
from .request import GenerationRequest

__all__ = ["JobKind", "Status", "BusyError", "OpenJob", "Preview", "Finished", "Ended", "HistoryEntry", "JobBook"]

#: Ended jobs remembered in the history (the panel lists them; kept results can be applied).
HISTORY = 8
#: Result bytes the history holds. Past it, applied results (already in the .blend) drop their
#: bytes first, oldest first; a kept result is dropped only when nothing else is left to drop.
HISTORY_BYTES = 512 * 1024 * 1024
#: What the panel says of a job the server no longer had after a reconnect.
NO_LONGER_HAD = "the connection dropped and the server no longer had this job (it restarted, or the job waited too long)"


class JobKind(str, Enum):
    TEXTURE = "texture_from_depth"
    REFINE = "refine_render"


@dataclass(eq=False)
class OpenJob:
    """A job of this add-on. ``context`` is the host's data for applying the result (object names,
    the camera…): opaque to the book. Its place in the job book (phase, step) is ``ticket``;
    ``sent`` is the ``SubmitJob`` exactly as it went to the server (ControlNets picked), once it has."""

    job_id: str
    kind: JobKind
    request: GenerationRequest
    context: dict[str, Any] = field(default_factory=dict)
    ticket: kit.OpenJob["OpenJob"] | None = None

    @property
    def phase(self) -> Phase:
        return self.ticket.phase if self.ticket is not None else Phase.PREPARING

    @property
    def step(self) -> int:
        return self.ticket.step if self.ticket is not None else 0

    @property
    def total(self) -> int:
        return self.ticket.total if self.ticket is not None else 0

    @property
    def queue_position(self) -> int:
        return self.ticket.queue_position if self.ticket is not None else 0

    @property
    def sent(self) -> SubmitJob | None:
        return self.ticket.submitted if self.ticket is not None else None


@dataclass(frozen=True)
class Preview:
    job: OpenJob
    step: int
    total: int
    width: int
    height: int
    jpeg: bytes


@dataclass(frozen=True)
class Finished:
    job: OpenJob
    images: tuple[ImagePayload, ...]   # lossless
    seed: int


@dataclass(frozen=True)
class Ended:
    """The job failed, was cancelled or was lost; ``message`` is for the user."""

    job: OpenJob
    message: str
    cancelled: bool = False
    lost: bool = False


Outcome = Preview | Finished | Ended


@dataclass
class HistoryEntry(_Entry[OpenJob]):
    """One ended job (the history's shape; ``request`` is the :class:`OpenJob`)."""

    @property
    def job(self) -> OpenJob:
        return self.request

    @property
    def job_id(self) -> str:
        return self.request.job_id

    @property
    def message(self) -> str:
        return self.detail

    @property
    def result_bytes(self) -> int:
        return self.nbytes

    @property
    def label(self) -> str:
        """One line for the panel: what, which seed, how it ended."""
        what = "texture" if self.job.kind is JobKind.TEXTURE else "refine"
        seed = f" {self.seed}" if self.images or self.seeds else ""
        status = "kept" if self.status is Status.KEPT else self.status.value
        return f"{what}{seed}: {status}" + (f" — {self.detail}" if self.detail else "")


def _message(ended: kit.Ended[OpenJob]) -> str:
    """The panel's words for how a job ended."""
    if ended.kind is EndKind.CANCELLED:
        return f"cancelled ({ended.reason})" if ended.reason != "requested" else "cancelled"
    if ended.kind is EndKind.LOST:
        reason = NO_LONGER_HAD if ended.reason == wording.SERVER_RESTARTED else ended.reason
        return f"{reason}; run it again"
    if ended.code is None:
        return ended.reason  # never sent: the link's sentence
    detail = f" (log id {ended.log_id})" if ended.log_id else ""
    return f"{ended.reason}{detail}"


class JobBook:
    def __init__(self, max_open: int | None = None, history: int = HISTORY,
                 history_bytes: int = HISTORY_BYTES) -> None:
        #: ``max_open``: None takes the server's ``max_client_jobs`` once connected.
        self._book: kit.JobBook[OpenJob] = kit.JobBook(max_open)
        #: Ended jobs, oldest first.
        self.history: History[OpenJob] = History(history, history_bytes)
        self.welcome: Welcome | None = None
        self.models: tuple[ModelInfo, ...] = ()
        self.preprocessors: tuple[str, ...] | None = None
        self.connection = "not connected"
        #: True between a drop and the reconnect (open jobs then wait for the server to resume them).
        self.reconnecting = False
        #: The last failure, for the panel (cleared by the next job, and by a connection once it
        #: was a connection failure).
        self.last_error = ""
        self._error_is_connection = False
        #: What the last finished job did, for the panel (cleared by the next job).
        self.notice = ""

    @property
    def jobs(self) -> dict[str, OpenJob]:
        """Open jobs (sent, or their result arriving), oldest first."""
        return {job_id: ticket.context for job_id, ticket in self._book.jobs.items()}

    # -- opening

    def open(self, kind: JobKind, request: GenerationRequest, context: dict[str, Any] | None = None) -> OpenJob:
        """Register a job before it is sent. Raises :class:`BusyError` past the open jobs allowed."""
        job = OpenJob(f"{kind.value}-{uuid.uuid4().hex[:12]}", kind, request, dict(context or {}))
        job.ticket = self._book.open(job.job_id, job)
        self._book.sent(job.job_id)
        self._set_error("")
        self.notice = ""
        return job

    def sent_jobs(self) -> list[str]:
        """Jobs handed to the server and not ended: a replacement connection resumes them."""
        return [job_id for job_id, job in self.jobs.items() if job.sent is not None]

    def busy(self, kind: JobKind | None = None) -> bool:
        return any(kind is None or job.kind is kind for job in self.jobs.values())

    # -- history

    def entry(self, job_id: str) -> HistoryEntry | None:
        return next((e for e in self.history if e.job_id == job_id), None)  # type: ignore[return-value]

    def last(self, kind: JobKind) -> HistoryEntry | None:
        """The most recent job of ``kind`` that brought a result (applied or kept)."""
        return next((e for e in reversed(self.history) if e.job.kind is kind and e.images), None)  # type: ignore[attr-defined]

    def kept(self) -> list[HistoryEntry]:
        """Results that arrived and wait to be applied, newest first."""
        return [e for e in reversed(self.history) if e.can_apply]  # type: ignore[misc]

    def settle(self, job_id: str, status: Status, message: str = "") -> HistoryEntry | None:
        """Record what the host did with a received result: ``applied`` (``message``: what it did)
        or ``kept`` (``message``: why not, and what to do)."""
        entry = self.entry(job_id)
        if entry is None:
            return None
        if status is Status.KEPT:
            self._set_error(message)
        elif status is Status.APPLIED:
            self.notice = message
        return self.history.set_status(entry.id, status, message)  # type: ignore[return-value]

    def _record(self, job: OpenJob, status: Status, message: str = "", images: tuple[ImagePayload, ...] = (),
                seed: int = 0) -> None:
        self.history.put(HistoryEntry(self.history.new_id(), job, (seed,) if images or seed else (), images,
                                      status=status, detail=message))

    def _set_error(self, message: str, connection: bool = False) -> None:
        self.last_error, self._error_is_connection = message, connection and bool(message)

    # -- status for the panel

    @property
    def status(self) -> str:
        if self.jobs:
            if self.reconnecting:
                return f"connection lost; reconnecting ({len(self.jobs)} job(s) wait for their results)"
            job = next(iter(self.jobs.values()))
            if job.phase is Phase.RUNNING and job.total:
                return f"step {job.step} of {job.total}"
            if job.phase is Phase.QUEUED:
                return "queued" if job.queue_position == 0 else f"queued, {job.queue_position} ahead"
            return job.phase.value
        return self.last_error or self.notice or self.connection

    # -- events

    def handle(self, events: Iterable[Any]) -> list[Outcome]:
        """Turn events (in arrival order) into outcomes. Of several previews of one job in a batch
        only the newest is returned: decoding the older ones would be wasted work."""
        out: list[Outcome] = []
        for event in events:
            out.extend(self._handle(event))
        newest: dict[str, int] = {}
        for index, outcome in enumerate(out):
            if isinstance(outcome, Preview):
                newest[outcome.job.job_id] = index
        return [o for i, o in enumerate(out) if not isinstance(o, Preview) or newest[o.job.job_id] == i]

    def cancel(self, job_id: str) -> list[Outcome]:
        """End ``job_id`` here as cancelled (its later events are ignored)."""
        return self._follow(self._book.end(job_id, EndKind.CANCELLED, "requested"))

    def fail_all(self, message: str, lost: bool = False) -> list[Outcome]:
        """End every open job with ``message`` (the add-on closes, the URL changed)."""
        kind = EndKind.LOST if lost else EndKind.FAILED
        return self._follow([o for job_id in list(self._book.jobs) for o in self._book.end(job_id, kind, message)],
                            raw=True)

    def _handle(self, event: Any) -> list[Outcome]:
        if isinstance(event, Connected):
            self.welcome = event.welcome
            self._book.learn_limits(event.welcome.limits.max_client_jobs)
            self.models = event.welcome.capabilities.models
            self.preprocessors = event.welcome.capabilities.preprocessors
            self.reconnecting = False
            self.connection = f"connected to {event.welcome.server_name} {event.welcome.server_version}"
            if event.welcome.demo:
                self.connection += " (demo model)"
            if self._error_is_connection:  # the server is reachable now: that failure is over
                self._set_error("")
            return []
        if isinstance(event, ModelList):
            self.models = event.models
            return []
        if isinstance(event, Disconnected):
            self.connection = event.reason
            self.reconnecting = event.will_retry
        elif isinstance(event, ConnectFailed):
            self.connection = event.reason
            self.reconnecting = False
            outcomes = self._follow([o for job_id in list(self._book.jobs)
                                     for o in self._book.end(job_id, EndKind.FAILED, event.reason)], raw=True)
            self._set_error(event.reason, connection=True)
            return outcomes
        elif isinstance(event, Submitted):
            self._book.sent(event.job_id, event.job)
            return []
        elif isinstance(event, ErrorEvent) and event.ref not in self._book:
            self._set_error(f"server error: {event.message}")  # an error about no job of ours
            return []
        outcomes = self._follow(self._book.handle(event))
        if isinstance(event, Disconnected) and not event.will_retry and outcomes:
            self._set_error(outcomes[-1].message if isinstance(outcomes[-1], Ended) else self.last_error,
                            connection=True)
        return outcomes

    def _follow(self, outcomes: list[kit.Outcome[OpenJob]], raw: bool = False) -> list[Outcome]:
        """Blender's outcomes (and history entries) for the book's. ``raw``: the reason is already
        the panel's sentence."""
        out: list[Outcome] = []
        for outcome in outcomes:
            job = outcome.job.context
            if isinstance(outcome, kit.Previewed):
                p = outcome.preview
                out.append(Preview(job, p.step, p.total, p.width, p.height, p.jpeg))
            elif isinstance(outcome, kit.Finished):
                self._book.release(job.job_id)
                done = Finished(job, tuple(outcome.result.images), outcome.result.finished.seed)
                self._record(job, Status.RECEIVED, "", done.images, done.seed)
                out.append(done)
            elif isinstance(outcome, kit.Ended):
                message = outcome.reason if raw else _message(outcome)
                cancelled, lost = outcome.kind is EndKind.CANCELLED, outcome.kind is EndKind.LOST
                if not cancelled:
                    self._set_error(message)
                status = Status.CANCELLED if cancelled else Status.LOST if lost else Status.FAILED
                self._record(job, status, "" if cancelled else message)
                out.append(Ended(job, "cancelled" if cancelled and raw else message, cancelled, lost))
        return out
