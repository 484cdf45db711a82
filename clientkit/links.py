"""The connection links: one :class:`~protocol.transport.AsyncClient` per link, and one reconnect
policy for both.

* :class:`AsyncLink` owns an asyncio loop the host pumps from its own event loop (Krita: a
  ``QTimer`` calls :meth:`AsyncLink.tick` on the main thread). The host's coroutines run on that
  thread, in ticks of bounded length; events reach ``on_event`` from inside ``tick``. The socket
  itself lives on a network thread (a :class:`~protocol.transport.ThreadedClient`): reading frames,
  reassembling a result's chunks and checking its SHA-256 never hold the main thread, which only
  takes finished events.
* :class:`ThreadLink` keeps the network off the host's main thread entirely (Blender): connecting,
  hashing and uploads run on a worker thread; the main thread only calls :meth:`ThreadLink.poll`,
  which never blocks.

Both add :class:`~.events.ConnectFailed` and :class:`~.events.SubmitFailed` (and the async link
:class:`~.events.JobLeftBehind`) to the transport's events. Nothing the server sent is dropped:
the transport reconnects by itself and resumes the open jobs (same client id); when a link replaces
its client (Connect pressed again), the new client carries the old one's id and open jobs to the
same server, and events the old client had received and not handed over are delivered first.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Iterator

from protocol import ImagePayload, LocalProtocolError, SubmitJob, Welcome
from protocol.transport import Connected, Disconnected, NotConnected, ThreadedClient

from .events import ConnectFailed, DownloadNotSent, JobLeftBehind, SubmitFailed, Submitted

log = logging.getLogger("easel.clientkit")

#: How the transport's ``start()`` begins the error of a connection the server refused.
REFUSED = "the server refused the connection"
NOT_CONNECTED = "not connected to the Easel server; press Connect, or start it with `easel serve`"


@dataclass(frozen=True)
class ReconnectPolicy:
    """How every link retries. ``drop_backoff`` (first, longest wait) is the transport's after a
    connection that was up drops; ``first_backoff`` the link's own between failed first attempts
    (``retry_first=False``: one attempt, the failure is the answer); ``open_timeout`` bounds one
    attempt's opening handshake."""

    drop_backoff: tuple[float, float] = (0.25, 8.0)
    first_backoff: tuple[float, float] = (2.0, 30.0)
    retry_first: bool = True
    open_timeout: float = 10.0

    def first_delays(self) -> Iterator[float]:
        delay = self.first_backoff[0]
        while True:
            yield delay
            delay = min(delay * 2, self.first_backoff[1])


#: Events a link delivers: the transport's, the session's, and those of :mod:`.events`.
LinkEvent = Any
#: Makes a link's client (a :class:`~protocol.transport.ThreadedClient`, or a stand-in in tests).
ClientFactory = Callable[..., Any]


