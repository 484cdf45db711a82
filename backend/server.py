"""The websocket server: connections, per-client image stores, the client registry.

One :class:`~protocol.ServerSession` per connection, driven by two tasks: a reader (frames →
``receive_frame`` → requests → answers into the session's outbox) and a writer that drains the
outbox whenever it is woken. Step previews are coalesced in the outbox, so a slow client gets
the latest preview instead of a backlog. Jobs go through :class:`backend.jobs.Scheduler`, whose
worker thread owns the device; this module is its :class:`~backend.jobs.JobListener` and routes
each job's events to the session of the client that submitted it — a client sees only its own jobs.

Errors: a client's bad frame gets a typed ``error`` with a log id and the connection goes on; a
bug while handling a request is logged with its traceback under a log id, and the client gets
``internal`` with that id and nothing else.

Clients are kept apart from connections so that a reconnect (same ``client_id`` within
``ServerConfig.reconnect_grace_s``) can take over its open jobs; with the default grace of 0 a
client's jobs are cancelled as soon as its connection drops.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

import websockets
from websockets.asyncio.server import ServerConnection, serve

from protocol import (
    MAX_CHUNK_BYTES, CancelJob, ConnectionState, ErrorCode, Hello, ImagePayload, ImageUploaded,
    JobPhase, Limits, ListModels, OfferImages, RemoteProtocolError, ServerSession, SubmitJob,
    job_image_ids,
)

from .config import ServerConfig
from .errors import JobError
from .jobs import DISCONNECTED, REQUESTED, Job, QueueFull, Scheduler, ShuttingDown, new_log_id, printable

log = logging.getLogger("easel.server")

#: Frames above this size, and image chunks of any size, are handled on a thread: the last chunk
#: of an image makes the session hash the whole image (SHA-256 of a 4096² layer takes ~40-100 ms),
#: which must not stall the loop. Small frames are handled inline (a thread hop costs ~0.1 ms).
_BIG_FRAME = 64 * 1024
#: How an ``image_chunk`` frame from our own codec starts: a map whose first key is "type".
_CHUNK_MARK = b"\xa4type\xabimage_chunk"
#: Seconds a closing connection's writer gets to flush its last frames.
_FLUSH_TIMEOUT = 5.0

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
    return Limits(max_frame_bytes=MAX_CHUNK_BYTES + 1024 * 1024, max_queued_jobs=config.queue_size)


class ImageStore:
    """A client's images by content id: uploads and the results the server produced.

    Bounded by bytes; the least recently used image goes first. An image larger than the whole
    store is not kept (``put`` returns False). Loop thread only.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._images: OrderedDict[str, ImagePayload] = OrderedDict()

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
        if size > self.max_bytes:
            return False
        if image.id in self._images:
            self._images.move_to_end(image.id)
            return True
        while self.bytes + size > self.max_bytes:
            _, old = self._images.popitem(last=False)
            self.bytes -= len(old.data)
        self._images[image.id] = image
        self.bytes += size
        return True

    def clear(self) -> None:
        self._images.clear()
        self.bytes = 0


@dataclass(eq=False)
class Client:
    """A client as the server knows it, across reconnects: its id, images and open jobs."""

    client_id: str
    name: str
    store: ImageStore
    jobs: dict[str, Job] = field(default_factory=dict)
    connection: "Connection | None" = None
    #: The timer that forgets a disconnected client when its grace period ends.
    expiry: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class Connection:
    ws: ServerConnection
    session: ServerSession
    peer: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    client: Client | None = None
    writer: "asyncio.Task | None" = None
    closing: bool = False

    def flush(self) -> None:
        """Wake the writer: the session's outbox has frames."""
        self.wake.set()


