"""The websocket server: connections, per-client image stores, the client registry.

One :class:`~protocol.ServerSession` per connection, driven by two tasks: a reader (frames →
``receive_frame`` → requests → answers into the session's outbox) and a writer that drains the
outbox whenever it is woken. Step previews are coalesced in the outbox, so a slow client gets
the latest preview instead of a backlog. Jobs go through :class:`backend.jobs.Scheduler`, whose
worker thread owns the device; this module is its :class:`~backend.jobs.JobListener` and routes
each job's events to the session of the client that submitted it — a client sees only its own jobs.

Errors: a client's bad frame gets a typed ``error`` (with a log id for the first
:data:`LOGGED_BAD_FRAMES` of a connection) and the connection goes on; a bug while handling a
request is logged with its traceback under a log id, and the client gets ``internal`` with that
id and nothing else.

Bounds (docs/protocol.md, section 9): frame size (larger: close 1009), connections
(``max_connections``; more: HTTP 503), time to send ``hello`` (``hello_timeout_s``; then close
1008), jobs per client and in all, upload bytes per connection, image bytes per client (the store),
and bytes waiting to be sent per connection: above :data:`BACKLOG_HIGH` (or the client's share of
the memory budget) the reader stops taking frames from that client until its backlog is written,
and a job end that would take a stuck client's unread bytes past its allowance drops the
connection (kept as a lost one), so nothing a client sends or fails to read can grow the server's
memory without bound. One :class:`MemoryBudget` counts the stores, unread frames, uploads in
flight and results being built.

Reconnects: clients are kept apart from connections. A client whose connection drops is kept for
``reconnect_grace_s`` (default 30 s): its queued and running jobs go on, and the ends of jobs it
has not received (results are in its image store, so they are bounded by its bytes) wait for it.
A ``hello`` with its ``client_id`` takes it back: ``welcome.open_jobs`` lists its open jobs and
the ended ones it still needs, whose ends are sent right after ``welcome``. A ``hello`` with the id
of a client that is still connected takes it over: the old connection is closed with
:data:`protocol.CLOSE_TAKEN_OVER` (4409), which tells its transport not to reconnect. After the
grace period the client is forgotten: its jobs are cancelled and its images dropped. A client that
closes with 1000 has ended its session: it is forgotten at once (docs/protocol.md, section 3).
"""
from __future__ import annotations

import asyncio
import logging
import math
import secrets
import sys
import time
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import Any, Awaitable, Callable

import websockets
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from protocol import (
    CLOSE_NO_HELLO, CLOSE_TAKEN_OVER, MAX_CHUNK_BYTES, CancelJob, ConnectionState, ErrorCode, Hello, ImageInfo,
    ImagePayload, ImageUploaded, JobPhase, Limits, ListModels, OfferImages, RemoteProtocolError, ServerSession,
    SubmitJob, job_image_ids,
)
from protocol.messages import DownloadModel
from protocol.transport_chain import ChunkChain, is_chunk_frame
from protocol.transport_send import send_frames

from .allocator import apply_policy as apply_allocator_policy
from .config import ConfigError, ServerConfig, default_memory_budget
from .download import ServerDownloads
from .errors import JobError
from .jobs import (
    DISCONNECTED, REQUESTED, SUPERSEDED, Job, QueueFull, Scheduler, ShuttingDown, live_jobs, new_log_id, printable,
)
from .receiving import EaselServerConnection

log = logging.getLogger("easel.server")

#: Image chunks of any size go through the connection's :class:`~protocol.transport_chain.ChunkChain`:
#: received back to back on one of the IO threads (each chunk is hashed as it arrives, the last one
#: joins the image), never on the loop. Other frames above this size are handled on a thread one at a
#: time; small ones inline (a thread hop costs ~0.1 ms).
_BIG_FRAME = 64 * 1024
#: Seconds a closing connection's writer gets to flush its last frames.
_FLUSH_TIMEOUT = 5.0
#: When the frames waiting for one connection come to at most this many bytes, the writer takes
#: them all and writes them in one socket write (a job's ``job_accepted`` + ``job_started``, a small
#: result's chunk + ``job_finished``): one system call and one wake-up of the client's reader
#: instead of one per frame. Above it the writer takes one frame at a time, as backpressure needs.
_TOGETHER_BYTES = 64 * 1024
#: Bytes waiting to be written to one connection above which its reader takes no more frames
#: (until the backlog is below :data:`BACKLOG_LOW`). A client that sends without reading gets TCP
#: backpressure instead of growing the server's memory. Both are capped by the client's share of
#: the memory budget (:meth:`EaselServer.unread_allowance`).
BACKLOG_HIGH = 64 * 1024 * 1024
BACKLOG_LOW = 16 * 1024 * 1024
#: The most bytes that may wait unread for one client, at most its share of the memory budget.
#: A job's end that would take a stuck client's unread bytes past that is not queued: the client's
#: connection is dropped (as a lost connection: its session is kept for the grace period, and the
#: result is sent when it comes back). A client that does not read is first paused, then dropped.
BACKLOG_DROP = BACKLOG_HIGH
#: Bad frames per connection that get a log line and a log id; later ones are only counted (a
#: junk-sending client must not fill the operator's disk), and the count is logged at the close.
LOGGED_BAD_FRAMES = 20
#: Job ends kept per client for a reconnect (metadata only: result pixels live in its image store).
KEPT_ENDS = 64
#: Threads that handle big frames (hashing uploads) and model listings off the loop, all clients together.
IO_THREADS = 4
#: Seconds between two log lines about handshakes refused for too many connections (a flood of
#: them is summed up, not logged one by one).
REFUSAL_LOG_INTERVAL = 10.0

#: Connections from one address that have not sent ``hello`` yet, at most: a new one beyond closes
#: that address's oldest (1008), so idle handshakes cannot take the slots of clients that say hello.
#: A quarter of ``max_connections``, between 1 and this.
MAX_PENDING_PER_ADDRESS = 8
#: After a missing or wrong token from an address, its next hellos wait before they are read:
#: AUTH_DELAY_S doubled per failure within AUTH_WINDOW_S, at most AUTH_DELAY_MAX_S — right or wrong
#: token alike, so the delay cannot be skipped by hanging up early.
AUTH_DELAY_S = 0.25
AUTH_DELAY_MAX_S = 8.0
AUTH_WINDOW_S = 60.0
#: Addresses whose failed tokens are remembered (the oldest is forgotten first).
AUTH_ADDRESSES = 1024

DEMO_NOTICE = ("This server runs the built-in demo model: a tiny, randomly initialised network whose "
               "images are noise. It shows that everything is wired up; start the server with "
               "--model to generate real images.")


