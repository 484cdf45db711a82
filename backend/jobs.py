"""Jobs, the bounded queue in front of the device, and the worker thread that owns the device.

Threads: everything here except :class:`Worker`'s thread runs on the server's event loop and is
not locked. The worker thread only calls the engine and hands results back with
``loop.call_soon_threadsafe``; the loop hands it one job at a time, when it is idle, so the queue
(positions, cancel-while-queued) never needs a lock.

A job's life: :meth:`Scheduler.submit` (queued, or ``QueueFull``) → the loop gives it to the
worker (``listener.job_started``) → previews → exactly one of ``job_finished``, ``job_failed`` or
``job_cancelled`` on the :class:`JobListener`. A queued job that is cancelled gets
``job_cancelled`` at once and never starts.

Live jobs (``JobParams.live``): each client has a *live channel* of at most one running and one
pending (queued) live job. A newer live job takes the pending one's place in the queue (which
ends at once, ``superseded``) and cancels the running one at its next step (also
``superseded``): see :func:`live_jobs` and ``Scheduler.submit(replacing=...)``. Live jobs wait in
their client's line like every other job (:class:`JobQueue` serves clients round-robin); a
client's stale live jobs never wait in it.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

from protocol import ErrorCode, SubmitJob

from .errors import JobCancelledError, JobError

log = logging.getLogger("easel.jobs")

#: Reasons a job is cancelled, as sent in ``job_cancelled``.
REQUESTED, DISCONNECTED, SHUTDOWN, SUPERSEDED = "requested", "disconnected", "shutdown", "superseded"


def printable(text: str, limit: int = 128) -> str:
    """Peer-sent text made safe for one log line: control characters replaced, length capped."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def new_log_id() -> str:
    """A short id that ties a message a user sees to the lines (and traceback) in the server log."""
    return secrets.token_hex(4)


@dataclass(eq=False)
class Job:
    """One accepted job. ``key`` (``client/job``) names it in the log.

    ``prepared`` is whatever ``Engine.prepare`` returned; ``cancel`` is the flag the worker's
    progress object reports as ``cancelled()``.
    """

    client_id: str
    job_id: str
    submit: SubmitJob
    prepared: Any
    accepted_at: float = field(default_factory=time.perf_counter)
    started_at: float = 0.0
    cancel: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str = REQUESTED
    state: str = "queued"  # queued → running → done
    #: Seconds ``engine.run`` took on the worker (set when it returns).
    run_seconds: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.client_id}/{printable(self.job_id)}"

    @property
    def previews(self) -> bool:
        return self.submit.params.previews

    @property
    def live(self) -> bool:
        return self.submit.params.live


def live_jobs(jobs: Iterable[Job]) -> tuple[Job | None, Job | None]:
    """One client's live channel among its open ``jobs``: (the pending live job — queued,
    not yet started —, the running live job that is not already being cancelled). Either may be
    ``None``. A new live job replaces the first and cancels the second."""
    pending = running = None
    for job in jobs:
        if not job.live or job.cancel.is_set():
            continue
        if job.state == "queued":
            pending = job
        elif job.state == "running":
            running = job
    return pending, running


class JobListener(Protocol):
    """Where a job's events go (the server routes them to the job's client). Called on the loop."""

    def job_started(self, job: Job) -> None: ...
    def job_position(self, job: Job, position: int) -> None: ...
    def job_preview(self, job: Job, step: int, total: int, width: int, height: int, jpeg: bytes) -> None: ...
    def job_finished(self, job: Job, output: Any) -> None: ...
    def job_failed(self, job: Job, code: ErrorCode, message: str, log_id: str, details: dict | None) -> None: ...
    def job_cancelled(self, job: Job, reason: str) -> None: ...


class QueueFull(Exception):
    """The queue holds ``capacity`` waiting jobs already."""

    def __init__(self, length: int, capacity: int) -> None:
        super().__init__(f"{length} jobs are waiting, the most this server queues is {capacity}")
        self.length = length
        self.capacity = capacity


class ShuttingDown(Exception):
    """The scheduler no longer takes jobs."""