class EaselServer:
    """Serves ``engine`` over websockets per ``config``.

    Use::

        server = EaselServer(config, engine)
        await server.start()           # binds; server.port is the real port (config.port 0 picks one)
        await server.serve_until(stop) # stop: an asyncio.Event set by a signal handler
        # or: await server.close()

    ``engine`` follows the engine seam (docs/design.md): ``model_infos``, ``capabilities``,
    ``prepare`` and ``run``.
    """

    def __init__(self, config: ServerConfig, engine: Any) -> None:
        self.config = config
        self.engine = engine
        self.limits = limits_for(config)
        self.version = server_version()
        self.scheduler = Scheduler(engine, self, capacity=config.queue_size)
        self.port: int = 0
        self.closing = False
        self._clients: dict[str, Client] = {}
        self._connections: set[Connection] = set()
        self._server: Any = None
        self._capabilities: Any = None
        self._demo = False
        self._notice = ""

    # -- life cycle

    async def start(self) -> None:
        """Bind and start serving. Raises ``OSError`` when the address is taken."""
        self._capabilities = self.engine.capabilities()
        self._demo = any(getattr(model, "demo", False) for model in self.engine.model_infos())
        self._notice = (getattr(self.engine, "notice", "") or DEMO_NOTICE) if self._demo else ""
        self.scheduler.start(self._warm_up() if self.config.preload else None)
        self._server = await serve(
            self._handle, self.config.host, self.config.port,
            compression=None,  # deflate caps big frames at ~25 MB/s; raw frames move at ~1 GB/s on loopback
            max_size=self.limits.max_frame_bytes,  # a larger frame closes the connection with 1009
            max_queue=8,  # frames read ahead per connection: at most ~40 MiB
            origins=[None, *self.config.allowed_origins],  # a browser page must not drive the server
            server_header=f"easel/{self.version}",
        )
        sockets = list(self._server.sockets)
        self.port = sockets[0].getsockname()[1] if sockets else self.config.port
        where = ", ".join(_address(s.getsockname()) for s in sockets)
        log.info("Easel %s listening on %s (queue %d jobs%s)", self.version, where, self.config.queue_size,
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
        connections = list(self._connections)
        for conn in connections:
            conn.flush()
        await asyncio.gather(*(self._close_connection(conn) for conn in connections))
        if self._server is not None:
            await self._server.wait_closed()
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

    # -- connections

    async def _handle(self, ws: ServerConnection) -> None:
        peer = _address(ws.remote_address)
        conn = Connection(ws, ServerSession(limits=self.limits, token=self.config.token), peer)
        self._connections.add(conn)
        writer = conn.writer = asyncio.create_task(self._write(conn), name=f"easel-writer-{peer}")
        try:
            async for frame in ws:
                await self._on_frame(conn, frame)
                conn.flush()
                if conn.session.state is ConnectionState.CLOSED:  # refused: say why, then close
                    break
        except websockets.exceptions.ConnectionClosed:
            pass
        finally:
            self._connections.discard(conn)
            if conn.client is not None:
                self._disconnected(conn.client, conn)
            conn.closing = True
            conn.flush()
            try:
                await asyncio.wait_for(writer, _FLUSH_TIMEOUT)
            except (asyncio.TimeoutError, websockets.exceptions.ConnectionClosed):
                pass
            conn.session.connection_lost()

    async def _write(self, conn: Connection) -> None:
        """Send the session's frames in order. Frames queued while a send waits on a slow socket
        stay in the outbox, where newer step previews replace older ones."""
        try:
            while True:
                await conn.wake.wait()
                conn.wake.clear()
                for frame in conn.session.data_to_send():
                    await conn.ws.send(frame)
                if conn.closing:
                    return
        except websockets.exceptions.ConnectionClosed:
            pass

    async def _on_frame(self, conn: Connection, frame: Any) -> None:
        session = conn.session
        if isinstance(frame, str):
            log_id = new_log_id()
            log.info("%s sent a text frame [log %s]", self._who(conn), log_id)
            session.error(ErrorCode.MALFORMED_FRAME, "text frames are not part of the Easel protocol; send binary msgpack frames",
                          log_id=log_id)
            return
        try:
            if len(frame) > _BIG_FRAME or _CHUNK_MARK in frame[:32]:
                # Image chunks, in practice. Their handling touches only the session's upload state,
                # which nothing but this reader changes; the loop meanwhile only adds job events for
                # other jobs (one dict operation each, atomic under the GIL). Pings, which write to
                # the outbox, are small and never come here.
                events = await asyncio.to_thread(session.receive_frame, frame)
            else:
                events = session.receive_frame(frame)
        except RemoteProtocolError as exc:
            log_id = new_log_id()
            log.info("%s sent a bad frame [log %s]: %s: %s", self._who(conn), log_id, exc.code.value, exc.message)
            session.error(exc.code, exc.message, log_id=log_id, ref=getattr(exc, "ref", "") or "")
            return
        except Exception:
            self._internal(conn, "reading a frame")
            return
        for event in events:
            try:
                await self._on_event(conn, event)
            except Exception:
                self._internal(conn, f"handling {type(event).__name__}")

    def _internal(self, conn: Connection, doing: str) -> None:
        log_id = new_log_id()
        log.error("internal error while %s for %s [log %s]", doing, self._who(conn), log_id, exc_info=True)
        conn.session.error(ErrorCode.INTERNAL, f"the server hit an unexpected error; it keeps serving. Quote log id {log_id} when reporting it",
                           log_id=log_id)

    async def _on_event(self, conn: Connection, event: Any) -> None:
        session = conn.session
        if isinstance(event, Hello):
            self._on_hello(conn, event)
            return
        client = conn.client
        assert client is not None  # the session only passes requests on after the handshake
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
            else:
                session.images_wanted(event, have)
        elif isinstance(event, ImageUploaded):
            if client.store.put(event.image):
                session.image_stored(event.image.id)
            else:
                session.error(ErrorCode.LIMIT_EXCEEDED,
                              f"image {event.image.id[:12]} ({len(event.image.data)} bytes) is larger than this server keeps per client "
                              f"({client.store.max_bytes} bytes); send a smaller image", ref=event.image.id)
        elif isinstance(event, ListModels):
            loras, embeddings = self.engine.addon_infos() if hasattr(self.engine, "addon_infos") else ((), ())
            session.model_list(self.engine.model_infos(), loras, embeddings)

    def _on_hello(self, conn: Connection, hello: Hello) -> None:
        session = conn.session
        if self.closing:
            session.refuse(ErrorCode.SHUTTING_DOWN, "the Easel server is shutting down; connect again once it has restarted")
            return
        client = self._clients.get(hello.client_id) if hello.client_id else None
        resumed: dict[str, JobPhase] = {}
        if client is not None and client.connection is None:
            if client.expiry is not None:
                client.expiry.cancel()
                client.expiry = None
            resumed = {job_id: JobPhase.RUNNING if job.state == "running" else JobPhase.QUEUED
                       for job_id, job in client.jobs.items()}
        else:
            client = Client(_new_client_id(self._clients), printable(hello.client_name, 64), ImageStore(self.config.store_bytes))
            self._clients[client.client_id] = client
        client.connection = conn
        conn.client = client
        session.welcome(server_name="easel", server_version=self.version, client_id=client.client_id,
                        capabilities=self._capabilities, demo=self._demo,
                        notice=self._notice, resumed=resumed)
        log.info("client %s connected from %s (%s %s)%s", client.client_id, conn.peer, printable(hello.client_name, 64),
                 printable(hello.client_version, 32), f", resumed {len(resumed)} jobs" if resumed else "")

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
        for image_id in job_image_ids(submit):
            if not client.store.touch(image_id):
                fail(ErrorCode.UNKNOWN_IMAGE, f"image {image_id[:12]} is not on the server; offer it with offer_images "
                                              f"and upload the chunks the server asks for before submitting the job")
                return
        # The engine takes the job's images by role (image, mask, depth), and its control units'
        # images by id (roles are words, ids 64 hex digits: one mapping holds both).
        images = {role: client.store.get(image_id) for role, image_id in (submit.images or {}).items()}
        images.update({unit.image: client.store.get(unit.image) for unit in submit.params.controls})
        if self.scheduler.length >= self.scheduler.queue.capacity:
            # Checked before prepare too, so a flood of jobs costs no validation work.
            fail(*_busy(self.scheduler.length, self.scheduler.queue.capacity))
            return
        try:
            # Inline: the engine's prepare checks numbers and shapes only (no torch, no decoding).
            prepared = self.engine.prepare(submit, images)
        except JobError as exc:
            fail(exc.code, exc.message, details=exc.details)
            return
        except Exception:
            log_id = new_log_id()
            log.error("job %s: checking the request failed unexpectedly [log %s]", key, log_id, exc_info=True)
            fail(ErrorCode.INTERNAL, f"the server hit an unexpected error while checking the job; it keeps serving. "
                                     f"Quote log id {log_id} when reporting it", log_id=log_id)
            return
        job = Job(client.client_id, submit.job_id, submit, prepared)
        try:
            position = self.scheduler.submit(job)
        except QueueFull as exc:
            fail(*_busy(exc.length, exc.capacity))
            return
        except ShuttingDown:
            fail(ErrorCode.SHUTTING_DOWN, "the Easel server is shutting down and takes no new jobs; submit again once it has restarted")
            return
        client.jobs[submit.job_id] = job
        session.job_accepted(submit.job_id, position)
        log.info("job %s accepted: %s on %s, %sx%s, %s steps, seed %s; queue position %d", key, submit.task,
                 getattr(prepared, "model", "?"), getattr(prepared, "width", "?"), getattr(prepared, "height", "?"),
                 getattr(prepared, "steps", "?"), getattr(prepared, "seed", "?"), position)

    def _disconnected(self, client: Client, conn: Connection) -> None:
        if client.connection is not conn:
            return
        client.connection = None
        grace = self.config.reconnect_grace_s
        if grace > 0 and client.jobs and not self.closing:
            log.info("client %s disconnected; keeping its %d open jobs for %.0f s", client.client_id, len(client.jobs), grace)
            client.expiry = asyncio.get_running_loop().call_later(grace, self._forget, client)
        else:
            log.info("client %s disconnected%s", client.client_id,
                     f"; cancelling its {len(client.jobs)} open jobs" if client.jobs else "")
            self._forget(client)

    def _forget(self, client: Client) -> None:
        """Cancel a gone client's jobs and drop its images."""
        if client.connection is not None:
            return
        client.expiry = None
        for job in list(client.jobs.values()):
            self.scheduler.cancel(job, DISCONNECTED)
        client.store.clear()
        if self._clients.get(client.client_id) is client:
            del self._clients[client.client_id]

    # JobListener: the scheduler's events, routed to the client that owns the job (loop thread).

    def _route(self, job: Job, *, done: bool = False) -> Connection | None:
        client = self._clients.get(job.client_id)
        if client is None:
            return None
        if done:
            client.jobs.pop(job.job_id, None)
        conn = client.connection
        if conn is None or conn.session.state is not ConnectionState.READY:
            return None
        return conn

    def _deliver(self, job: Job, send: Callable[[ServerSession], None], *, done: bool = False) -> None:
        """Hand one of ``job``'s events to its client's session, if the client is connected.

        An event the session refuses is a bug on this side: it is logged with a log id and, for a
        job's last event, the client gets an ``internal`` error naming the job, so that no job ends
        silently. The worker and the other clients carry on either way.
        """
        conn = self._route(job, done=done)
        if conn is None:
            return
        try:
            send(conn.session)
        except Exception:
            log_id = new_log_id()
            log.error("could not send an event of job %s [log %s]", job.key, log_id, exc_info=True)
            if done:
                conn.session.error(ErrorCode.INTERNAL, f"the server could not report the end of job {job.job_id!r}; "
                                   f"quote log id {log_id} when reporting it", log_id=log_id, ref=job.job_id[:128])
        conn.flush()

    def job_started(self, job: Job) -> None:
        info = _started_fields(job.prepared)
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
        seeds = list(output.seeds)
        self._deliver(job, lambda session: session.job_finished(
            job.job_id, output.images, seed=seeds[0] if seeds else 0, seeds=seeds, timings=timings), done=True)

    def job_failed(self, job: Job, code: ErrorCode, message: str, log_id: str, details: dict | None) -> None:
        self._deliver(job, lambda session: session.job_failed(job.job_id, code, message, log_id=log_id, details=details),
                      done=True)

    def job_cancelled(self, job: Job, reason: str) -> None:
        self._deliver(job, lambda session: session.job_cancelled(job.job_id, reason), done=True)

    # -- helpers

    def _who(self, conn: Connection) -> str:
        return f"client {conn.client.client_id}" if conn.client else f"connection from {conn.peer}"

    @property
    def clients(self) -> dict[str, Client]:
        """Clients known now (connected, or disconnected within their grace period). Read-only use."""
        return dict(self._clients)


def _busy(length: int, capacity: int) -> tuple[ErrorCode, str, str, dict]:
    return (ErrorCode.BUSY,
            f"the server is busy: {length} jobs are already waiting, the most it queues; try again when one has finished",
            "", {"queue_length": length, "max_queued_jobs": capacity})


def _started_fields(prepared: Any) -> dict[str, Any]:
    """``job_started``'s fields from the engine's prepared job."""
    return {"model": prepared.model, "seed": int(prepared.seed), "steps": int(prepared.steps),
            "width": int(prepared.width), "height": int(prepared.height)}


def _new_client_id(taken: dict[str, Any]) -> str:
    while True:
        client_id = "c" + secrets.token_hex(4)
        if client_id not in taken:
            return client_id


def _address(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)
