"""The I/O module: a small websocket client both plugins share (its frames go out through
:mod:`.transport_send`).

* :class:`AsyncClient` runs on any asyncio loop — Krita drives one from a ``QTimer``.
* :class:`ThreadedClient` runs an :class:`AsyncClient` on its own thread, for hosts without an
  event loop (Blender): requests are thread-safe, events are polled from a queue.

Both keep one :class:`~.session.ClientSession` per connection, turn compression off (deflate caps
large frames at ~25 MB/s; raw frames move at ~1 GB/s on loopback), set an explicit ``max_size``,
reconnect with exponential backoff (resuming open jobs with the same ``client_id``) and close cleanly.
Big frames from the server are read straight into buffers of their own (:mod:`.transport_frames`);
a result's chunk frames are received back to back on the client's own thread (:mod:`.transport_chain`).

Events are the session's (wire messages and :class:`~.session.JobResult`) plus :class:`Connected`,
:class:`Disconnected` and :class:`JobLost`, which belong to the transport.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable

import websockets
from websockets.asyncio.client import connect

from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from .images import ImagePayload
from .messages import CLOSE_TAKEN_OVER, ErrorEvent, Refused, SubmitJob, Welcome
from .session import ClientSession, ConnectionState, Event
from .transport_chain import ChunkChain, is_chunk_frame
from .transport_frames import ReceivingClientConnection
from .transport_send import send_frames

#: ``asyncio.timeout`` where there is one (Python 3.11+); on 3.10 ``next_event`` keeps ``wait_for``.
_TIMEOUT = getattr(asyncio, "timeout", None)

log = logging.getLogger("easel.transport")

#: Largest frame accepted from the server: a 4 MiB image chunk plus room for its header.
DEFAULT_MAX_SIZE = 8 * 1024 * 1024
#: Result chunks above this size are received on the client's own thread (see ``AsyncClient._serve``),
#: and smaller ones while bigger ones before them are still there.
_BIG_FRAME = 64 * 1024


@dataclass(frozen=True)
class Connected:
    """The handshake finished (first connect or reconnect)."""

    welcome: Welcome


@dataclass(frozen=True)
class Disconnected:
    """The connection dropped or was refused. ``will_retry`` says whether the client reconnects."""

    reason: str
    will_retry: bool


@dataclass(frozen=True)
class JobLost:
    """A job that was open when the connection dropped, and that the server no longer had after the
    reconnect. Its result will not come; submit it again."""

    job_id: str


class NotConnected(LocalProtocolError):
    def __init__(self) -> None:
        super().__init__(ErrorCode.UNEXPECTED_MESSAGE, "not connected to the Easel server; start it or check the URL")


class AsyncClient:
    """A reconnecting client. Use from one event loop::

        client = AsyncClient("ws://127.0.0.1:9797", client_name="krita", client_version="1.0")
        await client.start()                  # connects; raises ConnectionError if refused
        client.submit(job, images)
        while True:
            event = await client.next_event()

    Requests (``submit``, ``cancel``, ``list_models``, ``ping``) are plain methods that queue frames;
    a writer task sends them. They raise :class:`NotConnected` while the connection is down.

    ``client_id`` and ``resume`` carry a client over from an earlier ``AsyncClient`` (a host that
    replaces its client, e.g. when the user presses Connect again): the first ``hello`` then names
    that id and those open jobs, and jobs the server no longer has come back as :class:`JobLost`.
    """

    def __init__(self, url: str, *, client_name: str, client_version: str, token: str = "",
                 max_size: int = DEFAULT_MAX_SIZE, reconnect: bool = True,
                 backoff: tuple[float, float] = (0.25, 8.0), open_timeout: float = 10.0,
                 client_id: str = "", resume: Iterable[str] = ()) -> None:
        self.url = url
        self.client_name = client_name
        self.client_version = client_version
        self.token = token
        self.max_size = max_size
        self.reconnect = reconnect
        self.backoff = backoff
        self.open_timeout = open_timeout
        self.session: ClientSession | None = None
        self.welcome: Welcome | None = None
        self.client_id = client_id
        self._resume = list(dict.fromkeys(resume))
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._ws: Any = None
        self._runner: asyncio.Task | None = None
        self._first: asyncio.Future | None = None
        self._closing = False
        self._receiver: ThreadPoolExecutor | None = None  # the thread big result chunks are received on
        self._chain: ChunkChain | None = None  # the connection's result chunks on their way through it

    # -- life cycle

    @property
    def connected(self) -> bool:
        return self.session is not None and self.session.state is ConnectionState.READY

    async def start(self) -> Welcome:
        """Connect and finish the handshake. Raises ``ConnectionError`` if the first attempt fails
        (refused, unreachable, or no ``welcome`` within twice ``open_timeout``); after that, drops
        are retried in the background."""
        if self._runner is not None:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "start() was already called")
        self._first = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run(), name="easel-client")
        try:
            # The websocket opening has its own timeout; this one bounds the wait for welcome too.
            return await asyncio.wait_for(asyncio.shield(self._first), 2 * self.open_timeout)
        except asyncio.TimeoutError:
            self._first.cancel()  # nobody waits for it now
            await self.close()
            raise ConnectionError(f"the server at {self.url} did not finish the Easel handshake within "
                                  f"{2 * self.open_timeout:.0f} s; is it an Easel server?") from None

    async def close(self, keep_session: bool = False) -> None:
        """Close the connection and stop reconnecting. Safe to call twice.

        A close with 1000 ends the client's session on the server (its jobs are cancelled,
        docs/protocol.md section 3). With ``keep_session`` the connection is closed with 1001
        instead, so the server keeps the session for its grace period and a new client with the
        same ``client_id`` resumes its jobs (section 12)."""
        self._closing = True
        if self._ws is not None:
            await self._ws.close(code=1001 if keep_session else 1000)
        if self._runner is not None:
            self._runner.cancel()
            try:
                await self._runner
            except asyncio.CancelledError:
                if not self._runner.cancelled():
                    raise
            self._runner = None
        if self._receiver is not None:
            self._receiver.shutdown(wait=False)
            self._receiver = None

    # -- requests

    def _live_session(self) -> ClientSession:
        if not self.connected:
            raise NotConnected()
        return self.session  # type: ignore[return-value]

    def submit(self, job: SubmitJob, images: Iterable[ImagePayload] = ()) -> None:
        """Queue a job and its images (only those the server lacks are uploaded)."""
        self._live_session().submit(job, images)
        self._wake.set()

    async def submit_hashed(self, job: SubmitJob, images: Iterable[ImagePayload] = ()) -> None:
        """Like :meth:`submit`, but hashes large images on a worker thread first, so a 4096² layer
        does not hold up the event loop for the ~40 ms its SHA-256 takes."""
        images = list(images)
        await asyncio.to_thread(lambda: [image.id for image in images])
        self.submit(job, images)

    def cancel(self, job_id: str) -> None:
        self._live_session().cancel(job_id)
        self._wake.set()

    def list_models(self) -> None:
        self._live_session().list_models()
        self._wake.set()

    def ping(self, nonce: int = 0) -> None:
        self._live_session().ping(nonce)
        self._wake.set()

    def download(self, download_id: str, name: str) -> None:
        """Ask the server for its download ``name`` (``model_list.downloads``; docs/protocol.md 5.6):
        ``download_progress`` events and one ``download_finished``/``download_failed`` follow."""
        self._live_session().download(download_id, name)
        self._wake.set()

    async def next_event(self, timeout: float | None = None) -> Event | Connected | Disconnected | JobLost:
        """The next event; raises ``TimeoutError`` after ``timeout`` seconds."""
        if not self._events.empty():  # no waiting task to set up (wait_for makes one per call)
            return self._events.get_nowait()
        if timeout is None:
            return await self._events.get()
        if _TIMEOUT is not None:  # Python ≥ 3.11: the deadline on this task, no task of its own per wait
            async with _TIMEOUT(timeout):
                return await self._events.get()
        return await asyncio.wait_for(self._events.get(), timeout)

    def pending_events(self) -> list[Any]:
        """Every event received so far and not yet taken, without waiting."""
        out = []
        while not self._events.empty():
            out.append(self._events.get_nowait())
        return out

    # -- the connection loop

    async def _run(self) -> None:
        delay = self.backoff[0]
        lost: list[str] = list(self._resume)
        while not self._closing:
            try:
                async with connect(self.url, compression=None, max_size=self.max_size, proxy=None,
                                   open_timeout=self.open_timeout, user_agent_header=f"easel-{self.client_name}",
                                   create_connection=ReceivingClientConnection) as ws:
                    self._ws = ws
                    delay = self.backoff[0]
                    await self._serve(ws, lost)
                    reason = "the server closed the connection"
            except asyncio.CancelledError:
                raise
            except websockets.exceptions.ConnectionClosed as exc:
                reason = f"the connection to the Easel server at {self.url} closed ({exc})"
                if exc.rcvd is not None and exc.rcvd.code == CLOSE_TAKEN_OVER:
                    # Another connection resumed this client id; reconnecting would take it back,
                    # and the two would take turns forever.
                    reason = "another connection of this client took over (same client id); not reconnecting"
                    self._closing = True
            except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as exc:
                reason = f"cannot reach the Easel server at {self.url} ({type(exc).__name__}: {exc})"
            finally:
                self._ws = None
            refused = self.session is not None and self.session.state is ConnectionState.CLOSED and self.welcome is None
            if self.session is not None:
                lost = self.session.connection_lost() or lost
                self.session = None
            if self._first is not None and not self._first.done():
                self._first.set_exception(ConnectionError(reason))
                return
            retry = self.reconnect and not self._closing and not refused
            self._events.put_nowait(Disconnected(reason, retry))
            if not retry:
                return
            log.info("%s; retrying in %.1f s", reason, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff[1])

    async def _serve(self, ws: Any, lost: list[str]) -> None:
        session = self.session = ClientSession(self.client_name, self.client_version, token=self.token,
                                               client_id=self.client_id, resume=lost)
        self.welcome = None
        writer = asyncio.create_task(self._write(ws, session), name="easel-client-writer")
        self._wake.set()
        if self._receiver is None:
            self._receiver = ThreadPoolExecutor(max_workers=1, thread_name_prefix="easel-receive")
        chain = self._chain = ChunkChain(lambda frame: session.receive_frame(frame), lambda events, error: self._chained(session, events, error, lost),
                           self._receiver, plain=lambda events: not events)
        try:
            async for frame in ws:
                if is_chunk_frame(frame) and (len(frame) > _BIG_FRAME or chain.busy):
                    await chain.put(frame)  # received on the client's own thread while this task reads on
                    continue
                await chain.settle()  # the chunks before it first: a job_finished finds its images joined
                try:
                    events = session.receive_frame(frame)
                except RemoteProtocolError as exc:
                    events = self._invalid(exc)
                self._dispatch(session, events, lost)
                if session.state is ConnectionState.CLOSED:
                    break
        finally:
            await chain.close()  # its waiting chunks dropped, the one in hand put down
            writer.cancel()
            try:
                await writer
            except (asyncio.CancelledError, websockets.exceptions.ConnectionClosed):
                pass

    def _chained(self, session: ClientSession, events: list[Event], error: BaseException | None, lost: list[str]) -> None:
        """A result chunk's outcome from the chain, on the loop, in order (``_serve``): received on
        the client's own thread, the ``easel-receive`` one. There each chunk's SHA-256 runs while
        this loop goes on reading the next frames off the socket (hashlib releases the GIL on
        buffers this large), and the chunks waiting follow it without a trip through the loop; the
        host's loop (Krita's UI thread) does not do the hashing and the last chunk's join of the
        image. A big frame is a ``bytearray`` read straight off the socket (:mod:`.transport_frames`),
        which the session borrows the chunk from without a copy. Safe beside the loop: a chunk
        touches only the session's result assembly, which nothing else changes meanwhile (any other
        frame waits until the chain has delivered the chunks before it).

        Always the same thread, this client's own: glibc gives each thread its own heap (arena),
        and a result joined in the heap the previous one was freed in reuses its pages, where a
        thread of the loop's shared pool that held no result before maps 16 MiB of fresh pages for
        a 2048² one (4,096 page faults: 10-20 ms instead of ~1.5; benchmarks/RESULTS.md, issue 20)."""
        if isinstance(error, RemoteProtocolError):
            events = self._invalid(error)
        elif error is not None:
            raise error  # a bug: out of the reader, as from receive_frame on the loop
        self._dispatch(session, events, lost)

    @staticmethod
    def _invalid(exc: RemoteProtocolError) -> list[Event]:
        log.warning("the server sent an invalid frame: %s", exc.message)
        return [ErrorEvent(exc.code, f"the server sent an invalid message: {exc.message}")]

    def _dispatch(self, session: ClientSession, events: list[Event], lost: list[str]) -> None:
        """Queue a frame's events (with the transport's own: ``Connected``, ``JobLost``) and wake the
        writer when the session has frames to send."""
        for event in events:
            if isinstance(event, Welcome):
                self.welcome = event
                self.client_id = event.client_id
                for job_id in lost:
                    if job_id not in event.open_jobs:
                        self._events.put_nowait(JobLost(job_id))
                lost.clear()
                self._events.put_nowait(Connected(event))
                if self._first is not None and not self._first.done():
                    self._first.set_result(event)
            elif isinstance(event, Refused):
                self._events.put_nowait(event)
                if self._first is not None and not self._first.done():
                    self._first.set_exception(ConnectionError(f"the server refused the connection: {event.message}"))
                self._closing = True
            else:
                self._events.put_nowait(event)
        if session.bytes_to_send:  # e.g. the chunks an images_wanted asked for, and the job behind them
            self._wake.set()

    async def _write(self, ws: Any, session: ClientSession) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # One frame at a time: an image's chunks are framed as they are taken, so the first is
            # on the wire before the next ones are masked; a chunk's data is masked straight from
            # the image, not copied into a frame first (transport_send.send_frames).
            while frames := session.data_to_send(1, split=True):
                await send_frames(ws, frames)


class ThreadedClient:
    """An :class:`AsyncClient` on a thread of its own, for hosts without an event loop (Blender).

    ``start()`` blocks until connected (or raises ``ConnectionError``). Request methods are safe
    to call from any thread; ``poll()`` returns the events that arrived, never blocking — call it
    from the host's timer on the main thread and apply results there.
    """

    def __init__(self, url: str, **options: Any) -> None:
        self._options = dict(options, url=url)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="easel-client", daemon=True)
        self._events: queue.Queue[Any] = queue.Queue()
        self._client: AsyncClient | None = None
        self._pump: Any = None

    def start(self, timeout: float = 15.0) -> Welcome:
        self._thread.start()
        return self._call(self._start(), timeout)

    async def _start(self) -> Welcome:
        self._client = AsyncClient(**self._options)
        welcome = await self._client.start()
        self._pump = asyncio.create_task(self._forward())
        return welcome

    async def _forward(self) -> None:
        assert self._client is not None
        while True:
            self._events.put(await self._client.next_event())

    async def _stop_pump(self) -> None:
        # Awaited, not just cancelled: a task still pending when the loop stops is destroyed noisily.
        self._pump.cancel()
        try:
            await self._pump
        except asyncio.CancelledError:
            if not self._pump.cancelled():  # our own cancellation, not the pump's: pass it on
                raise

    def _call(self, coroutine: Any, timeout: float | None = 15.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _do(self, name: str, *args: Any) -> Any:
        assert self._client is not None
        return getattr(self._client, name)(*args)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    @property
    def welcome(self) -> Welcome | None:
        return self._client.welcome if self._client else None

    def submit(self, job: SubmitJob, images: Iterable[ImagePayload] = ()) -> None:
        images = list(images)
        for image in images:  # hash here, on the caller's thread, not on the network thread
            image.id
        self._call(self._do("submit", job, images))

    def cancel(self, job_id: str) -> None:
        self._call(self._do("cancel", job_id))

    def list_models(self) -> None:
        self._call(self._do("list_models"))

    def ping(self, nonce: int = 0) -> None:
        self._call(self._do("ping", nonce))

    def download(self, download_id: str, name: str) -> None:
        self._call(self._do("download", download_id, name))

    def poll(self) -> list[Any]:
        """Events that arrived since the last call, oldest first."""
        out = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    def wait_event(self, timeout: float | None = None) -> Any:
        """Block until the next event (for scripts and tests); raises ``queue.Empty`` on timeout."""
        return self._events.get(timeout=timeout)

    def close(self, timeout: float = 5.0, keep_session: bool = False) -> None:
        """Close the connection and stop the network thread; ``keep_session`` as in
        :meth:`AsyncClient.close`."""
        if not self._thread.is_alive():
            return
        if self._client is not None:
            try:
                self._call(self._client.close(keep_session), timeout)
            except Exception as exc:  # closing must not raise into the host's shutdown
                log.debug("closing the client: %r", exc)
        if self._pump is not None:
            try:
                self._call(self._stop_pump(), timeout)
            except Exception as exc:
                log.debug("stopping the event pump: %r", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()
