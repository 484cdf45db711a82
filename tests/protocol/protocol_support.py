"""Support for the protocol tests: hypothesis strategies built from the message type hints, an
in-memory link between a client and a server session, and a small websocket server on loopback.

The loopback server drives a real :class:`protocol.ServerSession` per connection with a toy
"engine": a job's result is its input image inverted (or a generated gradient), so results are
checkable byte for byte. It stands in for ``backend.server`` (no models, no queue) so the wire
layer can be tested on its own; the backend has its own tests against the real server.

(Named ``protocol_support`` rather than ``helpers`` so it cannot collide with another test
folder's module on ``sys.path``.)
"""
from __future__ import annotations

import asyncio
import dataclasses
import enum
import threading
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from hypothesis import HealthCheck, settings, strategies as st
import websockets
from websockets.asyncio.server import ServerConnection, serve

from protocol import (
    MAX_CHUNK_BYTES, MESSAGES, Capabilities, CancelJob, ClientSession, ConnectionState, ErrorCode, Hello,
    ImagePayload, ImageUploaded, JobPhase, Limits, ListModels, ModelInfo, OfferImages, RemoteProtocolError,
    ServerSession, SubmitJob, Task, decode, job_image_ids,
)
from protocol.messages import CLIENT_MESSAGES, SERVER_MESSAGES, Message

# --------------------------------------------------------------------------- strategies

#: Hypothesis settings for these tests: no per-example deadline (the pure-Python msgpack run and a
#: busy 2-core machine are slow, and timing is not what these tests check).
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=100)
FUZZ = settings(PROPERTY, max_examples=400)

#: Every integer msgpack can carry.
INTS = st.integers(-(2 ** 63), 2 ** 64 - 1)


def strategy_for(hint: Any) -> st.SearchStrategy:
    """Values of the type ``hint`` as the codec understands types. A hint this does not know
    raises ``TypeError``: a new field type must be taught here (and to the codec) deliberately."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is int:
        return INTS
    if hint is float:
        return st.floats(allow_nan=False)
    if hint is str:
        return st.text(max_size=24)
    if hint is bool:
        return st.booleans()
    if hint is bytes:
        return st.binary(max_size=64)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        inner = st.one_of([strategy_for(m) for m in members])
        return st.none() | inner if len(members) < len(args) else inner
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return st.lists(strategy_for(args[0]), max_size=3).map(tuple)
    if origin is dict and args and args[0] is str:
        return st.dictionaries(st.text(max_size=10), strategy_for(args[1]), max_size=3)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return st.sampled_from(list(hint))
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return st.builds(hint, **{f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(hint)})
    raise TypeError(f"no strategy for {hint!r}; teach strategy_for about it")


def message_strategy(cls: type[Message]) -> st.SearchStrategy:
    return strategy_for(cls)


def any_message(classes: typing.Iterable[type[Message]] = MESSAGES.values()) -> st.SearchStrategy:
    return st.one_of([message_strategy(cls) for cls in classes])


CLIENT_MESSAGE = any_message(CLIENT_MESSAGES)
SERVER_MESSAGE = any_message(SERVER_MESSAGES)

#: Any msgpack value, nested a little: what a confused or hostile peer might put in a field.
MSGPACK_VALUES = st.recursive(
    st.none() | st.booleans() | INTS | st.floats() | st.text(max_size=12) | st.binary(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)

# --------------------------------------------------------------------------- sessions


def rgba(width: int, height: int, seed: int = 0) -> ImagePayload:
    """An RGBA8 image whose bytes depend on ``seed`` (so two seeds give two ids)."""
    row = bytes((x * 7 + seed) % 256 for x in range(width * 4))
    return ImagePayload.build("rgba8", width, height, row * height)


def limits(**overrides: Any) -> Limits:
    return Limits(max_frame_bytes=MAX_CHUNK_BYTES + 64 * 1024, **overrides)


CAPABILITIES = Capabilities(
    tasks=Task.ALL, samplers=("euler", "dpmpp_2m"),
    models=(ModelInfo("demo", "Demo (random weights)", "base", "demo", tasks=Task.ALL, demo=True),),
)


@dataclass
class Link:
    """A client session and a server session joined by lists: no sockets, no loop.

    ``to_server`` / ``to_client`` deliver every frame the sender has queued and return the events
    they produced; every frame is kept in ``sent_by_client`` / ``sent_by_server`` for inspection.
    """

    client: ClientSession
    server: ServerSession
    sent_by_client: list[bytes] = field(default_factory=list)
    sent_by_server: list[bytes] = field(default_factory=list)

    def to_server(self) -> list[Any]:
        frames = self.client.data_to_send()
        self.sent_by_client += frames
        return [event for frame in frames for event in self.server.receive_frame(frame)]

    def to_client(self) -> list[Any]:
        frames = self.server.data_to_send()
        self.sent_by_server += frames
        return [event for frame in frames for event in self.client.receive_frame(frame)]


def connect(*, server: ServerSession | None = None, client_id: str = "c-1", resumed: dict | None = None,
            **client_options: Any) -> Link:
    """A link whose handshake is done: hello → welcome."""
    link = Link(ClientSession("test-client", "0.1", **client_options), server or ServerSession(limits=limits()))
    (hello,) = link.to_server()
    assert isinstance(hello, Hello)
    link.server.welcome(server_name="test-server", server_version="0.1", client_id=client_id,
                        capabilities=CAPABILITIES, resumed=resumed)
    (welcome,) = link.to_client()
    assert link.client.state is ConnectionState.READY
    return link


def tags(frames: list[bytes]) -> list[str]:
    return [type(decode(frame)).TAG for frame in frames]


def invert(image: ImagePayload) -> ImagePayload:
    """The loopback server's "generation": every byte inverted (fast, and easy to check)."""
    return ImagePayload(image.format, image.width, image.height, image.data.translate(_INVERT))


