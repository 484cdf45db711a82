"""The job book: every open job of one client, from submit to its single end.

A host opens a job here before it sends it (:meth:`JobBook.open`), tells the book when it handed
the job to its link (:meth:`JobBook.sent`), and feeds the book every event its link delivers
(:meth:`JobBook.handle`). What comes back are outcomes: :class:`Progressed`, :class:`Previewed`,
:class:`Finished` and, exactly once per job that does not finish, :class:`Ended`. This is the only
code on the client that turns ``job_failed``, an ``error`` naming a job, ``job_cancelled``, a job
the server no longer has after a reconnect, a job left on another server and a job that could not
be sent into outcomes; hosts word and apply them.

A finished job stays open in the phase ``applying`` until the host :meth:`~JobBook.release`\\ s it
(a host that places its result over several steps keeps it counted meanwhile); a drop of the
connection never ends it. Not thread-safe: use it from one thread (the host's main thread).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, Iterable, TypeVar

from protocol import (
    TERMINAL_EVENTS, ErrorCode, ErrorEvent, JobAccepted, JobCancelled, JobFailed, JobStarted, QueuePosition,
    StepPreview, SubmitJob,
)
from protocol.session import JobResult
from protocol.transport import Disconnected, JobLost

from . import wording
from .events import JobLeftBehind, SubmitFailed

C = TypeVar("C")

#: ``job_cancelled`` reasons that mean the job was not the user's to stop: it is lost, not cancelled.
LOST_REASONS = ("disconnected", "shutdown")


class Phase(str, Enum):
    PREPARING = "preparing"  # opened; the host is still reading its inputs
    SENDING = "sending"      # handed to the link
    QUEUED = "queued"
    RUNNING = "running"
    APPLYING = "applying"    # the result is here; the host places it, then releases the job


class EndKind(str, Enum):
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"


class BusyError(RuntimeError):
    """Too many jobs are open; wait for one to end or cancel it."""


@dataclass
class OpenJob(Generic[C]):
    """A job opened and not ended. ``context`` is the host's own data for it (opaque here)."""

    job_id: str
    context: C
    phase: Phase = Phase.PREPARING
    step: int = 0
    total: int = 0
    queue_position: int = 0
    seed: int | None = None
    #: The ``SubmitJob`` exactly as it went to the link, once it has.
    submitted: SubmitJob | None = None

    @property
    def fraction(self) -> float:
        if self.phase is Phase.APPLYING:
            return 1.0
        return self.step / self.total if self.total else 0.0


@dataclass(frozen=True)
class Progressed(Generic[C]):
    """Queued, moved in the queue, or started (``job.phase`` and counters are updated)."""

    job: OpenJob[C]


@dataclass(frozen=True)
class Previewed(Generic[C]):
    job: OpenJob[C]
    preview: StepPreview


@dataclass(frozen=True)
class Finished(Generic[C]):
    """The result arrived whole (``job.phase`` is ``applying`` until the host releases it)."""

    job: OpenJob[C]
    result: JobResult

    @property
    def seeds(self) -> tuple[int, ...]:
        finished = self.result.finished
        return tuple(finished.seeds) or (finished.seed,)


@dataclass(frozen=True)
class Ended(Generic[C]):
    """The job ended without a result. ``reason`` is a fragment (the server's sentence, or why it
    was lost); :meth:`sentence` words it with the host's label for the action."""

    job: OpenJob[C]
    kind: EndKind
    reason: str
    code: ErrorCode | None = None
    log_id: str = ""

    def sentence(self, action_label: str, lost_next_step: str = "Nothing changed; run it again") -> str:
        if self.kind is EndKind.CANCELLED:
            return wording.cancelled(action_label, self.reason)
        if self.kind is EndKind.LOST:
            return wording.job_lost(action_label, self.reason, lost_next_step)
        if self.code is None:
            return wording.not_sent(action_label, self.reason)
        return wording.job_failed(action_label, self.code, self.reason, self.log_id)


Outcome = Progressed[C] | Previewed[C] | Finished[C] | Ended[C]