class JobQueue:
    """Jobs waiting for the device, served round-robin across clients. Bounded; position 0 runs next.
    Loop thread only.

    Each client's jobs wait in their own FIFO; :meth:`pop` takes the head of the next client in
    turn, and that client goes to the back of the turn order, so a client that queued many jobs
    delays another client by at most one job of its own. A client that enters the queue goes in
    front of the client served last. Positions (:meth:`position`, :meth:`after`, iteration) are
    this service order.

    Admission: ``capacity`` jobs wait in all, except that a client with no job waiting may always
    queue one (so no client is starved by others filling the queue; their number is bounded by
    the server's connections). The per-client bound on open jobs is the server's, not this class's.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a queue holds at least one job")
        self.capacity = capacity
        self._waiting: dict[str, deque[Job]] = {}
        self._turns: list[str] = []  # clients with waiting jobs, next to serve first
        self._last_served: str | None = None
        self._length = 0

    def __len__(self) -> int:
        return self._length

    def __iter__(self):
        return iter(self._order())

    def waiting(self, client_id: str) -> int:
        """Jobs of ``client_id`` waiting."""
        return len(self._waiting.get(client_id, ()))

    def admits(self, client_id: str) -> bool:
        """Whether :meth:`push` would take a job of ``client_id`` now."""
        return self._length < self.capacity or not self.waiting(client_id)

    def push(self, job: Job) -> int:
        """Queue ``job`` behind its client's waiting jobs; returns its position. Raises
        :class:`QueueFull` when the queue holds ``capacity`` jobs and the client has one waiting."""
        if not self.admits(job.client_id):
            raise QueueFull(self._length, self.capacity)
        jobs = self._waiting.get(job.client_id)
        if jobs is None:
            jobs = self._waiting[job.client_id] = deque()
            last = len(self._turns)
            if self._turns and self._turns[-1] == self._last_served:
                last -= 1  # the client served last waits behind a newcomer
            self._turns.insert(last, job.client_id)
        jobs.append(job)
        self._length += 1
        return self.position(job)  # type: ignore[return-value]

    def remove(self, job: Job) -> int | None:
        """Take ``job`` out; returns the position it had, or ``None`` if it was not waiting."""
        position = self.position(job)
        if position is None:
            return None
        jobs = self._waiting[job.client_id]
        jobs.remove(job)
        self._length -= 1
        if not jobs:
            self._forget(job.client_id)
        return position

    def replace(self, old: Job, new: Job) -> int | None:
        """Put ``new`` where ``old`` waits (the same client's); returns that position, or ``None``
        (nothing changed) if ``old`` is not waiting. Never raises :class:`QueueFull`."""
        jobs = self._waiting.get(old.client_id)
        if jobs is None or old not in jobs or new.client_id != old.client_id:
            return None
        jobs[jobs.index(old)] = new
        return self.position(new)

    def pop(self) -> Job | None:
        """The next job in turn, taken out of the queue; ``None`` when none waits."""
        if not self._turns:
            return None
        client_id = self._turns.pop(0)
        jobs = self._waiting[client_id]
        job = jobs.popleft()
        self._length -= 1
        if jobs:
            self._turns.append(client_id)
        else:
            del self._waiting[client_id]
        self._last_served = client_id
        return job

    def position(self, job: Job) -> int | None:
        """``job``'s position (0: runs next), or ``None`` if it is not waiting."""
        jobs = self._waiting.get(job.client_id)
        if jobs is None or job not in jobs:
            return None
        return self._order().index(job)

    def after(self, index: int) -> list[tuple[Job, int]]:
        """Jobs from position ``index`` on, with their positions."""
        return [(job, i) for i, job in enumerate(self._order()) if i >= index]

    def _order(self) -> list[Job]:
        """Every waiting job in the order :meth:`pop` would take them (O(jobs))."""
        order: list[Job] = []
        queues = [list(self._waiting[c]) for c in self._turns]
        for depth in range(max((len(q) for q in queues), default=0)):
            order += [q[depth] for q in queues if depth < len(q)]
        return order

    def _forget(self, client_id: str) -> None:
        del self._waiting[client_id]
        self._turns.remove(client_id)


#: Outcome of a job cancelled after the loop handed it over but before the engine started it.
_CANCELLED = object()

_FAILED_INTERNAL = "the server hit an unexpected error while running the job; it keeps serving. Quote log id {log_id} when reporting it"


class _Progress:
    """What ``Engine.run`` reports progress to, on the worker thread."""

    __slots__ = ("_job", "_worker", "steps")

    def __init__(self, job: Job, worker: "Worker") -> None:
        self._job = job
        self._worker = worker
        self.steps = 0

    def cancelled(self) -> bool:
        return self._job.cancel.is_set()

    def step(self, step: int, total: int, latents: Any = None) -> None:
        """A denoising step finished (the engine makes the preview and calls :meth:`preview`)."""
        self.steps = step

    def wants_preview(self) -> bool:
        """Whether a preview would reach anyone (the client asked for them; the job is live)."""
        return self._job.previews and not self._job.cancel.is_set()

    def preview(self, step: int, total: int, width: int, height: int, jpeg: bytes) -> None:
        if self.wants_preview():
            self._worker.post(self._worker.scheduler._preview, self._job, step, total, width, height, jpeg)


class Worker:
    """The thread that owns the device: runs one job at a time through ``engine.run``.

    It never touches the queue or a session; it posts outcomes to the loop. Start with
    :meth:`start`, stop with :meth:`stop` (after the running job ended).
    """

    def __init__(self, engine: Any, scheduler: "Scheduler", loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self.scheduler = scheduler
        self.loop = loop
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name="easel-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def give(self, job: Job | Callable[[], None]) -> None:
        self._inbox.put(job)

    def stop(self) -> None:
        self._inbox.put(None)

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def post(self, callback: Any, *args: Any) -> None:
        """Run ``callback(*args)`` on the loop; dropped once the loop has closed (shutdown)."""
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass

    def _main(self) -> None:
        while True:
            job = self._inbox.get()
            if job is None:
                return
            if callable(job):  # a warm-up task (Scheduler.start)
                try:
                    job()
                except JobError as exc:
                    log.warning("could not load the first model at start: %s", exc.message)
                except BaseException:  # the worker outlives anything a model load throws
                    log.warning("could not load the first model at start; its first job will try again", exc_info=True)
                self.post(self.scheduler._warmed)
                continue
            try:
                outcome = self._run(job)
            except BaseException:  # SystemExit and the like from library code: fail the job, keep the device
                log_id = new_log_id()
                log.error("job %s stopped the worker's run [log %s]", job.key, log_id, exc_info=True)
                outcome = JobError(ErrorCode.INTERNAL, _FAILED_INTERNAL.format(log_id=log_id), {"log_id": log_id})
            self.post(self.scheduler._done, job, outcome)

    def _run(self, job: Job) -> Any:
        """The job's outcome: the engine's output, or a :class:`JobError`/:class:`JobCancelledError`."""
        if job.cancel.is_set():
            return _CANCELLED
        start = time.perf_counter()
        try:
            output = self.engine.run(job.prepared, _Progress(job, self))
            job.run_seconds = time.perf_counter() - start
            for image in output.images:
                image.id  # hash here, off the loop (ids are remembered by the payload)
            return output
        except JobCancelledError as exc:
            return exc
        except JobError as exc:
            return exc
        except Exception as exc:  # one job's crash must not take the worker down
            log_id = new_log_id()
            if _is_out_of_memory(exc):
                log.warning("job %s ran out of device memory [log %s]: %s", job.key, log_id, exc)
                return JobError(ErrorCode.OUT_OF_MEMORY,
                                "the device ran out of memory; use a smaller size or batch, or a smaller model "
                                "(on a GPU, --dtype fp16 also helps)", {"log_id": log_id})
            log.error("job %s failed with an unexpected error [log %s]", job.key, log_id, exc_info=True)
            return JobError(ErrorCode.INTERNAL, _FAILED_INTERNAL.format(log_id=log_id), {"log_id": log_id})


def _is_out_of_memory(exc: BaseException) -> bool:
    # torch.OutOfMemoryError (CUDA) and MPS' RuntimeError("... out of memory ..."), without importing torch here.
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


class Scheduler:
    """The queue plus the device's worker, driven from the event loop.

    ``submit`` queues a prepared job (raises :class:`QueueFull` or :class:`ShuttingDown`);
    ``cancel`` removes a queued job or stops a running one within one step; ``close`` refuses new
    jobs, cancels (or drains) the rest and stops the worker.
    """

    def __init__(self, engine: Any, listener: JobListener, *, capacity: int) -> None:
        self.engine = engine
        self.listener = listener
        self.queue = JobQueue(capacity)
        self.running: Job | None = None
        self.warming = False
        self.closing = False
        self._worker: Worker | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self, warm_up: Callable[[], None] | None = None) -> None:
        """Start the worker thread. Call on the loop that will drive this scheduler.

        ``warm_up`` (loading the default model, say) runs on the worker first; jobs submitted
        meanwhile wait in the queue, their positions counted as if a job were running.
        """
        self._worker = Worker(self.engine, self, asyncio.get_running_loop())
        self._worker.start()
        if warm_up is not None:
            self.warming = True
            self._idle.clear()
            self._worker.give(warm_up)

    def _warmed(self) -> None:
        self.warming = False
        self._pump()

    @property
    def length(self) -> int:
        """Jobs waiting, not counting the one running."""
        return len(self.queue)

    def submit(self, job: Job, *, replacing: Job | None = None) -> int:
        """Queue ``job``; returns its position (0: runs next). The listener gets ``job_started``
        later, from the loop, never from inside this call.

        ``replacing``: a waiting job that ``job`` supersedes (a client's pending live job). ``job``
        takes its place in the queue — so it never raises :class:`QueueFull` — and ``replacing``
        ends before this returns, with ``job_cancelled`` reason ``superseded``. If ``replacing``
        is no longer waiting, ``job`` is queued at the end as usual."""
        if self.closing:
            raise ShuttingDown()
        position = self.queue.replace(replacing, job) if replacing is not None else None
        if position is not None:
            replacing.state = "done"
            replacing.cancel_reason = SUPERSEDED
            replacing.cancel.set()
            log.info("job %s superseded while queued by %s", replacing.key, printable(job.job_id))
            self.listener.job_cancelled(replacing, SUPERSEDED)
        else:
            position = self.queue.push(job)
            self._announce_positions(position + 1)  # round-robin: jobs of other clients may move back
        self._idle.clear()
        asyncio.get_running_loop().call_soon(self._pump)
        return position

    def cancel(self, job: Job, reason: str = REQUESTED) -> None:
        """Cancel ``job``: a queued job ends now (``job_cancelled``); a running one stops at its
        next step and ends when the worker reports back. Cancelling an ended job does nothing."""
        if job.state == "queued":
            index = self.queue.remove(job)
            if index is None:
                return
            job.state = "done"
            job.cancel_reason = reason
            job.cancel.set()
            log.info("job %s cancelled while queued (%s)", job.key, reason)
            self.listener.job_cancelled(job, reason)
            self._announce_positions(index)
            self._check_idle()
        elif job.state == "running" and not job.cancel.is_set():
            job.cancel_reason = reason
            job.cancel.set()
            log.info("job %s: cancelling (%s)", job.key, reason)

    def _pump(self) -> None:
        if self.running is not None or self.warming or self._worker is None:
            return
        job = self.queue.pop()
        if job is None:
            self._check_idle()
            return
        job.state = "running"
        job.started_at = time.perf_counter()
        self.running = job
        try:  # the loop's own work first: the worker, woken last, then finds the GIL free sooner
            self.listener.job_started(job)
            self._announce_positions(0)
        finally:
            self._worker.give(job)

    def _announce_positions(self, start: int) -> None:
        for waiting, position in self.queue.after(start):
            self.listener.job_position(waiting, position)

    def _preview(self, job: Job, step: int, total: int, width: int, height: int, jpeg: bytes) -> None:
        if job.state == "running" and not job.cancel.is_set():
            self.listener.job_preview(job, step, total, width, height, jpeg)

    def _done(self, job: Job, outcome: Any) -> None:
        self.running = None
        job.state = "done"
        elapsed = time.perf_counter() - job.started_at
        line: tuple[Any, ...] = ()
        try:
            if outcome is _CANCELLED or isinstance(outcome, JobCancelledError):
                where = f", at step {outcome.step} of {outcome.total}" if getattr(outcome, "total", 0) else ""
                line = ("job %s cancelled after %.2f s%s (%s)", job.key, elapsed, where, job.cancel_reason)
                self.listener.job_cancelled(job, job.cancel_reason)
            elif isinstance(outcome, JobError):
                code = outcome.code
                details = dict(outcome.details or {})
                log_id = str(details.pop("log_id", ""))
                line = ("job %s failed: %s: %s", job.key, code.value, outcome.message)
                self.listener.job_failed(job, code, outcome.message, log_id, details or None)
            else:
                line = ("job %s finished in %.2f s", job.key, elapsed)
                self.listener.job_finished(job, outcome)
        except Exception:
            # Reporting the end failed (a bug on this side): the job must still end for its client.
            log_id = new_log_id()
            log.error("job %s: reporting its end failed [log %s]", job.key, log_id, exc_info=True)
            try:
                self.listener.job_failed(job, ErrorCode.INTERNAL, _FAILED_INTERNAL.format(log_id=log_id), log_id, None)
            except Exception:
                log.error("job %s: reporting the failure failed too [log %s]", job.key, log_id, exc_info=True)
        finally:
            self._pump()
            if line:
                # Logged on the loop's next turn, behind the writer that the end woke: a line on
                # stderr takes 0.01-0.1 ms, which the result need not wait for.
                asyncio.get_running_loop().call_soon(log.info, *line)

    def _check_idle(self) -> None:
        if self.running is None and not self.warming and not self.queue:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no job is queued or running."""
        await self._idle.wait()

    async def close(self, *, drain: bool = False, timeout: float | None = 30.0) -> None:
        """Refuse new jobs; cancel the queued and running ones (``drain``: let them finish first),
        then stop the worker. Waits at most ``timeout`` seconds (``None``: as long as it takes) for
        the running job to end; a cancelled job stops at its next step, but a model load cannot be
        interrupted."""
        self.closing = True
        if not drain:
            for job in list(self.queue):
                self.cancel(job, SHUTDOWN)
            if self.running is not None:
                self.cancel(self.running, SHUTDOWN)
        try:
            await asyncio.wait_for(self.wait_idle(), timeout)
        except asyncio.TimeoutError:
            log.warning("the running job did not stop within %.0f s; exiting anyway", timeout)
        if self._worker is not None:
            self._worker.stop()
            await asyncio.get_running_loop().run_in_executor(None, self._worker.join, 5.0)