def setup_logging(level: str) -> None:
    """Plain log lines on stderr: time, level, logger, message (job and client ids inside)."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr, force=True)
    # websockets logs every connection at INFO; this module logs its own, with client ids.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, logging.getLogger().level))


def server_version() -> str:
    try:
        return metadata.version("easel")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def limits_for(config: ServerConfig) -> Limits:
    """The bounds announced in ``welcome`` and enforced by every session."""
    # A frame is at most one image chunk plus its msgpack header; 1 MiB of headroom is plenty.
    return Limits(max_frame_bytes=MAX_CHUNK_BYTES + 1024 * 1024, max_queued_jobs=config.queue_size,
                  max_client_jobs=config.max_client_jobs)


class MemoryBudget:
    """The server's one memory budget (``--memory-budget``): bytes of images all clients' stores hold
    together (``used``), plus what each of ``holders`` reports now (the server's: frames waiting to
    be read, uploads in flight, results being built). Loop thread only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.holders: list[Callable[[], int]] = []

    @property
    def held(self) -> int:
        """Bytes counted against the budget now: stored images and every holder's."""
        return self.used + sum(holder() for holder in self.holders)

    @property
    def free(self) -> int:
        return max(0, self.limit - self.held)


class ImageStore:
    """A client's images by content id: uploads and the results the server produced.

    Bounded by bytes, its own (``max_bytes``) and the server's ``budget`` shared by every store;
    the least recently used of this client's images goes first. An image that does not fit even
    with this store emptied is not kept (``put`` returns False). Loop thread only.
    """

    def __init__(self, max_bytes: int, budget: MemoryBudget | None = None) -> None:
        self.budget = budget or MemoryBudget(max_bytes)
        self.max_bytes = min(max_bytes, self.budget.limit)
        self.bytes = 0
        self._images: OrderedDict[str, ImagePayload] = OrderedDict()

    @property
    def room(self) -> int:
        """The most bytes this store could hold now: its own bound, less what others hold of the budget."""
        return min(self.max_bytes, self.budget.free + self.bytes)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._images

    def __len__(self) -> int:
        return len(self._images)

    def get(self, image_id: str) -> ImagePayload | None:
        image = self._images.get(image_id)
        if image is not None:
            self._images.move_to_end(image_id)
        return image

    def touch(self, image_id: str) -> bool:
        """Mark ``image_id`` as just used; returns whether it is held."""
        return self.get(image_id) is not None

    def put(self, image: ImagePayload) -> bool:
        size = len(image.data)
        if image.id in self._images:
            self._images.move_to_end(image.id)
            return True
        if size > self.room:
            return False
        while self.bytes + size > self.max_bytes or size > self.budget.free:
            _, old = self._images.popitem(last=False)
            self._take(-len(old.data))
        self._images[image.id] = image
        self._take(size)
        return True

    def clear(self) -> None:
        self._images.clear()
        self._take(-self.bytes)

    def _take(self, size: int) -> None:
        self.bytes += size
        self.budget.used += size


@dataclass(eq=False)
class JobEnd:
    """How a job ended, kept so the end can be sent again on a later connection of its client.

    Only metadata: a finished job's pixels are looked up in the client's image store when the end
    is sent again (so kept results are bounded by the store's bytes; one it evicted is lost).
    ``handed_over`` turns true once the end's frame was written to a socket.
    """

    job_id: str
    kind: str  # "finished", "failed" or "cancelled"
    fields: dict[str, Any]
    images: tuple[ImageInfo, ...] = ()
    handed_over: bool = False

    def send(self, session: ServerSession, store: ImageStore, images: list[ImagePayload] | None = None) -> bytes | None:
        """Queue the end on ``session``; returns its frame, or ``None`` when a result image is no
        longer held. ``images``: the results themselves (first delivery), else taken from ``store``."""
        if self.kind == "finished":
            if images is None:
                images = [store.get(info.id) for info in self.images]  # type: ignore[misc]
                if any(image is None for image in images):
                    return None
            return session.job_finished(self.job_id, images, **self.fields)
        if self.kind == "failed":
            return session.job_failed(self.job_id, **self.fields)
        return session.job_cancelled(self.job_id, **self.fields)


@dataclass(eq=False)
class Client:
    """A client as the server knows it, across reconnects: its id, images, open jobs, and the
    recent ends of its jobs (newest last, at most :data:`KEPT_ENDS`)."""

    client_id: str
    name: str
    store: ImageStore
    jobs: dict[str, Job] = field(default_factory=dict)
    ended: OrderedDict[str, JobEnd] = field(default_factory=OrderedDict)
    connection: "Connection | None" = None
    #: The timer that forgets a disconnected client when its grace period ends.
    expiry: asyncio.TimerHandle | None = None
    disconnected_at: float = 0.0

    def remember(self, end: JobEnd) -> None:
        self.ended.pop(end.job_id, None)
        self.ended[end.job_id] = end
        while len(self.ended) > KEPT_ENDS:
            self.ended.popitem(last=False)


@dataclass(eq=False)
class Connection:
    ws: ServerConnection
    session: ServerSession
    peer: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set whenever the backlog fell below BACKLOG_LOW (or the writer stopped).
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    client: Client | None = None
    writer: "asyncio.Task | None" = None
    closing: bool = False
    #: Another connection took this one's client over: send nothing more, close with 4409.
    replaced: bool = False
    #: Bytes the writer took from the outbox and has not written yet.
    in_flight: int = 0
    #: Terminal frames queued on this connection, by id(), and the JobEnd they carry.
    end_frames: dict[int, tuple[bytes, JobEnd]] = field(default_factory=dict)
    bad_frames: int = 0
    closer: "asyncio.Task | None" = None
    #: The connection's image chunks, received back to back on an IO thread (set by the reader).
    chain: ChunkChain | None = None

    def flush(self) -> None:
        """Wake the writer: the session's outbox has frames."""
        self.wake.set()

    @property
    def backlog(self) -> int:
        """Bytes queued for this client and not yet written to its socket."""
        return self.session.bytes_to_send + self.in_flight


