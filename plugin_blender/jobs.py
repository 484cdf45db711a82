"""The plugin's view of its jobs: transport events in, outcomes for the host out. No ``bpy`` here.

The host's main-thread dispatcher polls the connection, feeds every event to
:meth:`JobBook.handle`, and applies what comes back — :class:`Preview`, :class:`Finished`,
:class:`Ended` — to the scene. The book keeps the open jobs (with the host data each result needs),
the connection status line the panel shows, the server's models, and a short history of finished
requests.
"""
from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterable

from .connection import ConnectFailed, SubmitFailed
from .protocol import (
    ErrorEvent, JobAccepted, JobCancelled, JobFailed, JobResult, JobStarted, ModelInfo, ModelList,
    QueuePosition, StepPreview, Welcome,
)
from .protocol.transport import Connected, Disconnected, JobLost
from .request import GenerationRequest

#: Open jobs the plugin allows at once (the server queues; this keeps a runaway click in check).
MAX_OPEN_JOBS = 4
#: Finished requests remembered for "run again" and inspection.
HISTORY = 8


class JobKind(str, Enum):
    TEXTURE = "texture_from_depth"
    REFINE = "refine_render"


class BusyError(RuntimeError):
    """Too many jobs are open; wait for one to finish or cancel it."""


@dataclass
class OpenJob:
    """A job sent and not yet ended. ``context`` is the host's data for applying the result
    (object names, the camera…): opaque to the book."""

    job_id: str
    kind: JobKind
    request: GenerationRequest
    context: dict[str, Any] = field(default_factory=dict)
    phase: str = "sending"
    step: int = 0
    total: int = 0
    queue_position: int = 0


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
    """The job failed or was cancelled; ``message`` is for the user."""

    job: OpenJob
    message: str
    cancelled: bool = False


Outcome = Preview | Finished | Ended


class JobBook:
    def __init__(self, max_open: int = MAX_OPEN_JOBS, history: int = HISTORY) -> None:
        self.max_open = max_open
        self.jobs: dict[str, OpenJob] = {}
        self.history: deque[Finished] = deque(maxlen=history)
        self.welcome: Welcome | None = None
        self.models: tuple[ModelInfo, ...] = ()
        self.connection = "not connected"
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

    def last(self, kind: JobKind) -> Finished | None:
        """The most recent finished job of ``kind``."""
        return next((done for done in reversed(self.history) if done.job.kind is kind), None)

    # -- status for the panel

    @property
    def status(self) -> str:
        if self.jobs:
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

    def _end(self, job_id: str, message: str, cancelled: bool = False) -> list[Outcome]:
        job = self.jobs.pop(job_id, None)
        if job is None:
            return []
        if not cancelled:
            self.last_error = message
        return [Ended(job, message, cancelled)]

    def cancel(self, job_id: str) -> list[Outcome]:
        """End ``job_id`` here as cancelled (its later events are ignored)."""
        return self._end(job_id, "cancelled", cancelled=True)

    def fail_all(self, message: str) -> list[Outcome]:
        return [outcome for job_id in list(self.jobs) for outcome in self._end(job_id, message)]

    def _handle(self, event: Any) -> list[Outcome]:
        job = self.jobs.get(getattr(event, "job_id", "") or "")
        if isinstance(event, Connected):
            self.welcome = event.welcome
            self.models = event.welcome.capabilities.models
            self.connection = f"connected to {event.welcome.server_name} {event.welcome.server_version}"
            if event.welcome.demo:
                self.connection += " (demo model)"
            return []
        if isinstance(event, ModelList):
            self.models = event.models
            return []
        if isinstance(event, Disconnected):
            self.connection = event.reason
            if event.will_retry:
                return []
            return self.fail_all(f"lost the Easel server: {event.reason}")
        if isinstance(event, ConnectFailed):
            self.connection = event.reason
            return self.fail_all(event.reason)
        if isinstance(event, SubmitFailed):
            return self._end(event.job_id, event.reason)
        if isinstance(event, JobLost):
            return self._end(event.job_id, "the server restarted and lost this job; run it again")
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
            self.history.append(done)
            return [done]
        elif isinstance(event, JobFailed):
            detail = f" (log id {event.log_id})" if event.log_id else ""
            return self._end(job.job_id, f"{event.message}{detail}")
        elif isinstance(event, JobCancelled):
            return self._end(job.job_id, f"cancelled ({event.reason})", cancelled=True)
        return []