class JobBook(Generic[C]):
    """The open jobs of one client. ``max_open`` bounds them (``None``: the server's
    ``max_client_jobs``, once :meth:`learn_limits` saw a welcome)."""

    def __init__(self, max_open: int | None = None) -> None:
        self.max_open = max_open
        self.jobs: dict[str, OpenJob[C]] = {}

    def __contains__(self, job_id: object) -> bool:
        return job_id in self.jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def get(self, job_id: str) -> OpenJob[C] | None:
        return self.jobs.get(job_id)

    def learn_limits(self, max_client_jobs: int) -> None:
        """The server's bound on one client's open jobs (from ``welcome``), unless the host set its own."""
        if self.max_open is None or self.max_open > max_client_jobs:
            self.max_open = max_client_jobs

    # -- the host's side

    def open(self, job_id: str, context: C) -> OpenJob[C]:
        """Register a job before it is sent. Raises :class:`BusyError` past ``max_open`` and
        ``ValueError`` for an id already open."""
        if job_id in self.jobs:
            raise ValueError(f"job {job_id!r} is already open")
        if self.max_open is not None and len(self.jobs) >= self.max_open:
            raise BusyError(f"{len(self.jobs)} Easel jobs are already running; wait or cancel one")
        job = self.jobs[job_id] = OpenJob(job_id, context)
        return job

    def sent(self, job_id: str, submitted: SubmitJob | None = None) -> None:
        """The job was handed to the link (``submitted``: as it went, when the host knows it)."""
        job = self.jobs.get(job_id)
        if job is not None:
            job.phase = Phase.SENDING if job.phase is Phase.PREPARING else job.phase
            job.submitted = submitted or job.submitted

    def end(self, job_id: str, kind: EndKind, reason: str) -> list[Outcome[C]]:
        """End a job on the host's side (cancelled before it was sent, its inputs could not be
        read, the user cancelled and will not wait for the server). Its later events are ignored."""
        return self._end(job_id, kind, reason)

    def release(self, job_id: str) -> OpenJob[C] | None:
        """Forget a finished job once its result is placed (or kept)."""
        return self.jobs.pop(job_id, None)

    def lose_all(self, reason: str) -> list[Outcome[C]]:
        """Every job whose result was still to come ends as lost (the host closes, the URL changed)."""
        return [o for job in list(self.jobs.values()) if job.phase is not Phase.APPLYING
                for o in self._end(job.job_id, EndKind.LOST, reason)]

    # -- the link's side

    def handle_all(self, events: Iterable[Any]) -> list[Outcome[C]]:
        return [outcome for event in events for outcome in self.handle(event)]

    def handle(self, event: Any) -> list[Outcome[C]]:
        """The outcomes of one event from the link (none for events that are not about a job
        this book holds)."""
        if isinstance(event, Disconnected):
            if event.will_retry:
                return []  # open jobs wait: the link reconnects and the server resumes them
            return [o for job in list(self.jobs.values()) if job.phase not in (Phase.PREPARING, Phase.APPLYING)
                    for o in self._end(job.job_id, EndKind.LOST, wording.CONNECTION_CLOSED)]
        if isinstance(event, ErrorEvent):
            if event.ref in self.jobs:  # a refused submit_job: the job's end
                return self._end(event.ref, EndKind.FAILED, event.message, event.code, event.log_id)
            return []
        job = self.jobs.get(getattr(event, "job_id", None) or "")
        if job is None:
            return []  # an event of a job already ended here (cancelled while its result was on the way)
        if isinstance(event, TERMINAL_EVENTS):
            if isinstance(event, JobFailed):
                return self._end(job.job_id, EndKind.FAILED, event.message, event.code, event.log_id)
            if isinstance(event, JobCancelled):
                kind = EndKind.LOST if event.reason in LOST_REASONS else EndKind.CANCELLED
                reason = f"the server cancelled it ({event.reason})" if kind is EndKind.LOST else event.reason
                return self._end(job.job_id, kind, reason)
        if isinstance(event, JobResult):
            if job.phase is Phase.APPLYING:
                return []  # sent again after a reconnect: the first copy is being placed
            job.phase, job.step = Phase.APPLYING, job.total
            job.seed = event.finished.seed
            return [Finished(job, event)]
        if isinstance(event, JobLost):
            return self._end(job.job_id, EndKind.LOST, wording.SERVER_RESTARTED)
        if isinstance(event, JobLeftBehind):
            return self._end(job.job_id, EndKind.LOST, wording.left_behind(event.url))
        if isinstance(event, SubmitFailed):
            return self._end(job.job_id, EndKind.FAILED, event.message)
        if job.phase is Phase.APPLYING:
            return []
        if isinstance(event, JobAccepted):
            job.phase, job.queue_position = Phase.QUEUED, event.queue_position
        elif isinstance(event, QueuePosition):
            job.queue_position = event.queue_position
        elif isinstance(event, JobStarted):
            job.phase, job.total, job.seed = Phase.RUNNING, event.steps, event.seed
        elif isinstance(event, StepPreview):
            job.phase, job.step, job.total = Phase.RUNNING, event.step, event.total
            return [Previewed(job, event)]
        else:
            return []
        return [Progressed(job)]

    def _end(self, job_id: str, kind: EndKind, reason: str, code: ErrorCode | None = None,
             log_id: str = "") -> list[Outcome[C]]:
        job = self.jobs.pop(job_id, None)
        if job is None:
            return []
        return [Ended(job, kind, reason, code, log_id)]