class AsyncLink:
    """At most one :class:`AsyncClient` and at most one connection attempt at a time, always for
    the address last asked for.

    Call :meth:`tick` from a host timer on the main thread; events reach ``on_event`` from inside
    ``tick``. ``on_event`` must not raise; if it does, the error is logged and the next event is
    delivered anyway. ``open_jobs`` tells the link which jobs are open (the host's job book), so
    a replacement client resumes them.
    """

    def __init__(self, on_event: Callable[[LinkEvent], None], *, client_name: str, client_version: str = "",
                 policy: ReconnectPolicy = ReconnectPolicy(), open_jobs: Callable[[], Iterable[str]] = tuple,
                 clock: Callable[[], float] = time.monotonic, client_factory: ClientFactory = ThreadedClient) -> None:
        self.on_event = on_event
        self.client_name = client_name
        self.client_version = client_version
        self.policy = policy
        self.open_jobs = open_jobs
        self.clock = clock
        self._factory = client_factory
        self.loop = asyncio.new_event_loop()
        self.url = ""
        self._client: ThreadedClient | None = None
        #: The one connection task: its retries, then the pump of its client's events.
        self._runner: asyncio.Task | None = None
        self._connecting = False
        self._tasks: set[asyncio.Task] = set()
        # Carried from one client to the next while the URL stays the same: the server knows this
        # client by its id and keeps its jobs for a grace period.
        self._client_id = ""
        self._client_url = ""

    # -- the host's timer

    def tick(self, budget_s: float = 0.008, max_iterations: int = 64) -> None:
        """Run the asyncio loop's ready work for about ``budget_s`` seconds, then return.

        Does nothing while the loop is already running (a nested Qt event loop, e.g. a modal
        dialog opened from a coroutine, may call the timer again).
        """
        if self.loop.is_closed() or self.loop.is_running():
            return
        deadline = self.clock() + budget_s
        self._deliver()
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
    def welcome(self) -> Welcome | None:
        return self._client.welcome if self._client is not None else None

    # -- requests (main thread)

    def connect(self, url: str, token: str = "", retry: bool | None = None) -> None:
        """(Re)connect to ``url``: the attempt or connection before is stopped first, so only this
        address is tried from now on. Progress arrives as events."""
        self.url = url
        previous = self._runner
        retry = self.policy.retry_first if retry is None else retry
        self._runner = self.spawn(self._connect(url, token, retry, previous), f"connect to {url}")

    def _deliver(self) -> None:
        """Hand the events the network thread finished to ``on_event``, oldest first."""
        client = self._client
        if client is not None:
            for event in client.poll():
                self._emit(event)

    def disconnect(self) -> None:
        previous, self._runner = self._runner, None
        self.spawn(self._stop(previous), "disconnect")

    def submit(self, job: SubmitJob, images: Iterable[ImagePayload]) -> None:
        """Send a job; its images are hashed on a worker thread first. A failure to send arrives as
        :class:`SubmitFailed`, never as an exception here."""
        self.spawn(self._submit(job, list(images)), f"submit {job.job_id}")

    def cancel(self, job_id: str) -> bool:
        """Ask the server to cancel ``job_id``. False when not connected (the job dies with the
        connection anyway) or the job is not open."""
        if self._client is None or not self._client.connected:
            return False
        try:
            self._client.cancel(job_id)
        except (LocalProtocolError, TimeoutError) as exc:  # an unknown job: nothing left to cancel
            log.info("cancel %s: %s", job_id, exc)
            return False
        return True

    def list_models(self) -> None:
        if self._client is not None and self._client.connected:
            self._client.list_models()

    def download(self, download_id: str, name: str) -> None:
        """Ask the server for its download ``name``; its events arrive through ``on_event``, or one
        :class:`DownloadNotSent` when there is no connection to send it on."""
        try:
            if self._client is None or not self._client.connected:
                raise NotConnected()
            self._client.download(download_id, name)
        except (LocalProtocolError, TimeoutError) as exc:  # NotConnected is one
            reason = NOT_CONNECTED if isinstance(exc, NotConnected) else getattr(exc, "message", "")
            self._emit(DownloadNotSent(download_id, reason or "the connection did not take the request in time; try again"))

    def spawn(self, coroutine: Awaitable[Any], what: str) -> asyncio.Task:
        """Run ``coroutine`` on the loop; an exception it raises is logged (it must handle its own
        errors to tell the user). The task is kept until done so it is not garbage-collected."""
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
            log.debug("closing the link: %r", exc)
        finally:
            self.loop.close()

    # -- coroutines

    def _finished(self, task: asyncio.Task, what: str) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("easel: %s failed", what, exc_info=task.exception())

    def _emit(self, event: LinkEvent) -> None:
        if isinstance(event, Connected):
            self._client_id, self._client_url = event.welcome.client_id, self.url
        try:
            self.on_event(event)
        except Exception:
            log.exception("easel: handling %s failed", type(event).__name__)

    async def _stop(self, runner: asyncio.Task | None, keep_session: bool = False) -> None:
        """Stop a connection task (its retries or its pump) and wait until it is gone."""
        if runner is not None and not runner.done():
            runner.cancel()
            await asyncio.wait([runner])
        await self._drop(keep_session=keep_session)

    async def _drop(self, deliver: bool = True, keep_session: bool = False) -> None:
        """Close the current client. With ``deliver``, events it had received and not handed over
        yet (a result that arrived just before) are delivered first: nothing the server sent is lost.
        With ``keep_session`` the server keeps the session (and runs its jobs) for a new client
        that resumes it; otherwise the close ends the session and the server cancels its jobs."""
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close, keep_session=keep_session)
            if client.welcome is not None:
                self._client_id = client.welcome.client_id
            if deliver:
                for event in client.poll():
                    if not isinstance(event, (Connected, Disconnected)):
                        self._emit(event)

    def _carry_over(self, url: str) -> tuple[str, list[str]]:
        """(client id, open jobs) for a new client to ``url``: the old ones for the same server.
        Jobs open on another server will not come back: they are reported left behind."""
        open_jobs = list(self.open_jobs())
        if url == self._client_url:
            return self._client_id, open_jobs
        if self._client_url:
            for job_id in open_jobs:
                self._emit(JobLeftBehind(job_id, url))
        self._client_id, self._client_url = "", url
        return "", []

    async def _connect(self, url: str, token: str, retry: bool, previous: asyncio.Task | None) -> None:
        # Connect again to the same server: the new client resumes this session (its open jobs).
        await self._stop(previous, keep_session=url == self._client_url)
        self._connecting = True
        delays = self.policy.first_delays()
        try:
            while True:
                client_id, resume = self._carry_over(url)
                client = self._factory(url, client_name=self.client_name, client_version=self.client_version,
                                       token=token, reconnect=True, client_id=client_id, resume=resume,
                                       backoff=self.policy.drop_backoff, open_timeout=self.policy.open_timeout)
                # The handshake runs on the client's network thread; this loop waits without blocking.
                starting = asyncio.ensure_future(asyncio.to_thread(client.start, 2 * self.policy.open_timeout + 5.0))
                try:
                    await asyncio.shield(starting)
                except asyncio.CancelledError:  # replaced by a newer connect: leave nothing open
                    starting.add_done_callback(lambda _: threading.Thread(target=client.close, daemon=True).start())
                    raise
                except (ConnectionError, TimeoutError, OSError) as exc:
                    await asyncio.to_thread(client.close)
                    # The transport words a refusal (wrong token, other version) this way: retrying cannot help.
                    refused = str(exc).startswith(REFUSED)
                    retry_in = next(delays) if retry and not refused else None
                    self._emit(ConnectFailed(url, str(exc) or type(exc).__name__, retry_in))
                    if retry_in is None:
                        return
                    await asyncio.sleep(retry_in)
                    continue
                self._client = client
                break
        finally:
            if self._runner is asyncio.current_task():
                self._connecting = False
        # From here on tick() hands over the client's events until it is replaced or the link closes.

    async def _submit(self, job: SubmitJob, images: list[ImagePayload]) -> None:
        client = self._client
        if client is None or not client.connected:
            self._emit(SubmitFailed(job.job_id, NOT_CONNECTED))
            return
        try:
            await asyncio.to_thread(client.submit, job, images)  # hashing, then queued on the network thread
        except NotConnected:
            self._emit(SubmitFailed(job.job_id, "the connection to the Easel server dropped; try again once it is back"))
        except LocalProtocolError as exc:  # a limit or a duplicate id; its message says which
            self._emit(SubmitFailed(job.job_id, exc.message))
        else:
            self._emit(Submitted(job.job_id, job))


