"""The plugin's link to the server: :class:`protocol.transport.AsyncClient` on an asyncio loop that
the host drives from its own event loop.

Krita has a Qt event loop and no asyncio loop; a ``QTimer`` calls :meth:`Connection.tick` on the
main thread every few milliseconds, and each tick runs the asyncio loop's ready work for a short,
bounded time. So every coroutine (network I/O, the controller's job steps) runs on the main thread,
where host objects may be touched, and none of them can hold the UI for more than one tick's budget
plus the longest single step. CPU-heavy pixel work goes to worker threads with ``asyncio.to_thread``.

No Qt and no Krita here: the timer belongs to the caller, which also makes this testable with a
plain loop of ``tick()`` calls.

Nothing the server sent is dropped here: the transport reconnects by itself and resumes the open
jobs (same client id); when the connection is replaced (:meth:`Connection.connect` again, e.g. the
painter presses Connect), the new client carries the old one's id and open jobs to the same server,
and events the old client had received but not handed over yet (a finished result, say) are
delivered before it goes.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

from .protocol import ImagePayload, JobCancelled, JobFailed, JobResult, Refused, SubmitJob
from .protocol.transport import AsyncClient, Connected, Disconnected, JobLost, NotConnected

log = logging.getLogger("easel.krita.connection")


@dataclass(frozen=True)
class ConnectFailed:
    """A connection attempt failed. ``retry_in`` is the wait before the next attempt (``None``: no
    retry — the server refused us, or retrying is off)."""

    url: str
    reason: str
    retry_in: float | None


@dataclass(frozen=True)
class JobLeftBehind:
    """A job open on the server this plugin was connected to when it switched to another server
    (``url``): its result will not come here."""

    job_id: str
    url: str


@dataclass(frozen=True)
class SubmitFailed:
    """A job could not be sent (not connected, or the client refused it); it never reached the server."""

    job_id: str
    message: str


class Connection:
    """Owns one asyncio loop and at most one :class:`AsyncClient` at a time.

    Call :meth:`tick` from a host timer on the main thread; events reach ``on_event`` from inside
    ``tick`` (so on the main thread too): the transport's (``Connected``, ``Disconnected``,
    ``JobLost``), the session's (wire events, ``JobResult``), plus :class:`ConnectFailed` and
    :class:`SubmitFailed`. ``on_event`` must not raise; if it does, the error is logged and the
    next event is delivered anyway.
    """

    def __init__(self, on_event: Callable[[Any], None], *, client_name: str = "krita",
                 client_version: str = "", retry_backoff: tuple[float, float] = (2.0, 30.0),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.on_event = on_event
        self.client_name = client_name
        self.client_version = client_version
        self.retry_backoff = retry_backoff
        self.clock = clock
        self.loop = asyncio.new_event_loop()
        self.url = ""
        self._client: AsyncClient | None = None
        self._runner: asyncio.Task | None = None
        self._connecting = False
        self._tasks: set[asyncio.Task] = set()
        # Carried from one client to the next while the URL stays the same: the server knows this
        # plugin by its client id and keeps its jobs for a grace period.
        self._client_id = ""
        self._client_url = ""
        self._open_jobs: dict[str, None] = {}

    # -- the host's timer

    def tick(self, budget_s: float = 0.008, max_iterations: int = 64) -> None:
        """Run the asyncio loop's ready work for about ``budget_s`` seconds, then return.

        Does nothing while the loop is already running (a nested Qt event loop, e.g. a modal
        dialog opened from a coroutine, may call the timer again).
        """
        if self.loop.is_closed() or self.loop.is_running():
            return
        deadline = self.clock() + budget_s
        for _ in range(max_iterations):
            self.loop.call_soon(self.loop.stop)
            self.loop.run_forever()
            # ``_ready`` is CPython's queue of callbacks due now; without it, one iteration per tick.
            if self.clock() >= deadline or not getattr(self.loop, "_ready", ()):
                break

    @property
    def busy(self) -> bool:
        """True while work is scheduled (the host may tick faster then)."""
        return bool(getattr(self.loop, "_ready", ())) or any(not t.done() for t in self._tasks)

    # -- state

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    @property
    def connecting(self) -> bool:
        return self._connecting

    @property
    def welcome(self) -> Any:
        return self._client.welcome if self._client is not None else None

    # -- requests (main thread)

    def connect(self, url: str, token: str = "", retry: bool = True) -> None:
        """(Re)connect to ``url``, dropping any current connection. Progress arrives as events."""
        self.url = url
        self.spawn(self._connect(url, token, retry), "connect")

    def disconnect(self) -> None:
        self.spawn(self._drop(), "disconnect")

    def submit(self, job: SubmitJob, images: Iterable[ImagePayload]) -> None:
        """Send a job; its images are hashed on a worker thread first. A failure to send arrives as
        :class:`SubmitFailed`, never as an exception here."""
        self.spawn(self._submit(job, list(images)), f"submit {job.job_id}")

    @property
    def open_jobs(self) -> tuple[str, ...]:
        """Jobs sent and not ended yet (they resume with a reconnect)."""
        return tuple(self._open_jobs)

    def cancel(self, job_id: str) -> bool:
        """Ask the server to cancel ``job_id``. False when not connected (the job dies with the
        connection anyway) or the job is not open."""
        if self._client is None or not self._client.connected:
            return False
        try:
            self._client.cancel(job_id)
        except (NotConnected, Exception) as exc:  # an unknown job: nothing left to cancel
            log.info("cancel %s: %s", job_id, exc)
            return False
        return True

    def list_models(self) -> None:
        if self._client is not None and self._client.connected:
            self._client.list_models()

    def spawn(self, coroutine: Awaitable[Any], what: str) -> asyncio.Task:
        """Run ``coroutine`` on the loop; an exception it raises is logged (it must handle its own
        errors to tell the painter). The task is kept until done so it is not garbage-collected."""
        task = self.loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._finished(t, what))
        return task

    def close(self, timeout_s: float = 2.0) -> None:
        """Close the connection and the loop; for the host's shutdown. Never raises."""
        if self.loop.is_closed():
            return
        try:
            for task in list(self._tasks):
                task.cancel()
            self.loop.run_until_complete(asyncio.wait_for(self._drop(deliver=False), timeout_s))
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
        except Exception as exc:  # shutting down must not raise into the host
            log.debug("closing the connection: %r", exc)
        finally:
            self.loop.close()

    # -- coroutines

    def _finished(self, task: asyncio.Task, what: str) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("easel: %s failed", what, exc_info=task.exception())

    def _emit(self, event: Any) -> None:
        if isinstance(event, Connected):
            self._client_id, self._client_url = event.welcome.client_id, self.url
        elif isinstance(event, (JobResult, JobFailed, JobCancelled, JobLost, JobLeftBehind, SubmitFailed)):
            self._open_jobs.pop(event.job_id, None)
        try:
            self.on_event(event)
        except Exception:
            log.exception("easel: handling %s failed", type(event).__name__)

    async def _drop(self, deliver: bool = True) -> None:
        """Close the current client. With ``deliver``, events it had received and not handed over
        yet (a result that arrived just before) are delivered first: nothing the server sent is lost."""
        if self._runner is not None:
            self._runner.cancel()
            self._runner = None
        client, self._client = self._client, None
        if client is not None:
            await client.close()
            if client.client_id:
                self._client_id = client.client_id
            if deliver:
                for event in client.pending_events():
                    if not isinstance(event, (Connected, Disconnected)):
                        self._emit(event)

    def _carry_over(self, url: str) -> tuple[str, list[str]]:
        """(client id, open jobs) for a new client to ``url``: the old ones for the same server.
        Jobs open on another server will not come back: they are reported lost."""
        if url == self._client_url:
            return self._client_id, list(self._open_jobs)
        for job_id in list(self._open_jobs):
            self._emit(JobLeftBehind(job_id, url))
        self._client_id, self._client_url = "", url
        return "", []

    async def _connect(self, url: str, token: str, retry: bool) -> None:
        await self._drop()
        self._connecting = True
        delay = self.retry_backoff[0]
        try:
            while True:
                client_id, resume = self._carry_over(url)
                client = AsyncClient(url, client_name=self.client_name, client_version=self.client_version,
                                     token=token, reconnect=True, client_id=client_id, resume=resume)
                try:
                    await client.start()
                except ConnectionError as exc:
                    refused = any(isinstance(e, Refused) for e in client.pending_events())
                    await client.close()
                    retry_in = delay if retry and not refused else None
                    self._emit(ConnectFailed(url, str(exc), retry_in))
                    if retry_in is None:
                        return
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.retry_backoff[1])
                    continue
                self._client = client
                self._runner = asyncio.current_task()
                break
        finally:
            self._connecting = False
        # This task now pumps the client's events until the connection is dropped or replaced.
        while True:
            self._emit(await client.next_event())

    async def _submit(self, job: SubmitJob, images: list[ImagePayload]) -> None:
        client = self._client
        if client is None or not client.connected:
            self._emit(SubmitFailed(job.job_id, "not connected to the Easel server; press Connect, or start it with `easel serve`"))
            return
        try:
            self._open_jobs[job.job_id] = None
            await client.submit_hashed(job, images)
        except NotConnected:
            self._emit(SubmitFailed(job.job_id, "the connection to the Easel server dropped; try again once it is back"))
        except Exception as exc:  # LocalProtocolError: a limit or a duplicate id; its message says which
            message = getattr(exc, "message", None) or str(exc)
            self._emit(SubmitFailed(job.job_id, message))