_INVERT = bytes(255 - i for i in range(256))

# --------------------------------------------------------------------------- loopback server

#: Tasks the loopback server understands besides the real ones (which it runs at once):
HOLD = "hold"          # accepted, then kept open until finish() or a cancel; survives a reconnect
FORGET = "forget"      # like hold, but the server forgets it when the connection drops
FAIL = "fail"          # fails with invalid_parameter


@dataclass(eq=False)
class _Client:
    client_id: str
    store: dict[str, ImagePayload] = field(default_factory=dict)
    held: dict[str, SubmitJob] = field(default_factory=dict)
    connection: "_Connection | None" = None


@dataclass(eq=False)
class _Connection:
    ws: ServerConnection
    session: ServerSession
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    client: _Client | None = None


class LoopbackServer:
    """A websocket server on 127.0.0.1, on a thread of its own, driving one ``ServerSession`` per
    connection. Use as a context manager; ``url`` is where it listens.

    Everything observable is recorded for the tests: the extension headers of each handshake,
    the negotiated extensions, every upload (``uploads``), every chunk size, close codes.
    """

    def __init__(self, *, compression: str | None = None, max_size: int = MAX_CHUNK_BYTES + 1024 * 1024,
                 token: str = "", server_limits: Limits | None = None) -> None:
        self.compression = compression
        self.max_size = max_size
        self.token = token
        self.limits = server_limits or Limits(max_frame_bytes=max_size)
        self.url = ""
        self.clients: dict[str, _Client] = {}
        self.connections: list[_Connection] = []
        self.request_extensions: list[str | None] = []
        self.response_extensions: list[str | None] = []
        self.negotiated: list[list] = []
        self.uploads: list[ImagePayload] = []
        self.chunk_sizes: list[int] = []
        self.close_codes: list[int | None] = []
        self.errors: list[RemoteProtocolError] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="loopback-server", daemon=True)
        self._server: Any = None
        self._handlers_done = 0
        self._lock = threading.Lock()

    # -- life cycle

    def __enter__(self) -> "LoopbackServer":
        self._thread.start()
        self._server = self._run(self._start())
        self.url = f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    def __exit__(self, *exc: Any) -> None:
        async def stop() -> None:
            self._server.close()
            await self._server.wait_closed()
        self._run(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> Any:
        return await serve(self._handle, "127.0.0.1", 0, compression=self.compression, max_size=self.max_size)

    def _run(self, coroutine: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server's loop (where the sessions live) and return its result."""
        async def run() -> Any:
            return fn()
        return self._run(run())

    @property
    def handlers_done(self) -> int:
        with self._lock:
            return self._handlers_done

    # -- test controls

    def drop(self) -> None:
        """Cut every connection without a closing handshake, as a crash or a pulled cable would."""
        self.call(lambda: [conn.ws.transport.abort() for conn in self.connections])

    def inject(self, frame: bytes | str) -> None:
        """Send ``frame`` as it is on every connection: junk a misbehaving server might send."""
        async def send() -> None:
            for conn in list(self.connections):
                await conn.ws.send(frame)
        self._run(send())

    def finish(self, client_id: str, job_id: str) -> None:
        """Run a held job to its end on the client's current connection."""
        def run() -> None:
            client = self.clients[client_id]
            submit = client.held.pop(job_id)
            assert client.connection is not None, "the client is not connected"
            self._complete(client.connection, client, submit)
        self.call(run)

    # -- serving

    async def _handle(self, ws: ServerConnection) -> None:
        self.request_extensions.append(ws.request.headers.get("Sec-WebSocket-Extensions"))
        self.response_extensions.append(ws.response.headers.get("Sec-WebSocket-Extensions"))
        self.negotiated.append(list(ws.protocol.extensions))
        conn = _Connection(ws, ServerSession(limits=self.limits, token=self.token))
        self.connections.append(conn)
        writer = asyncio.create_task(self._write(conn))
        try:
            async for frame in ws:
                self._on_frame(conn, frame)
                conn.wake.set()
                if conn.session.state is ConnectionState.CLOSED:
                    break
        except websockets.exceptions.ConnectionClosed:
            pass
        finally:
            writer.cancel()
            try:
                await writer
            except (asyncio.CancelledError, websockets.exceptions.ConnectionClosed):
                pass
            try:  # what is still queued (a refusal, say) goes out before the close
                for frame in conn.session.data_to_send():
                    await ws.send(frame)
            except websockets.exceptions.ConnectionClosed:
                pass
            self.connections.remove(conn)
            conn.session.connection_lost()
            if conn.client is not None and conn.client.connection is conn:
                conn.client.connection = None
                conn.client.held = {k: v for k, v in conn.client.held.items() if v.task != FORGET}
            await ws.close()
            self.close_codes.append(ws.close_code)
            with self._lock:
                self._handlers_done += 1

    async def _write(self, conn: _Connection) -> None:
        while True:
            await conn.wake.wait()
            conn.wake.clear()
            for frame in conn.session.data_to_send():
                await conn.ws.send(frame)

    def _on_frame(self, conn: _Connection, frame: Any) -> None:
        session = conn.session
        if isinstance(frame, str):
            session.error(ErrorCode.MALFORMED_FRAME, "send binary frames")
            return
        try:
            events = session.receive_frame(frame)
        except RemoteProtocolError as exc:
            self.errors.append(exc)
            session.error(exc.code, exc.message)
            return
        message = decode(frame)
        if type(message).TAG == "image_chunk":
            self.chunk_sizes.append(len(message.data))  # type: ignore[attr-defined]
        for event in events:
            self._on_event(conn, event)

    def _on_event(self, conn: _Connection, event: Any) -> None:
        session = conn.session
        if isinstance(event, Hello):
            client = self.clients.get(event.client_id)
            if client is None or client.connection is not None:
                client = _Client(f"client-{len(self.clients) + 1}")
                self.clients[client.client_id] = client
            client.connection, conn.client = conn, client
            session.welcome(server_name="loopback", server_version="0", client_id=client.client_id,
                            capabilities=CAPABILITIES, resumed={job_id: JobPhase.QUEUED for job_id in client.held})
            return
        client = conn.client
        assert client is not None
        if isinstance(event, OfferImages):
            session.images_wanted(event, [info.id for info in event.images if info.id in client.store])
        elif isinstance(event, ImageUploaded):
            self.uploads.append(event.image)
            client.store[event.image.id] = event.image
            session.image_stored(event.image.id)
        elif isinstance(event, SubmitJob):
            self._on_submit(conn, client, event)
        elif isinstance(event, CancelJob):
            if client.held.pop(event.job_id, None) is not None:
                session.job_cancelled(event.job_id, "requested")
        elif isinstance(event, ListModels):
            session.model_list(CAPABILITIES.models)

    def _on_submit(self, conn: _Connection, client: _Client, submit: SubmitJob) -> None:
        session = conn.session
        missing = [i for i in job_image_ids(submit) if i not in client.store]
        if missing:
            session.job_failed(submit.job_id, ErrorCode.UNKNOWN_IMAGE, f"image {missing[0][:12]} was never uploaded")
            return
        if submit.task == FAIL:
            session.job_failed(submit.job_id, ErrorCode.INVALID_PARAMETER, "strength must be between 0 and 1, got 1.4",
                               log_id="log-1", details={"field": "strength", "value": 1.4})
            return
        session.job_accepted(submit.job_id, len(client.held))
        if submit.task in (HOLD, FORGET):
            client.held[submit.job_id] = submit
            return
        self._complete(conn, client, submit)

    def _complete(self, conn: _Connection, client: _Client, submit: SubmitJob) -> None:
        session = conn.session
        source = client.store.get((submit.images or {}).get("image", ""))
        if source is not None:
            result = invert(source)
        else:
            result = rgba(submit.params.width or 64, submit.params.height or 64, seed=submit.params.seed or 0)
        session.job_started(submit.job_id, model="demo", seed=submit.params.seed or 7, steps=2,
                            width=result.width, height=result.height)
        for step in (1, 2):
            session.step_preview(submit.job_id, step, 2, 8, 8, b"\xff\xd8\xff preview %d" % step)
        session.job_finished(submit.job_id, [result], seed=submit.params.seed or 7, timings={"total": 0.01})
        conn.wake.set()