class EaselServer:
    """Serves ``engine`` over websockets per ``config``.

    Use::

        server = EaselServer(config, engine)
        await server.start()           # binds; server.port is the real port (config.port 0 picks one)
        await server.serve_until(stop) # stop: an asyncio.Event set by a signal handler
        # or: await server.close()

    ``engine`` follows the engine seam (docs/design.md): ``model_infos``, ``capabilities``,
    ``prepare`` and ``run``. Raises :class:`~backend.config.ConfigError` for a config that binds
    off loopback without a token (``backend.cli.with_token`` makes one).
    """

    def __init__(self, config: ServerConfig, engine: Any, *, make_scheduler: Callable[..., Scheduler] = Scheduler) -> None:
        """``make_scheduler(engine, listener, capacity=...)`` builds the scheduler jobs go to: the
        in-process worker's by default, ``ClusterScheduler`` (backend/cluster) for ``--cluster``."""
        if not config.loopback and not config.token:
            raise ConfigError(f"binding to {config.host} lets other machines connect: set a token "
                              f"(easel serve generates one when none is given)")
        self.config = config
        self.engine = engine
        self.limits = limits_for(config)
        self.version = server_version()
        self.scheduler = make_scheduler(engine, self, capacity=config.queue_size)
        #: What all clients' image stores hold together, the frames they have not read, their uploads in
        #: flight and the results being built (--memory-budget; default from this machine's memory).
        self.budget = MemoryBudget(config.memory_budget or default_memory_budget())
        #: Bytes reserved for the results of the running jobs, by job, until they end.
        self._building: dict[Job, int] = {}
        self.budget.holders += [self._unread_and_uploads, lambda: sum(self._building.values())]
        self.downloads = ServerDownloads(config.allow_downloads, (config.models_dirs or (None,))[0])
        self.port: int = 0
        self.closing = False
        self._clients: dict[str, Client] = {}
        self._connections: set[Connection] = set()
        #: Websocket connections admitted by the handshake and not yet finished (weak: a handshake
        #: that fails after admission disappears with its connection object).
        self._admitted: weakref.WeakSet[ServerConnection] = weakref.WeakSet()
        self._server: Any = None
        self._io: ThreadPoolExecutor | None = None
        self._refused_full = 0  # handshakes refused for max_connections since the last log line
        #: Connections being served that have not sent hello yet, oldest first, by remote address.
        self._pending: OrderedDict[ServerConnection, str] = OrderedDict()
        #: Address → (failed tokens within AUTH_WINDOW_S, when the first of them came).
        self._auth_failures: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._evictions: set[asyncio.Task] = set()
        self._refused_logged_at = float("-inf")
        self._capabilities: Any = None
        self._demo = False
        self._notice = ""

    def _unread_and_uploads(self) -> int:
        return sum(conn.backlog + conn.session.upload_bytes_held for conn in self._connections)

    @property
    def client_share(self) -> int:
        """Each connected client's share of the memory budget: the budget over the clients connected
        now (it shrinks as clients join)."""
        connected = sum(1 for client in self._clients.values() if client.connection is not None)
        return self.budget.limit // max(1, connected)

    def unread_allowance(self) -> int:
        """The most bytes that may wait unread for one client: :data:`BACKLOG_DROP`, at most its share."""
        return min(BACKLOG_DROP, self.client_share)

    # -- life cycle

    async def start(self) -> None:
        """Bind and start serving. Raises ``OSError`` when the address is taken."""
        self._capabilities = self.engine.capabilities()
        self._demo = any(getattr(model, "demo", False) for model in self.engine.model_infos())
        self._notice = (getattr(self.engine, "notice", "") or DEMO_NOTICE) if self._demo else ""
        self.allocator = apply_allocator_policy()  # before the worker thread's first malloc
        log.info("%s", self.allocator)
        self.scheduler.start(self._warm_up() if self.config.preload else None)
        self._io = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="easel-io")
        self._server = await serve(
            self._handle, self.config.host, self.config.port,
            compression=None,  # deflate caps big frames at ~25 MB/s; raw frames move at ~1 GB/s on loopback
            max_size=self.limits.max_frame_bytes,  # a larger frame closes the connection with 1009
            # Frames read ahead per connection: 4 in websockets' queue and CHAIN_DEPTH (4) image chunks in
            # its chain, at most ~40 MiB.
            max_queue=4,
            origins=[None, *self.config.allowed_origins],  # a browser page must not drive the server
            process_request=self._admit, process_response=self._admitted_or_not,
            server_header=f"easel/{self.version}",
            create_connection=EaselServerConnection,  # image chunks read straight into their own buffers
        )
        sockets = list(self._server.sockets)
        self.port = sockets[0].getsockname()[1] if sockets else self.config.port
        where = ", ".join(_address(s.getsockname()) for s in sockets)
        log.info("Easel %s listening on %s (queue %d jobs, %d per client, %d connections%s)", self.version, where,
                 self.config.queue_size, self.config.max_client_jobs, self.config.max_connections,
                 ", token required" if self.config.token else "")
        if self._demo:
            log.warning("serving the DEMO model: a tiny random network whose images are noise; "
                        "start with --model ID=PATH to use a real model")

    def _warm_up(self) -> Callable[[], None] | None:
        """Loading the first configured model, to run on the worker before the first job."""
        models = getattr(self.engine, "models", None)
        ids = getattr(models, "ids", ())
        if not ids or not hasattr(models, "get"):
            return None
        # The first model a job can run on: a ControlNet is loaded with the job that uses it.
        kind_of = getattr(models, "facts", None)
        first = next((i for i in ids if kind_of is None or kind_of(i).kind != "controlnet"), None)
        if first is None:
            return None

        def load() -> None:
            started = time.perf_counter()
            models.get(first)
            log.info("model %s is ready (%.1f s)", first, time.perf_counter() - started)
        return load

    async def serve_until(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then :meth:`close`."""
        await stop.wait()
        await self.close()

    async def close(self) -> None:
        """Stop accepting, refuse new jobs, cancel (or, with ``drain_on_shutdown``, finish) queued
        and running jobs, tell the clients, and close every connection with 1001 (going away)."""
        if self.closing:
            return
        self.closing = True
        log.info("shutting down: no new connections or jobs%s",
                 "; finishing queued jobs" if self.config.drain_on_shutdown else "; cancelling open jobs")
        if self._server is not None:
            self._server.close(close_connections=False)
        # Draining waits for every queued job (a second Ctrl-C exits at once); cancelling waits for
        # the running job's next step, or for a model load to finish, at most 30 s.
        drain = self.config.drain_on_shutdown
        await self.scheduler.close(drain=drain, timeout=None if drain else 30.0)
        for client in list(self._clients.values()):
            if client.expiry is not None:
                client.expiry.cancel()
                client.expiry = None
        connections = list(self._connections)
        for conn in connections:
            conn.flush()
        await asyncio.gather(*(self._close_connection(conn) for conn in connections))
        if self._server is not None:
            await self._server.wait_closed()
        if self._io is not None:
            self._io.shutdown(wait=False)
        self._clients.clear()
        log.info("stopped")

    async def _close_connection(self, conn: Connection) -> None:
        # Let the writer send what is queued (job_cancelled for shutdown) and stop, then say goodbye.
        conn.closing = True
        conn.flush()
        if conn.writer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(conn.writer), _FLUSH_TIMEOUT)
            except (asyncio.TimeoutError, websockets.exceptions.ConnectionClosed):
                pass
        await conn.ws.close(1001, "the Easel server is shutting down")

    # -- admission (before the websocket handshake completes)

    def _admit(self, ws: ServerConnection, request: Request) -> Response | None:
        """Refuse a handshake with HTTP 503 when ``max_connections`` are open — after closing the
        oldest connection from the same address that has not sent hello, when that address holds
        its share of them (:data:`MAX_PENDING_PER_ADDRESS`)."""
        self._bound_pending(_host(ws.remote_address))
        if len(self._admitted) >= self.config.max_connections:
            self._refused_full += 1
            now = time.monotonic()
            if now - self._refused_logged_at >= REFUSAL_LOG_INTERVAL:
                log.warning("refused %d connection(s) (the last from %s): %d connections are open, the most this "
                            "server accepts (--max-connections)", self._refused_full, _address(ws.remote_address),
                            len(self._admitted))
                self._refused_full, self._refused_logged_at = 0, now
            return ws.respond(503, f"The Easel server has {len(self._admitted)} open connections, the most it "
                                   f"accepts; close one (or raise --max-connections) and try again.\n")
        self._admitted.add(ws)
        return None

    @property
    def max_pending_per_address(self) -> int:
        return max(1, min(MAX_PENDING_PER_ADDRESS, self.config.max_connections // 4))

    def _bound_pending(self, host: str) -> None:
        waiting = [ws for ws, address in self._pending.items() if address == host]
        for ws in waiting[:max(0, len(waiting) - self.max_pending_per_address + 1)]:
            log.info("closing a connection from %s that has not sent hello: that address opened more than %d such "
                     "connections", host, self.max_pending_per_address)
            del self._pending[ws]
            self._admitted.discard(ws)
            task = asyncio.get_running_loop().create_task(ws.close(
                CLOSE_NO_HELLO, "too many connections from your address have not sent hello; this was the oldest"))
            self._evictions.add(task)
            task.add_done_callback(self._evictions.discard)

    def _auth_delay(self, host: str) -> float:
        """Seconds a hello from ``host`` waits before it is read (0 without recent failed tokens)."""
        failures, since = self._auth_failures.get(host, (0, 0.0))
        if not failures or time.monotonic() - since > AUTH_WINDOW_S:
            return 0.0
        return min(AUTH_DELAY_MAX_S, AUTH_DELAY_S * 2 ** (failures - 1))

    def _auth_failed(self, host: str) -> int:
        """Count a failed token from ``host``; returns its failures within the window."""
        now = time.monotonic()
        failures, since = self._auth_failures.pop(host, (0, now))
        if now - since > AUTH_WINDOW_S:
            failures, since = 0, now
        self._auth_failures[host] = (failures + 1, since)
        while len(self._auth_failures) > AUTH_ADDRESSES:
            self._auth_failures.popitem(last=False)
        return failures + 1

    def _admitted_or_not(self, ws: ServerConnection, request: Request, response: Response) -> None:
        if response.status_code != 101:  # refused after admission (a browser Origin): not a connection
            self._admitted.discard(ws)
            if response.status_code == 403:
                log.warning("refused a connection from %s: its Origin %s is not allowed (--allow-origin)",
                            _address(ws.remote_address), printable(str(request.headers.get("Origin", "")), 100))
        return None

    @property
    def connection_count(self) -> int:
        """Connections admitted and not yet finished (what ``max_connections`` bounds)."""
        return len(self._admitted)

    # -- connections

    async def _handle(self, ws: ServerConnection) -> None:
        peer = _address(ws.remote_address)
        conn = Connection(ws, ServerSession(limits=self.limits, token=self.config.token), peer)
        self._connections.add(conn)
        if ws in self._admitted:  # not closed meanwhile for its address's share of waiting connections
            self._pending[ws] = _host(ws.remote_address)
        writer = conn.writer = asyncio.create_task(self._write(conn), name=f"easel-writer-{peer}")
        deadline = asyncio.get_running_loop().time() + self.config.hello_timeout_s
        chain = conn.chain = ChunkChain(lambda frame: conn.session.receive_frame(frame),
                                        lambda events, error: self._chained(conn, events, error), self._io,
                                        plain=_plain_upload)
        try:
            while not conn.replaced:
                if conn.session.state is ConnectionState.CONNECTING:
                    try:
                        async with asyncio.timeout_at(deadline):
                            frame = await ws.recv()
                            delay = self._auth_delay(_host(ws.remote_address))
                            if delay:  # this address sent wrong tokens: its hellos wait, right or wrong
                                await asyncio.sleep(delay)
                    except TimeoutError:
                        log.info("connection from %s sent no hello within %g s; closing it", peer,
                                 self.config.hello_timeout_s)
                        await ws.close(CLOSE_NO_HELLO, f"send hello within {self.config.hello_timeout_s:.0f} s")
                        break
                else:
                    frame = await ws.recv()
                if conn.session.state is ConnectionState.READY and is_chunk_frame(frame):
                    await chain.put(frame)  # received on a thread while this reader reads on
                else:
                    await chain.settle()  # the chunks before it first, and their events: in order
                    if conn.replaced:
                        break
                    await self._on_frame(conn, frame)
                if conn.session.state is not ConnectionState.CONNECTING:
                    self._pending.pop(ws, None)
                conn.flush()
                if conn.session.state is ConnectionState.CLOSED:  # refused: say why, then close
                    break
                if conn.backlog > min(BACKLOG_HIGH, self.unread_allowance()):
                    await self._wait_drained(conn)
        except websockets.exceptions.ConnectionClosed:
            pass
        finally:
            await chain.close()  # its waiting chunks dropped, the one in hand put down: the session is ours
            self._connections.discard(conn)
            self._admitted.discard(ws)
            self._pending.pop(ws, None)
            if conn.client is not None:
                self._disconnected(conn.client, conn, ended=_closed_normally(ws))
            conn.closing = True
            conn.flush()
            try:
                await asyncio.wait_for(writer, _FLUSH_TIMEOUT)
            except (asyncio.TimeoutError, websockets.exceptions.ConnectionClosed):
                pass
            if conn.closer is not None:
                await asyncio.gather(conn.closer, return_exceptions=True)
            conn.session.connection_lost()
            conn.end_frames.clear()
            if conn.bad_frames > LOGGED_BAD_FRAMES:
                log.info("%s sent %d bad frames in all (%d not logged)", self._who(conn), conn.bad_frames,
                         conn.bad_frames - LOGGED_BAD_FRAMES)

    async def _wait_drained(self, conn: Connection) -> None:
        """Take no frames from this client until what it has not read yet is mostly written."""
        log.debug("%s has %d bytes waiting to be written; pausing its reader", self._who(conn), conn.backlog)
        while conn.backlog > self._resume_below() and not conn.closing and conn.writer is not None and not conn.writer.done():
            conn.drained.clear()
            await conn.drained.wait()

    def _resume_below(self) -> int:
        """A paused reader resumes once its client's unread bytes are below this."""
        return min(BACKLOG_LOW, self.unread_allowance() // 4)

    async def _write(self, conn: Connection) -> None:
        """Send the session's frames in order, taking one at a time while more than
        :data:`_TOGETHER_BYTES` wait: frames queued while a send waits on a slow socket stay in the
        outbox, where newer step previews replace older ones, and a result's chunks are framed as
        they go, their data written as views of the result (``protocol/transport_send.py``). Frames
        that wait together and are small in all are written in one socket write, in the same order."""
        try:
            while True:
                await conn.wake.wait()
                conn.wake.clear()
                while frames := conn.session.data_to_send(None if conn.session.bytes_to_send <= _TOGETHER_BYTES else 1, split=True):
                    if conn.replaced:
                        return
                    conn.in_flight = sum(len(frame) for frame in frames)
                    await _send_together(conn.ws, frames)
                    conn.in_flight = 0
                    for frame in frames:
                        end = conn.end_frames.pop(id(frame), None)
                        if end is not None and end[0] is frame:
                            end[1].handed_over = True
                    if conn.backlog <= self._resume_below():
                        conn.drained.set()
                if conn.backlog <= self._resume_below():
                    conn.drained.set()
                if conn.closing:
                    return
        except websockets.exceptions.ConnectionClosed:
            pass
        finally:
            conn.in_flight = 0
            conn.drained.set()

    async def _on_frame(self, conn: Connection, frame: Any) -> None:
        session = conn.session
        if isinstance(frame, str):
            log_id = self._bad_frame(conn, "sent a text frame")
            session.error(ErrorCode.MALFORMED_FRAME, "text frames are not part of the Easel protocol; send binary msgpack frames",
                          log_id=log_id)
            return
        try:
            if len(frame) > _BIG_FRAME:
                # Not an image chunk (those go through the chain), or one before the handshake.
                # Handled with the chain settled, so nothing else touches the session meanwhile but
                # the loop's job events for other jobs (one dict operation each, atomic under the GIL).
                events = await self._off_loop(session.receive_frame, frame)
            else:
                events = session.receive_frame(frame)
        except Exception as exc:
            self._frame_failed(conn, exc)
            return
        await self._on_events(conn, events)

    def _chained(self, conn: Connection, events: list[Any], error: BaseException | None) -> Awaitable[None] | None:
        """A chunk frame's outcome from the connection's chain, on the loop, in order. An upload's
        ``ImageUploaded`` is handled here and now; an error or another event (a frame that only
        looked like a chunk) with the chain stopped behind it, as any frame's."""
        if error is not None:
            self._frame_failed(conn, error)
        elif not _plain_upload(events):
            return self._on_events(conn, events)
        elif not events:
            return None  # a chunk before an image's last: nothing to answer, no writer to wake
        for event in events:
            if conn.replaced or conn.client is None:
                return None
            try:
                self._on_uploaded(conn, conn.client, event)
            except Exception:
                self._internal(conn, f"handling {type(event).__name__}")
        conn.flush()
        return None

    def _frame_failed(self, conn: Connection, exc: BaseException) -> None:
        """Answer a frame ``receive_frame`` raised for: the client's fault (a typed ``error``) or ours."""
        if isinstance(exc, RemoteProtocolError):
            log_id = self._bad_frame(conn, f"sent a bad frame: {exc.code.value}: {exc.message}")
            conn.session.error(exc.code, exc.message, log_id=log_id, ref=getattr(exc, "ref", "") or "",
                               details=getattr(exc, "details", None))
        else:
            self._internal(conn, "reading a frame", exc)

    async def _on_events(self, conn: Connection, events: list[Any]) -> None:
        if conn.session.refusal is not None:
            self._log_refusal(conn)
        for event in events:
            if conn.replaced:
                return
            try:
                await self._on_event(conn, event)
            except Exception:
                self._internal(conn, f"handling {type(event).__name__}")
        conn.flush()

    def _bad_frame(self, conn: Connection, what: str) -> str:
        """Count a bad frame; log it (and return its log id) while the connection is under the cap."""
        conn.bad_frames += 1
        if conn.bad_frames > LOGGED_BAD_FRAMES:
            return ""
        log_id = new_log_id()
        log.info("%s %s [log %s]%s", self._who(conn), printable(what, 300), log_id,
                 "; its further bad frames are counted, not logged" if conn.bad_frames == LOGGED_BAD_FRAMES else "")
        return log_id

    def _log_refusal(self, conn: Connection) -> None:
        refusal = conn.session.refusal
        hello = conn.session.hello
        name = printable(hello.client_name, 64) if hello else "?"
        if refusal.code is ErrorCode.UNAUTHORIZED:
            # Never the token sent or the one expected: the log may be read by others. A flood of
            # failures is summed up: lines at the 1st, 10th, 100th, ... failure of an address.
            host = _host(conn.ws.remote_address)
            failures = self._auth_failed(host)
            if failures == 1 or math.log10(failures).is_integer():
                log.warning("refused %s from %s: the token is missing or wrong (%d such refusal%s from %s within "
                            "%g s; its next hellos wait %g s)", name, conn.peer, failures, "s" * (failures > 1), host,
                            AUTH_WINDOW_S, self._auth_delay(host))
        else:
            log.info("refused %s from %s: %s: %s", name, conn.peer, refusal.code.value, refusal.message)

    def _internal(self, conn: Connection, doing: str, exc: BaseException | None = None) -> None:
        """Log the exception being handled (or ``exc``) under a new log id; tell the client that id."""
        log_id = new_log_id()
        log.error("internal error while %s for %s [log %s]", doing, self._who(conn), log_id, exc_info=exc or True)
        conn.session.error(ErrorCode.INTERNAL, f"the server hit an unexpected error; it keeps serving. Quote log id {log_id} when reporting it",
                           log_id=log_id)

    async def _on_event(self, conn: Connection, event: Any) -> None:
        session = conn.session
        if isinstance(event, Hello):
            self._on_hello(conn, event)
            return
        client = conn.client
        if client is None:  # taken over by a newer connection while this frame was read
            return
        if isinstance(event, SubmitJob):
            await self._on_submit(conn, client, event)
        elif isinstance(event, CancelJob):
            job = client.jobs.get(event.job_id)
            if job is not None:
                self.scheduler.cancel(job, REQUESTED)
        elif isinstance(event, OfferImages):
            have = [info.id for info in event.images if client.store.touch(info.id)]
            needed = sum({info.id: info.size for info in event.images if info.id not in have}.values())
            if needed > client.store.max_bytes:
                session.refuse_offer(ErrorCode.LIMIT_EXCEEDED,
                                     f"the offered images take {needed} bytes, more than this server keeps per client "
                                     f"({client.store.max_bytes} bytes); send smaller images or fewer at once")
            elif needed > client.store.room:
                session.refuse_offer(ErrorCode.LIMIT_EXCEEDED,
                                     f"the offered images take {needed} bytes, but the server's memory budget for images "
                                     f"({self.budget.limit} bytes, all clients together) has {client.store.room} left "
                                     f"for you; try again when other clients have finished, or send smaller images")
            else:
                session.images_wanted(event, have)
        elif isinstance(event, ImageUploaded):
            self._on_uploaded(conn, client, event)
        elif isinstance(event, ListModels):
            # Listing rescans the add-on folders (file headers): off the loop.
            infos = await self._off_loop(self._listing)
            if session.state is ConnectionState.READY:
                session.model_list(*infos)
        elif isinstance(event, DownloadModel):  # backend/download.py: opt-in, one at a time, its own thread
            self.downloads.start(event.download_id, event.name, lambda send: self._to_connection(conn, send),
                                 asyncio.get_running_loop().call_soon_threadsafe)

    def _on_uploaded(self, conn: Connection, client: Client, event: ImageUploaded) -> None:
        if client.store.put(event.image):
            conn.session.image_stored(event.image.id)
        else:
            conn.session.error(ErrorCode.LIMIT_EXCEEDED,
                               f"image {event.image.id[:12]} ({len(event.image.data)} bytes) does not fit in what this server "
                               f"keeps for you now ({client.store.room} bytes of {client.store.max_bytes} per client, within "
                               f"a budget of {self.budget.limit} for all clients); send a smaller image", ref=event.image.id)

    def _to_connection(self, conn: Connection, send: Callable[[ServerSession], Any]) -> None:
        """``send(conn.session)`` if that connection is still up (events of no job: downloads)."""
        if conn.session.state is ConnectionState.READY and not conn.replaced:
            send(conn.session)
            conn.flush()

    async def _off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on one of the server's :data:`IO_THREADS` threads."""
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    def _listing(self) -> tuple[Any, Any, Any, Any]:
        loras, embeddings = self.engine.addon_infos() if hasattr(self.engine, "addon_infos") else ((), ())
        return self.engine.model_infos(), loras, embeddings, self.downloads.offers()

    def _on_hello(self, conn: Connection, hello: Hello) -> None:
        session = conn.session
        if self.closing:
            session.refuse(ErrorCode.SHUTTING_DOWN, "the Easel server is shutting down; connect again once it has restarted")
            self._log_refusal(conn)
            return
        client = self._clients.get(hello.client_id) if hello.client_id else None
        resumed: dict[str, JobPhase] = {}
        replay: list[JobEnd] = []
        if client is not None:
            if client.connection is not None:
                self._take_over(client, client.connection)
            if client.expiry is not None:
                client.expiry.cancel()
                client.expiry = None
            resumed = {job_id: JobPhase.RUNNING if job.state == "running" else JobPhase.QUEUED
                       for job_id, job in client.jobs.items()}
            # Ends the client has not received: those never written to a socket, and those it names
            # as still open (written, but lost with the old connection).
            waiting = set(hello.open_jobs)
            for end in list(client.ended.values()):
                if end.job_id not in resumed and (not end.handed_over or end.job_id in waiting):
                    if all(info.id in client.store for info in end.images):
                        replay.append(end)
                        resumed[end.job_id] = JobPhase.RUNNING
                    else:
                        log.info("job %s/%s: its results left the client's image store; it cannot be sent again",
                                 client.client_id, printable(end.job_id))
        else:
            client = Client(_new_client_id(self._clients), printable(hello.client_name, 64), ImageStore(self.config.store_bytes, self.budget))
            self._clients[client.client_id] = client
        client.connection = conn
        client.disconnected_at = 0.0
        conn.client = client
        # Uploads in flight on this connection: at most the client's share of the memory budget now.
        limits = replace(self.limits, max_upload_bytes=min(self.limits.max_upload_bytes, self.client_share))
        session.welcome(server_name="easel", server_version=self.version, client_id=client.client_id,
                        capabilities=self._capabilities, demo=self._demo,
                        notice=self._notice, resumed=resumed, limits=limits)
        for job_id, job in client.jobs.items():
            position = self.scheduler.queue.position(job)
            if position is not None:
                self._guarded(job, lambda s, job_id=job_id, position=position: s.queue_position(job_id, position), conn)
        for end in replay:
            self._send_end(conn, client, end)
        log.info("client %s connected from %s (%s %s)%s", client.client_id, conn.peer, printable(hello.client_name, 64),
                 printable(hello.client_version, 32),
                 f", resumed {len(resumed)} jobs ({len(replay)} ended while it was away)" if resumed else "")

    def _take_over(self, client: Client, old: Connection) -> None:
        """A newer connection presented ``client``'s id: the old connection stops here."""
        log.info("client %s: a new connection from another socket takes over; closing the old one from %s",
                 client.client_id, old.peer)
        old.replaced = True
        old.client = None
        old.flush()
        client.connection = None
        old.closer = asyncio.create_task(old.ws.close(CLOSE_TAKEN_OVER, "another connection took over this client"),
                                         name=f"easel-close-{old.peer}")

    # -- jobs

    async def _on_submit(self, conn: Connection, client: Client, submit: SubmitJob) -> None:
        session = conn.session
        key = f"{client.client_id}/{printable(submit.job_id)}"

        def fail(code: ErrorCode, message: str, log_id: str = "", details: dict | None = None) -> None:
            log.info("job %s refused: %s: %s", key, code.value, message)
            session.job_failed(submit.job_id, code, message, log_id=log_id, details=details)

        if self.closing:
            fail(ErrorCode.SHUTTING_DOWN, "the Easel server is shutting down and takes no new jobs; submit again once it has restarted")
            return
        if submit.job_id in client.jobs:  # open on the server, though not on this connection's session
            fail(ErrorCode.DUPLICATE_JOB, f"job {printable(submit.job_id, 40)!r} is still open; use a new job id")
            return
        # A live job supersedes the client's pending live job (taking its place in the queue) and
        # cancels its running one: neither counts against the bounds below.
        pending, running = live_jobs(client.jobs.values()) if submit.params.live else (None, None)
        if len(client.jobs) - (pending is not None) >= self.config.max_client_jobs:
            fail(ErrorCode.BUSY, f"you have {len(client.jobs)} jobs queued or running, the most one client may; "
                                 f"submit again when one has finished",
                 details={"client_jobs": len(client.jobs), "max_client_jobs": self.config.max_client_jobs})
            return
        for image_id in job_image_ids(submit):
            if not client.store.touch(image_id):
                fail(ErrorCode.UNKNOWN_IMAGE, f"image {image_id[:12]} is not on the server; offer it with offer_images "
                                              f"and upload the chunks the server asks for before submitting the job")
                return
        # The engine takes the job's images by role (image, mask, depth), and its control units'
        # images by id (roles are words, ids 64 hex digits: one mapping holds both).
        images = {role: client.store.get(image_id) for role, image_id in (submit.images or {}).items()}
        images.update({unit.image: client.store.get(unit.image) for unit in submit.params.controls})
        images.update({i: client.store.get(i) for i in job_image_ids(submit) if i not in images})  # references, regions
        if not self.scheduler.queue.admits(client.client_id) and pending is None:
            # Checked before prepare too, so a flood of jobs costs no validation work.
            fail(*_busy(self.scheduler.length, self.scheduler.queue.capacity))
            return
        quick = getattr(self.engine, "prepares_quickly", None)
        try:
            # prepare checks numbers and shapes (no torch, no decoding) and parses the prompts, 20,000
            # characters of them at most: linear, but not a few microseconds, and a first job on a model
            # reads its files. On a thread, unless the engine says it is quick (~0.1 ms): then here, which
            # saves the hand-off to a thread and back (two wake-ups); this connection's next frame is read
            # after the job is accepted either way.
            if quick is not None and quick(submit):
                prepared = self.engine.prepare(submit, images)
            else:
                prepared = await self._off_loop(self.engine.prepare, submit, images)
        except JobError as exc:
            fail(exc.code, exc.message, details=exc.details)
            return
        except Exception:
            log_id = new_log_id()
            log.error("job %s: checking the request failed unexpectedly [log %s]", key, log_id, exc_info=True)
            fail(ErrorCode.INTERNAL, f"the server hit an unexpected error while checking the job; it keeps serving. "
                                     f"Quote log id {log_id} when reporting it", log_id=log_id)
            return
        if conn.replaced or conn.client is not client:  # taken over meanwhile: this connection says no more
            return
        if self.closing or submit.job_id in client.jobs:
            fail(*((ErrorCode.SHUTTING_DOWN, "the Easel server is shutting down and takes no new jobs; submit again "
                    "once it has restarted") if self.closing else
                   (ErrorCode.DUPLICATE_JOB, f"job {printable(submit.job_id, 40)!r} is still open; use a new job id")))
            return
        job = Job(client.client_id, submit.job_id, submit, prepared)
        if running is not None:
            self.scheduler.cancel(running, SUPERSEDED)  # stops at its next step; job_cancelled follows
        try:
            position = self.scheduler.submit(job, replacing=pending)
        except QueueFull as exc:
            fail(*_busy(exc.length, exc.capacity))
            return
        except ShuttingDown:
            fail(ErrorCode.SHUTTING_DOWN, "the Easel server is shutting down and takes no new jobs; submit again once it has restarted")
            return
        client.jobs[submit.job_id] = job
        client.ended.pop(submit.job_id, None)  # a job id used again: the old end is not this job's
        session.job_accepted(submit.job_id, position)
        log.info("job %s accepted: %s on %s, %sx%s, %s steps, seed %s; queue position %d", key, submit.task,
                 getattr(prepared, "model", "?"), getattr(prepared, "width", "?"), getattr(prepared, "height", "?"),
                 getattr(prepared, "steps", "?"), getattr(prepared, "seed", "?"), position)

    def _disconnected(self, client: Client, conn: Connection, ended: bool = False) -> None:
        """``conn`` is gone. ``ended``: the client closed it with 1000, ending its session (its jobs
        are cancelled now, not after the grace period, which is for connections that drop)."""
        if client.connection is not conn:
            return
        client.connection = None
        grace = self.config.reconnect_grace_s
        if ended:
            log.info("client %s closed its connection%s", client.client_id,
                     f"; cancelling its {len(client.jobs)} open jobs" if client.jobs else "")
            self._forget(client)
        elif grace > 0 and not self.closing:
            client.disconnected_at = time.monotonic()
            log.info("client %s disconnected; keeping its %d open jobs and its images for %g s", client.client_id,
                     len(client.jobs), grace)
            client.expiry = asyncio.get_running_loop().call_later(grace, self._expire, client)
            self._bound_waiting_clients()
        else:
            log.info("client %s disconnected%s", client.client_id,
                     f"; cancelling its {len(client.jobs)} open jobs" if client.jobs else "")
            self._forget(client)

    def _bound_waiting_clients(self) -> None:
        """At most ``max_connections`` disconnected clients wait for a reconnect; the longest gone go first."""
        waiting = sorted((c for c in self._clients.values() if c.connection is None), key=lambda c: c.disconnected_at)
        for client in waiting[:max(0, len(waiting) - self.config.max_connections)]:
            log.info("client %s: too many disconnected clients are waiting; forgetting it early", client.client_id)
            self._forget(client)

    def _expire(self, client: Client) -> None:
        if client.connection is None:
            log.info("client %s did not come back within %g s%s", client.client_id, self.config.reconnect_grace_s,
                     f"; cancelling its {len(client.jobs)} open jobs" if client.jobs else "")
        self._forget(client)

    def _forget(self, client: Client) -> None:
        """Cancel a gone client's jobs, drop its images and kept ends."""
        if client.connection is not None:
            return
        if client.expiry is not None:
            client.expiry.cancel()
        client.expiry = None
        if self._clients.get(client.client_id) is client:
            del self._clients[client.client_id]
        for job in list(client.jobs.values()):
            self.scheduler.cancel(job, DISCONNECTED)
        client.jobs.clear()
        client.ended.clear()
        client.store.clear()

    # JobListener: the scheduler's events, routed to the client that owns the job (loop thread).

    def _live(self, job: Job) -> tuple[Client | None, Connection | None]:
        client = self._clients.get(job.client_id)
        if client is None or client.jobs.get(job.job_id) is not job:
            return None, None
        conn = client.connection
        if conn is None or conn.replaced or conn.session.state is not ConnectionState.READY:
            return client, None
        return client, conn

    def _guarded(self, job: Job, send: Callable[[ServerSession], Any], conn: Connection) -> Any:
        """``send(conn.session)``; an event the session refuses is a bug here: logged, never raised."""
        try:
            return send(conn.session)
        except Exception:
            log_id = new_log_id()
            log.error("could not send an event of job %s [log %s]", job.key, log_id, exc_info=True)
            return None
        finally:
            conn.flush()

    def _deliver(self, job: Job, send: Callable[[ServerSession], Any]) -> None:
        """Hand one of ``job``'s progress events to its client's session, if it is connected."""
        _, conn = self._live(job)
        if conn is not None:
            self._guarded(job, send, conn)

    def _end(self, job: Job, end: JobEnd, images: list[ImagePayload] | None = None) -> None:
        """``job`` ended: keep the end for a reconnect, and send it if the client is connected."""
        self._building.pop(job, None)
        client, conn = self._live(job)
        if client is None:
            return
        del client.jobs[job.job_id]
        client.remember(end)
        if conn is not None:
            self._send_end(conn, client, end, images)

    def _send_end(self, conn: Connection, client: Client, end: JobEnd, images: list[ImagePayload] | None = None) -> None:
        # Bytes the client has not read while the writer is stuck on its socket (a replay after a
        # reconnect queues many ends before the writer runs: that is not a client failing to read).
        unread = conn.backlog if conn.in_flight else 0
        if unread and unread + _end_bytes(end, images) > self.unread_allowance():
            self._drop_unread(conn)  # the end stays not handed over: it is sent when the client comes back
            return
        try:
            frame = end.send(conn.session, client.store, images)
        except Exception:
            log_id = new_log_id()
            log.error("could not send the end of job %s/%s [log %s]", client.client_id, printable(end.job_id), log_id,
                      exc_info=True)
            conn.session.error(ErrorCode.INTERNAL, f"the server could not report the end of job {end.job_id[:128]!r}; "
                               f"quote log id {log_id} when reporting it", log_id=log_id, ref=end.job_id[:128])
            frame = None
        if frame is not None:
            end.handed_over = False
            conn.end_frames[id(frame)] = (frame, end)
        conn.flush()

    def _drop_unread(self, conn: Connection) -> None:
        """The client is not reading: cut the socket (a close frame would wait behind the backlog),
        free the queued frames, and keep the client for its grace period like any dropped connection."""
        if conn.closing or conn.replaced:
            return
        log.warning("%s has %d bytes waiting that it does not read (its share of the memory budget allows %d); "
                    "dropping its connection (its results wait for a reconnect)", self._who(conn), conn.backlog,
                    self.unread_allowance())
        conn.closing = True
        conn.session.drop_unsent()  # free the outbox now; the ends were not handed over, so they are sent again
        conn.end_frames.clear()
        conn.ws.transport.abort()

    def job_started(self, job: Job) -> None:
        info = _started_fields(job.prepared)
        self._building[job] = info["width"] * info["height"] * 4 * max(1, int(job.submit.params.batch_size or 1))
        self._deliver(job, lambda session: session.job_started(job.job_id, **info))

    def job_position(self, job: Job, position: int) -> None:
        self._deliver(job, lambda session: session.queue_position(job.job_id, position))

    def job_preview(self, job: Job, step: int, total: int, width: int, height: int, jpeg: bytes) -> None:
        self._deliver(job, lambda session: session.step_preview(job.job_id, step, total, width, height, jpeg))

    def job_finished(self, job: Job, output: Any) -> None:
        client = self._clients.get(job.client_id)
        if client is not None:
            for image in output.images:  # a result reused as the next job's input is never uploaded
                client.store.put(image)
        timings = dict(output.timings or {})
        timings["queued"] = job.started_at - job.accepted_at  # waiting for the device
        timings["worker"] = job.run_seconds  # engine.run on the worker thread, end to end
        seeds = [int(seed) for seed in output.seeds]
        infos = tuple(ImageInfo(image.id, image.format, image.width, image.height, len(image.data)) for image in output.images)
        end = JobEnd(job.job_id, "finished", {"seed": seeds[0] if seeds else 0, "seeds": seeds, "timings": timings}, infos)
        self._end(job, end, list(output.images))

    def job_failed(self, job: Job, code: ErrorCode, message: str, log_id: str, details: dict | None) -> None:
        self._end(job, JobEnd(job.job_id, "failed", {"code": code, "message": message, "log_id": log_id, "details": details}))

    def job_cancelled(self, job: Job, reason: str) -> None:
        self._end(job, JobEnd(job.job_id, "cancelled", {"reason": reason}))

    # -- helpers

    def _who(self, conn: Connection) -> str:
        return f"client {conn.client.client_id}" if conn.client else f"connection from {conn.peer}"

    @property
    def clients(self) -> dict[str, Client]:
        """Clients known now (connected, or disconnected within their grace period). Read-only use."""
        return dict(self._clients)

    @property
    def connections(self) -> set[Connection]:
        """Connections being served now. Read-only use."""
        return set(self._connections)


#: Sends a writer's frames in order: small ones in one socket write, a result chunk's data as it is
#: (no copy into a frame). A name of its own here, which ``benchmarks/overhead_bench.py`` times.
_send_together = send_frames


def _plain_upload(events: list[Any]) -> bool:
    """Whether a chunk frame's events are what an upload's chunks give: none, or its image."""
    return all(type(event) is ImageUploaded for event in events)


def _busy(length: int, capacity: int) -> tuple[ErrorCode, str, str, dict]:
    return (ErrorCode.BUSY,
            f"the server is busy: {length} jobs are already waiting, the most it queues; try again when one has finished",
            "", {"queue_length": length, "max_queued_jobs": capacity})


def _end_bytes(end: JobEnd, images: list[ImagePayload] | None) -> int:
    """About the bytes of ``end``'s frame: its result images (metadata is small)."""
    if images is not None:
        return sum(len(image.data) for image in images)
    return sum(info.size for info in end.images)


def _closed_normally(ws: ServerConnection) -> bool:
    """Whether the client closed the connection with 1000 (normal closure): its session is over."""
    received = ws.protocol.close_rcvd
    return received is not None and received.code == 1000 and bool(ws.protocol.close_rcvd_then_sent)


def _started_fields(prepared: Any) -> dict[str, Any]:
    """``job_started``'s fields from the engine's prepared job."""
    plan = getattr(prepared, "memory", None)  # backend.memory: the measures that make the job fit
    return {"model": prepared.model, "seed": int(prepared.seed), "steps": int(prepared.steps),
            "width": int(prepared.width), "height": int(prepared.height),
            "memory": tuple(plan.measures) if plan else (), "memory_estimate": int(plan.estimate) if plan else 0}


def _new_client_id(taken: dict[str, Any]) -> str:
    """A fresh client id: 128 random bits. Knowing a client's id is enough to take over its jobs
    and results, so it must be unguessable; it travels only on that client's own connection."""
    while True:
        client_id = "c" + secrets.token_hex(16)
        if client_id not in taken:
            return client_id


def _host(address: Any) -> str:
    """The host part of a socket address (what per-address bounds count by)."""
    return str(address[0]) if isinstance(address, tuple) and address else str(address)


def _address(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)