#: Requests waiting for a :class:`ThreadLink`'s worker; more than this means the server is not answering.
MAX_PENDING_REQUESTS = 16
#: Builds a job once the server's ``welcome`` is known (e.g. to pick a ControlNet from its models).
JobBuilder = Callable[[Welcome], tuple[SubmitJob, list[ImagePayload]]]


class ThreadLink:
    """One server URL, its network on threads of its own. Call :meth:`submit`/:meth:`cancel` from
    any thread, :meth:`poll` from the main thread, :meth:`close` when the host unloads or the URL
    changes. Connecting happens on demand (:meth:`connect`, or the first job)."""

    def __init__(self, url: str, *, client_name: str, client_version: str = "0", token: str = "",
                 policy: ReconnectPolicy = ReconnectPolicy(), open_jobs: Callable[[], Iterable[str]] = tuple,
                 client_factory: ClientFactory = ThreadedClient) -> None:
        """``open_jobs`` tells the link which jobs are open (the host's job book): a client that
        replaces one that gave up resumes them, so each comes back or ends as lost."""
        self.url = url
        self.policy = policy
        self.open_jobs = open_jobs
        self._client_id = ""
        self._options = dict(client_name=client_name, client_version=client_version, token=token,
                             open_timeout=policy.open_timeout, backoff=policy.drop_backoff)
        self._factory = client_factory
        self._client: Any = None
        self._gave_up = False
        self._last_failure = ""
        self._local: queue.Queue[LinkEvent] = queue.Queue()
        self._requests: queue.Queue[Callable[[], None] | None] = queue.Queue(MAX_PENDING_REQUESTS)
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="easel-link-requests", daemon=True)
        self._worker.start()

    # -- main thread

    @property
    def token(self) -> str:
        return self._options["token"]

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    @property
    def welcome(self) -> Welcome | None:
        return self._client.welcome if self._client is not None else None

    def connect(self) -> None:
        """Connect in the background (when connected: a :class:`Connected` with the current
        welcome is delivered again, so the host's state is fresh); the outcome arrives via :meth:`poll`."""
        self._enqueue(self._refresh, None)

    def submit(self, job: SubmitJob, images: Iterable[ImagePayload]) -> None:
        """Send ``job`` and its images in the background, connecting first if needed."""
        images = list(images)
        self.submit_built(job.job_id, lambda welcome: (job, images))

    def submit_built(self, job_id: str, build: JobBuilder) -> None:
        """Connect if needed, then call ``build(welcome)`` on the worker thread and send the job it
        returns (its ``job_id`` must be ``job_id``). A ``ValueError`` from ``build`` (the request does
        not fit this server) fails the job with its message. A :class:`Submitted` event follows a send."""
        def send() -> None:
            if not self._ensure_client():
                self._local.put(SubmitFailed(job_id, self._last_failure))
                return
            try:
                job, images = build(self._client.welcome)
                self._client.submit(job, images)
            except ValueError as exc:
                self._local.put(SubmitFailed(job_id, str(exc)))
            except LocalProtocolError as exc:
                self._local.put(SubmitFailed(job_id, exc.message))
            else:
                self._local.put(Submitted(job_id, job))
        self._enqueue(send, job_id)

    def cancel(self, job_id: str) -> None:
        def send() -> None:
            if self._client is not None and self._client.connected:
                self._client.cancel(job_id)
        self._enqueue(send, None)

    def list_models(self) -> None:
        """Ask for the server's model list (models, LoRAs, downloads) in the background, connecting
        first if needed; the ``model_list`` arrives through :meth:`poll`."""
        def send() -> None:
            if self._ensure_client():
                self._client.list_models()
        self._enqueue(send, None)

    def download(self, download_id: str, name: str) -> None:
        """Ask the server for its download ``name`` in the background, connecting first if needed;
        its events arrive through :meth:`poll`, or one :class:`DownloadNotSent` when it could not be sent."""
        def send() -> None:
            if not self._ensure_client():
                self._local.put(DownloadNotSent(download_id, self._last_failure))
                return
            try:
                self._client.download(download_id, name)
            except LocalProtocolError as exc:
                self._local.put(DownloadNotSent(download_id, exc.message))
        self._enqueue(send, None)

    def poll(self) -> list[LinkEvent]:
        """Everything that happened since the last call, oldest first. Never blocks."""
        out: list[LinkEvent] = []
        while True:
            try:
                out.append(self._local.get_nowait())
            except queue.Empty:
                break
        client = self._client
        if client is not None:
            events = client.poll()
            if any(isinstance(e, Disconnected) and not e.will_retry for e in events):
                self._gave_up = True  # the worker replaces this client on the next request
            out.extend(events)
        return out

    def close(self) -> None:
        """Stop the worker and close the client; pending requests are dropped. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        while True:  # make room for the stop signal
            try:
                self._requests.get_nowait()
            except queue.Empty:
                break
        self._requests.put(None)
        self._worker.join(self.policy.open_timeout + 5.0)

    # -- worker thread

    def _enqueue(self, action: Callable[[], None], job_id: str | None) -> None:
        if self._closed:
            raise RuntimeError("this connection is closed")
        try:
            self._requests.put_nowait(action)
        except queue.Full:
            reason = "the Easel server is not answering; too many requests are waiting"
            self._local.put(SubmitFailed(job_id, reason) if job_id else ConnectFailed(self.url, reason))

    def _refresh(self) -> None:
        client = self._client
        if client is not None and not self._gave_up:
            if client.connected and client.welcome is not None:
                self._local.put(Connected(client.welcome))
            # Else it is reconnecting on its own: replacing it now would give up the jobs it resumes.
            return
        self._ensure_client()

    def _ensure_client(self) -> bool:
        """Connected on return, or False with the reason queued as :class:`ConnectFailed`."""
        client = self._client
        if client is not None and not self._gave_up:
            # Connected, or reconnecting after a drop: give it the open timeout to come back,
            # so jobs it resumes keep their results.
            deadline = time.monotonic() + self.policy.open_timeout
            while not client.connected and not self._gave_up and time.monotonic() < deadline:
                time.sleep(0.05)
            if client.connected:
                return True
        if client is not None:
            if client.welcome is not None:
                self._client_id = client.welcome.client_id
            client.close(keep_session=True)  # the new client below resumes this session
            self._client = None
        self._gave_up = False
        # The same client to the server (its id, its open jobs): each job resumes or ends as lost.
        client = self._factory(self.url, client_id=self._client_id, resume=list(self.open_jobs()), **self._options)
        try:
            client.start(timeout=self.policy.open_timeout + 5.0)
        except Exception as exc:  # ConnectionError, TimeoutError, an invalid URL…
            client.close()
            reason = str(exc) or type(exc).__name__
            if "://" not in self.url:
                reason = f"the server URL {self.url!r} must start with ws://"
            self._last_failure = f"cannot connect to the Easel server at {self.url}: {reason}"
            self._local.put(ConnectFailed(self.url, self._last_failure))
            return False
        self._client = client
        self._client_id = client.welcome.client_id if client.welcome is not None else ""
        return True

    def _work(self) -> None:
        while True:
            action = self._requests.get()
            if action is None:
                break
            try:
                action()
            except Exception as exc:  # keep the worker alive; the user sees the reason
                log.exception("Easel request failed")
                self._local.put(ConnectFailed(self.url, f"an Easel request failed: {exc}"))
        if self._client is not None:
            self._client.close()
            self._client = None
