"""The plugin's view of its jobs: transport events in, outcomes for the host out. No ``bpy`` here.

The host's main-thread dispatcher polls the connection, feeds every event to
:meth:`JobBook.handle`, and applies what comes back — :class:`Preview`, :class:`Finished`,
:class:`Ended` — to the scene. The book keeps the open jobs (with the host data each result needs),
the connection status line the panel shows, the server's models, and a short **history**: one
:class:`HistoryEntry` per ended job with its :class:`Status` and a sentence.

A result is never dropped once it arrived whole. :meth:`JobBook.handle` records it as
``received`` before the host sees it; the host then :meth:`~JobBook.settle`\ s it as ``applied``,
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

from .connection import ConnectFailed, SubmitFailed, Submitted
from .protocol import (
    ErrorEvent, JobAccepted, JobCancelled, JobFailed, JobResult, JobStarted, ModelInfo, ModelList,
    QueuePosition, StepPreview, SubmitJob, Welcome,
)
from .protocol.transport import Connected, Disconnected, JobLost
from .request import GenerationRequest

#: Open jobs the plugin allows at once (the server queues; this keeps a runaway click in check).
MAX_OPEN_JOBS = 4
#: Ended jobs remembered in the history (the panel lists them; kept results can be applied).
HISTORY = 8
#: Result bytes the history holds. Past it, applied results (already in the .blend) drop their
#: bytes first, oldest first; a kept result is dropped only when nothing else is left to drop.
HISTORY_BYTES = 512 * 1024 * 1024


class JobKind(str, Enum):
    TEXTURE = "texture_from_depth"
    REFINE = "refine_render"


class Status(str, Enum):
    """How a job ended, as the history shows it."""

    RECEIVED = "received"    # the result is here; the host has not applied it yet
    APPLIED = "applied"
    KEPT = "kept"            # the result is here but was not applied (the message says why)
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"            # the connection dropped and the job did not survive it


class BusyError(RuntimeError):
    """Too many jobs are open; wait for one to finish or cancel it."""


@dataclass
class OpenJob:
    """A job sent and not yet ended. ``context`` is the host's data for applying the result
    (object names, the camera…): opaque to the book. ``sent`` is the ``SubmitJob`` exactly as it
    went to the server (ControlNets picked), once it has."""

    job_id: str
    kind: JobKind
    request: GenerationRequest
    context: dict[str, Any] = field(default_factory=dict)
    phase: str = "sending"
    step: int = 0
    total: int = 0
    queue_position: int = 0
    sent: SubmitJob | None = None


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
    images: tuple[Any, ...]   # protocol ImagePayloads, lossless
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
class HistoryEntry:
    """One ended job. ``images``/``seed`` hold its result while the history keeps it."""

    job: OpenJob
    status: Status
    message: str = ""
    images: tuple[Any, ...] = ()
    seed: int = 0

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def can_apply(self) -> bool:
        """A result that arrived and was not applied, still held here."""
        return self.status is Status.KEPT and bool(self.images)

    @property
    def result_bytes(self) -> int:
        return sum(len(image.data) for image in self.images)

    @property
    def label(self) -> str:
        """One line for the panel: what, which seed, how it ended."""
        what = "texture" if self.job.kind is JobKind.TEXTURE else "refine"
        seed = f" {self.seed}" if self.images or self.seed else ""
        return f"{what}{seed}: {self.status.value}" + (f" — {self.message}" if self.message else "")


class JobBook:
    def __init__(self, max_open: int = MAX_OPEN_JOBS, history: int = HISTORY,
                 history_bytes: int = HISTORY_BYTES) -> None:
        self.max_open = max_open
        self.max_history = history
        self.max_history_bytes = history_bytes
        self.jobs: dict[str, OpenJob] = {}
        #: Ended jobs, oldest first (at most ``history``).
        self.history: list[HistoryEntry] = []
        self.welcome: Welcome | None = None
        self.models: tuple[ModelInfo, ...] = ()
        self.preprocessors: tuple[str, ...] | None = None
        self.connection = "not connected"
        #: True between a drop and the reconnect (open jobs then wait for the server to resume them).
        self.reconnecting = False
        #: The last failure, for the panel (cleared by the next job).
        self.last_error = ""
        #: What the last finished job did, for the panel (cleared by the next job).
        self.notice = ""

    # -- opening

    def open(self, kind: JobKind, request: GenerationRequest, context: dict[str, Any] | None = None) -> OpenJob:
        """Register a job before it is sent. Raises :class:`BusyError` past ``max_open``."""
        if len(self.jobs) >= self.max_open:
            raise BusyError(f"{len(self.jobs)} Easel jobs are already running; wait or cancel one")
        job = OpenJob(f"{kind.value}-{uuid.uuid4().hex[:12]}", kind, request, dict(context or {}))
        self.jobs[job.job_id] = job
        self.last_error = self.notice = ""
        return job

    def busy(self, kind: JobKind | None = None) -> bool:
        return any(kind is None or job.kind is kind for job in self.jobs.values())

    # -- history

    def entry(self, job_id: str) -> HistoryEntry | None:
        return next((e for e in self.history if e.job_id == job_id), None)

    def last(self, kind: JobKind) -> HistoryEntry | None:
        """The most recent job of ``kind`` that brought a result (applied or kept)."""
        return next((e for e in reversed(self.history) if e.job.kind is kind and e.images), None)

    def kept(self) -> list[HistoryEntry]:
        """Results that arrived and wait to be applied, newest first."""
        return [e for e in reversed(self.history) if e.can_apply]

    def settle(self, job_id: str, status: Status, message: str = "") -> HistoryEntry | None:
        """Record what the host did with a received result: ``applied`` (``message``: what it did)
        or ``kept`` (``message``: why not, and what to do)."""
        entry = self.entry(job_id)
        if entry is None:
            return None
        entry.status, entry.message = status, message
        if status is Status.KEPT:
            self.last_error = message
        elif status is Status.APPLIED:
            self.notice = message
        self._bound_history()
        return entry

    def _record(self, entry: HistoryEntry) -> None:
        self.history.append(entry)
        self._bound_history()

    def _bound_history(self) -> None:
        while len(self.history) > self.max_history:
            # Drop the oldest entry that holds nothing waiting; a kept result only as a last resort.
            victim = next((e for e in self.history if not e.can_apply and e.status is not Status.RECEIVED),
                          self.history[0])
            self.history.remove(victim)
        total = sum(e.result_bytes for e in self.history)
        for entry in [e for e in self.history if e.status is Status.APPLIED] + \
                [e for e in self.history if e.status is Status.KEPT]:
            if total <= self.max_history_bytes:
                break
            total -= entry.result_bytes
            if entry.status is Status.KEPT:
                entry.message += "; its image was dropped from memory (too many results held)"
            entry.images = ()

    # -- status for the panel

    @property
    def status(self) -> str:
        if self.jobs:
            if self.reconnecting:
                return f"connection lost; reconnecting ({len(self.jobs)} job(s) wait for their results)"
            job = next(iter(self.jobs.values()))
            if job.phase == "running" and job.total:
                return f"step {job.step} of {job.total}"
            if job.phase == "queued":
                return "queued" if job.queue_position == 0 else f"queued, {job.queue_position} ahead"
            return job.phase
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

    def _end(self, job_id: str, message: str, cancelled: bool = False, lost: bool = False) -> list[Outcome]:
        job = self.jobs.pop(job_id, None)
        if job is None:
            return []
        if not cancelled:
            self.last_error = message
        status = Status.CANCELLED if cancelled else Status.LOST if lost else Status.FAILED
        self._record(HistoryEntry(job, status, "" if cancelled else message))
        return [Ended(job, message, cancelled, lost)]

    def cancel(self, job_id: str) -> list[Outcome]:
        """End ``job_id`` here as cancelled (its later events are ignored)."""
        return self._end(job_id, "cancelled", cancelled=True)

    def fail_all(self, message: str, lost: bool = False) -> list[Outcome]:
        return [outcome for job_id in list(self.jobs) for outcome in self._end(job_id, message, lost=lost)]

    def _handle(self, event: Any) -> list[Outcome]:
        job = self.jobs.get(getattr(event, "job_id", "") or "")
        if isinstance(event, Connected):
            self.welcome = event.welcome
            self.models = event.welcome.capabilities.models
            self.preprocessors = event.welcome.capabilities.preprocessors
            self.reconnecting = False
            self.connection = f"connected to {event.welcome.server_name} {event.welcome.server_version}"
            if event.welcome.demo:
                self.connection += " (demo model)"
            return []
        if isinstance(event, ModelList):
            self.models = event.models
            return []
        if isinstance(event, Disconnected):
            self.connection = event.reason
            self.reconnecting = event.will_retry
            if event.will_retry:
                return []  # open jobs wait: the transport reconnects and the server resumes them
            return self.fail_all(f"lost the Easel server: {event.reason}", lost=True)
        if isinstance(event, ConnectFailed):
            self.connection = event.reason
            self.reconnecting = False
            return self.fail_all(event.reason)
        if isinstance(event, SubmitFailed):
            return self._end(event.job_id, event.reason)
        if isinstance(event, Submitted):
            if job is not None:
                job.sent = event.job
            return []
        if isinstance(event, JobLost):
            return self._end(event.job_id, "the connection dropped and the server no longer had this job "
                                           "(it restarted, or the job waited too long); run it again", lost=True)
        if isinstance(event, ErrorEvent):
            message = f"server error: {event.message}"
            if event.ref in self.jobs:
                return self._end(event.ref, message)
            self.last_error = message
            return []
        if job is None:
            return []  # an event of a job we already ended (cancelled, failed): nothing to apply
        if isinstance(event, JobAccepted | QueuePosition):
            job.phase, job.queue_position = "queued", event.queue_position
        elif isinstance(event, JobStarted):
            job.phase, job.total = "running", event.steps
        elif isinstance(event, StepPreview):
            job.phase, job.step, job.total = "running", event.step, event.total
            return [Preview(job, event.step, event.total, event.width, event.height, event.jpeg)]
        elif isinstance(event, JobResult):
            self.jobs.pop(job.job_id, None)
            done = Finished(job, tuple(event.images), event.finished.seed)
            self._record(HistoryEntry(job, Status.RECEIVED, "", done.images, done.seed))
            return [done]
        elif isinstance(event, JobFailed):
            detail = f" (log id {event.log_id})" if event.log_id else ""
            return self._end(job.job_id, f"{event.message}{detail}")
        elif isinstance(event, JobCancelled):
            if event.reason in ("disconnected", "shutdown"):
                return self._end(job.job_id, f"the server cancelled it ({event.reason}); run it again", lost=True)
            return self._end(job.job_id, f"cancelled ({event.reason})", cancelled=True)
        return []
