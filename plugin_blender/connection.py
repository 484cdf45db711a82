"""The plugin's link to the Easel server, kept off the host's main thread. No ``bpy`` here.

:class:`Connection` owns one :class:`~protocol.transport.ThreadedClient` and one worker thread.
Connecting, hashing and queueing uploads, and cancelling all run on that worker, so an operator
returns at once even when the server is slow or down; the main thread only ever calls
:meth:`Connection.poll`, which never blocks. Failures come back through ``poll()`` as
:class:`ConnectFailed` / :class:`SubmitFailed` events, in order with the transport's own events.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .protocol import ImagePayload, LocalProtocolError, SubmitJob, Welcome
from .protocol.transport import Disconnected, ThreadedClient

log = logging.getLogger("easel.blender")

#: Requests waiting for the worker thread; more than this means the server is not answering.
MAX_PENDING_REQUESTS = 16


@dataclass(frozen=True)
class ConnectFailed:
    """The server could not be reached or refused us; ``reason`` is for the user."""

    reason: str


@dataclass(frozen=True)
class SubmitFailed:
    job_id: str
    reason: str


@dataclass(frozen=True)
class Submitted:
    """``job`` was handed to the transport, exactly as it goes to the server."""

    job_id: str
    job: SubmitJob


ClientFactory = Callable[..., Any]
#: Builds a job once the server's ``welcome`` is known (e.g. to pick a ControlNet from its models).
JobBuilder = Callable[[Welcome], tuple[SubmitJob, list[ImagePayload]]]


class Connection:
    """One server URL. Call :meth:`submit`/:meth:`cancel` from any thread, :meth:`poll` from the
    main thread, :meth:`close` when the add-on unloads or the URL changes."""

    def __init__(self, url: str, *, client_name: str = "blender", client_version: str = "0",
                 token: str = "", connect_timeout: float = 10.0,
                 client_factory: ClientFactory = ThreadedClient) -> None:
        self.url = url
        self._options = dict(client_name=client_name, client_version=client_version, token=token,
                             open_timeout=connect_timeout)
        self._connect_timeout = connect_timeout
        self._factory = client_factory
        self._client: Any = None
        self._gave_up = False
        self._last_failure = ""
        self._local: queue.Queue[Any] = queue.Queue()
        self._requests: queue.Queue[Callable[[], None] | None] = queue.Queue(MAX_PENDING_REQUESTS)
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="easel-blender-requests", daemon=True)
        self._worker.start()

    # -- main thread

    @property
    def token(self) -> str:
        return self._options["token"]

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def connect(self) -> None:
        """Connect in the background (a no-op when connected); the outcome arrives via :meth:`poll`."""
        self._enqueue(self._ensure_client, None)

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

    def poll(self) -> list[Any]:
        """Everything that happened since the last call, oldest first. Never blocks."""
        out: list[Any] = []
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
        self._worker.join(self._connect_timeout + 5.0)

    # -- worker thread

    def _enqueue(self, action: Callable[[], None], job_id: str | None) -> None:
        if self._closed:
            raise RuntimeError("this connection is closed")
        try:
            self._requests.put_nowait(action)
        except queue.Full:
            reason = "the Easel server is not answering; too many requests are waiting"
            self._local.put(SubmitFailed(job_id, reason) if job_id else ConnectFailed(reason))

    def _ensure_client(self) -> bool:
        """Connected on return, or False with the reason queued as :class:`ConnectFailed`."""
        client = self._client
        if client is not None and not self._gave_up:
            # Connected, or reconnecting after a drop: give it the connect timeout to come back,
            # so jobs it resumes keep their results.
            deadline = time.monotonic() + self._connect_timeout
            while not client.connected and not self._gave_up and time.monotonic() < deadline:
                time.sleep(0.05)
            if client.connected:
                return True
        if client is not None:
            client.close()
            self._client = None
        self._gave_up = False
        client = self._factory(self.url, **self._options)
        try:
            client.start(timeout=self._connect_timeout + 5.0)
        except Exception as exc:  # ConnectionError, TimeoutError, an invalid URL…
            client.close()
            reason = str(exc) or type(exc).__name__
            if "://" not in self.url:
                reason = f"the server URL {self.url!r} must start with ws://"
            self._last_failure = f"cannot connect to the Easel server at {self.url}: {reason}"
            self._local.put(ConnectFailed(self._last_failure))
            return False
        self._client = client
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
                self._local.put(ConnectFailed(f"an Easel request failed: {exc}"))
        if self._client is not None:
            self._client.close()
            self._client = None
