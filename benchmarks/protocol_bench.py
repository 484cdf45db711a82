"""Protocol benchmarks: the codec on a 2048×2048 RGBA layer, and that layer's upload over loopback.

(a) Codec. The layer as the client session sends it: ``chunk_image`` cuts it into 4 MiB
    ``image_chunk`` messages, ``encode`` turns them into frames, ``decode`` reads them back; and
    the whole server side of an upload (``ServerSession.receive_frame``: decode, reassembly,
    SHA-256 check of the id). Each step is timed against one plain copy of the layer's bytes
    (``memoryview(data).tobytes()``) made just before it in the same loop; the ratio reported is
    the median of the per-run ratios. glibc's allocator is pinned (``pin_allocator``) to one
    regime at a time, warm and then fresh memory, because page faults otherwise decide the result.
(b) Transport. The layer uploaded over a loopback websocket to one server process, from offer to
    ``image_stored``: with ``protocol.transport.AsyncClient`` (``compression=None``), and with the
    same ``ClientSession`` over a websockets connection left at its defaults (permessage-deflate
    on). The server runs websockets' defaults too, so it is one server and the clients alone
    decide; a third row (the same minimal client, compression off) separates the cost of
    compression from that of our transport's tasks. Runs alternate between the clients.

(c) Round trip, before/after (``--before TREE``, a tree holding an older ``protocol/``): a fresh
    layer up (client SHA-256 → ``image_stored``) and a result of its size back (server SHA-256 →
    ``JobResult``), with this tree's code and the older tree's, each its own server and client
    processes, alternating; wall-clock medians and the CPU seconds both processes spend per trip.
    Two last rows, measured right after: websockets alone moving the same bytes as four frames each
    way, the floor under both (no hashing, codec or session); and the same bytes over raw TCP
    sockets with only the hashing protocol v1 asks for (the sender's SHA-256 before it sends, the
    receiver's as the bytes arrive, on a thread, 1 MiB at a time; then the join): what this
    machine takes with no websockets, msgpack, asyncio or session at all.
    The server process handles chunk frames on threads, as ``EaselServer`` does (before issue 20's
    third pass it handled them on its loop, which the real server never did: each chunk's SHA-256
    then stopped the reading of the next one, ~6-9 ms more per upload than a real server takes),
    with the connection class the tree's ``EaselServer`` passes to ``serve`` where it has one
    (``backend/receiving.py``: big frames read into their own buffers), and through the tree's chunk
    chain where it has one (``protocol/transport_chain.py``: an image's chunks received back to back
    on one thread, not each handed over and awaited on its own).

(d) The edges, before/after (printed after (c)): the CPU of the steps at the two ends of each
    transfer, which nothing else overlaps, for both trees: the sender's work from the request for
    the chunks to its first chunk frame, and the receiver's work on the last chunk frame.
(e) The receiving loop, before/after (printed after (d)): the CPU of the event loop's thread while
    16 MiB arrive as four frames, on a server and on a client, with each tree's connection classes.

Two layer contents for (b): ``painted`` (smooth gradients and soft shapes with a little grain)
and ``noise`` (random bytes, which deflate cannot shrink). (a) uses the first one given.

    .venv/bin/python benchmarks/protocol_bench.py --runs 7

Prints markdown tables; ``benchmarks/RESULTS.md`` (section "Protocol") holds a run's output.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import inspect
import json
import os
import platform
import queue
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

# EASEL_BENCH_ROOT: import protocol/ from another tree (the code before a change, for (c)).
sys.path.insert(0, os.environ.get("EASEL_BENCH_ROOT") or str(Path(__file__).resolve().parents[1]))

from protocol import (  # noqa: E402
    MAX_CHUNK_BYTES, Capabilities, ClientSession, ConnectionState, Hello, ImagePayload, ImageStored,
    ImageUploaded, Limits, OfferImages, RemoteProtocolError, ServerSession, SubmitJob, chunk_image, decode,
    encode, image_info,
)
from protocol.transport import AsyncClient, Connected  # noqa: E402

try:  # the tree's frame writer, where it has one (its EaselServer's and AsyncClient's)
    from protocol.transport_send import send_frames  # noqa: E402
except ImportError:
    send_frames = None
try:  # the tree's chunk chain, where it has one (its EaselServer's and AsyncClient's)
    from protocol.transport_chain import ChunkChain, is_chunk_frame  # noqa: E402
except ImportError:
    ChunkChain = None

SIDE = 2048
MAX_FRAME = MAX_CHUNK_BYTES + 1024 * 1024


# --------------------------------------------------------------------------- layers

def painted_layer(seed: int = 0) -> bytes:
    """An RGBA layer that looks like paint: gradients, soft blobs, a little grain."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32) / SIDE
    rgb = np.stack([200 * x + 30, 160 * y + 40, 120 + 60 * np.sin(6 * x) * np.cos(4 * y)], axis=-1)
    for _ in range(12):
        cx, cy, r = rng.random(3) * [1, 1, 0.2] + [0, 0, 0.05]
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))[..., None]
        rgb = rgb * (1 - blob) + rng.integers(0, 255, 3) * blob
    rgb += rng.integers(-2, 3, rgb.shape)
    alpha = np.full((SIDE, SIDE, 1), 255, np.float32)
    return np.clip(np.concatenate([rgb, alpha], axis=-1), 0, 255).astype(np.uint8).tobytes()


def noise_layer(seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, SIDE * SIDE * 4, dtype=np.uint8).tobytes()


LAYERS: dict[str, Callable[[int], bytes]] = {"painted": painted_layer, "noise": noise_layer}


# --------------------------------------------------------------------------- (a) codec

def bench_codec(data: bytes, runs: int) -> dict[str, dict[str, float]]:
    """Per step: median seconds, and the median of its per-run ratio to a copy timed just before it.

    Paired: each step is compared with a copy made just before it; every copy, like every step's
    output, stays alive until the run ends. See :func:`pin_allocator` for why the allocator is
    pinned first.
    """
    image = ImagePayload.build("rgba8", SIDE, SIDE, data)
    image.id  # hashed once up front, as the client does before offering
    limits = Limits(max_frame_bytes=MAX_FRAME)
    steps = ("chunk", "encode", "decode", "server_receive")
    seconds: dict[str, list[float]] = {k: [] for k in (*steps, "copy")}
    ratios: dict[str, list[float]] = {k: [] for k in (*steps, "codec")}

    kept: list[bytes] = []

    def copy_then(step: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        kept.append(memoryview(data).tobytes())
        copied = time.perf_counter() - t
        t = time.perf_counter()
        out = fn()
        took = time.perf_counter() - t
        seconds["copy"].append(copied)
        seconds[step].append(took)
        ratios[step].append(took / copied)
        return out

    for _ in range(runs):
        chunks = copy_then("chunk", lambda: chunk_image(image))
        frames = copy_then("encode", lambda: [encode(chunk) for chunk in chunks])
        decoded = copy_then("decode", lambda: [decode(frame) for frame in frames])
        assert decoded == chunks
        # encode + decode against one copy (the mean of the two copies timed beside them)
        ratios["codec"].append((seconds["encode"][-1] + seconds["decode"][-1]) /
                               ((seconds["copy"][-2] + seconds["copy"][-1]) / 2))
        server = _ready_server_session(limits, image)
        events = copy_then("server_receive", lambda: [e for frame in frames for e in server.receive_frame(frame)])
        assert events == [ImageUploaded(image)]
        del chunks, frames, decoded, server, events
        kept.clear()
    return {"seconds": {k: statistics.median(v) for k, v in seconds.items()},
            "ratio": {k: statistics.median(v) for k, v in ratios.items()}}


def pin_allocator(regime: str) -> bool:
    """Make glibc's malloc behave one way for large buffers, so a copy and a step meet the same
    memory. Writing 16 MiB into pages the process already touched costs ~2 ms on the development
    VM; into fresh pages (page faults) ~10 ms. Left to itself, glibc's adaptive thresholds hand warm
    pages to some allocations and fresh ones to others depending on what was freed before, which
    made the same step look 1× or 6× a copy from one arrangement of the loop to the next.

    ``warm``: large buffers come from the heap and freed memory stays there (a long-running plugin
    or server). ``fresh``: every large buffer is a new mapping (the first upload after start-up).
    Returns False where this is not glibc.
    """
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    if regime == "warm":
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, (1 << 31) - 1))
    return bool(libc.mallopt(m_mmap_threshold, 128 * 1024) and libc.mallopt(m_trim_threshold, 128 * 1024))


def _ready_server_session(limits: Limits, image: ImagePayload) -> ServerSession:
    client = ClientSession("bench", "0")
    server = ServerSession(limits=limits)
    for frame in client.data_to_send():
        server.receive_frame(frame)
    server.welcome(server_name="bench", server_version="0", client_id="c", capabilities=Capabilities((), (), ()))
    offer = OfferImages((image_info(image),))
    server.receive_frame(encode(offer))
    server.images_wanted(offer, have=())
    server.data_to_send()
    return server


# --------------------------------------------------------------------------- (b) transport

async def _handle(ws: Any) -> None:
    """One connection: a ServerSession that wants every offered image and confirms each upload.
    Chunk frames are handled as that tree's ``EaselServer`` does: through a chain that receives them
    back to back on a thread (``protocol/transport_chain.py``) where the tree has one, else each big
    frame on a thread, awaited; either way the loop goes on reading the next frames off the socket
    while a chunk is hashed."""
    session = ServerSession(limits=Limits(max_frame_bytes=MAX_FRAME))
    uploaded: list[ImagePayload] = []
    loop = asyncio.get_running_loop()
    writing = asyncio.Lock()  # one writer at a time: the reader and the chain's deliveries both write

    async def write_out() -> None:
        async with writing:
            await _write_out(ws, session)

    def deliver(events: list[Any], error: BaseException | None) -> None:
        """A chunk's outcome (on the loop, in order): EaselServer._chained's, for this bench's server."""
        if isinstance(error, RemoteProtocolError):
            session.error(error.code, error.message)
        elif error is not None:
            raise error
        for event in events:
            session.image_stored(event.image.id)
            uploaded[:] = [event.image]
        if session.bytes_to_send:  # EaselServer wakes its writer then
            flushes.add(task := loop.create_task(write_out()))
            task.add_done_callback(flushes.discard)

    flushes: set[asyncio.Task] = set()
    chain = None
    if ChunkChain is not None:
        chain = ChunkChain(session.receive_frame, deliver, _IO,
                           plain=lambda events: all(isinstance(e, ImageUploaded) for e in events))
    try:
        async for frame in ws:
            if chain is not None and session.state is ConnectionState.READY and is_chunk_frame(frame):
                await chain.put(frame)
                continue
            if chain is not None:
                await chain.settle()
            try:
                if len(frame) > 64 * 1024:
                    events = await loop.run_in_executor(_IO, session.receive_frame, frame)
                else:
                    events = session.receive_frame(frame)
            except RemoteProtocolError as exc:
                session.error(exc.code, exc.message)
                events = []
            for event in events:
                if isinstance(event, Hello):
                    session.welcome(server_name="bench", server_version="0", client_id=f"c{id(ws)}",
                                    capabilities=Capabilities((), (), ()))
                elif isinstance(event, OfferImages):
                    session.images_wanted(event, have=())
                elif isinstance(event, ImageUploaded):
                    session.image_stored(event.image.id)
                    uploaded[:] = [event.image]
                elif isinstance(event, SubmitJob) and event.job_id.startswith("rt-"):
                    await write_out()
                    async with writing:
                        await _send_result(ws, session, event.job_id, uploaded[-1])
            await write_out()
            if session.state is ConnectionState.CLOSED:
                return
    finally:
        if chain is not None:
            await chain.close()


#: Whether the tree's sessions hand out frames one at a time (``data_to_send(max_frames)``).
_ONE_AT_A_TIME = "max_frames" in inspect.signature(ServerSession.data_to_send).parameters


async def _write_out(ws: Any, session: ServerSession) -> None:
    """Write the session's frames as that tree's ``EaselServer`` does: one at a time where its
    sessions hand them out so (a result's chunks are then encoded as they go), else all at once;
    through the tree's own frame writer where it has one (a chunk's data then is not copied into a frame)."""
    if send_frames is not None:
        while frames := session.data_to_send(1, split=True):
            await send_frames(ws, frames)
    elif _ONE_AT_A_TIME:
        while frames := session.data_to_send(1):
            await ws.send(frames[0])
    else:
        for frame in session.data_to_send():
            await ws.send(frame)


#: The server loop's CPU seconds spent sending the previous result (reported with the next one).
_last_send_cpu = [0.0]


async def _send_result(ws: Any, session: ServerSession, job_id: str, like: ImagePayload) -> None:
    """A result the size of ``like`` sent back as the server does: hashed off the loop (on the device
    worker there), then chunk frames and ``job_finished``. Its start time (CLOCK_MONOTONIC, shared
    by the processes) travels in the timings so the client can time the way back."""
    session.job_accepted(job_id, 0)
    session.job_started(job_id, model="bench", seed=0, steps=1, width=like.width, height=like.height)
    result = ImagePayload(like.format, like.width, like.height, like.data[::-1])  # new pixels, new id
    start = time.perf_counter()
    await asyncio.to_thread(lambda: result.id)
    # server_cpu: this process's CPU seconds so far; the client takes the difference from run to run
    # (the server does nothing else), a cost that waiting for a busy CPU does not inflate.
    # send_cpu: the loop thread's CPU for sending the previous result (framing and socket writes).
    sending = time.thread_time()
    session.job_finished(job_id, [result], seed=0, timings={"back_start": start, "server_cpu": time.process_time(),
                                                            "send_cpu": _last_send_cpu[0]})
    await _write_out(ws, session)
    _last_send_cpu[0] = time.thread_time() - sending


#: The bench server's threads for big frames (``EaselServer`` has IO_THREADS of them).
_IO = ThreadPoolExecutor(max_workers=4, thread_name_prefix="bench-io")


def _server_connection() -> dict[str, Any]:
    """The connection class the tree's ``EaselServer`` serves with, where it has one of its own (checked
    by path, as the malloc policy is): its big frames are then read past websockets' copies."""
    if not (Path(sys.path[0]) / "backend" / "receiving.py").exists():
        return {}
    from backend.receiving import EaselServerConnection
    return {"create_connection": EaselServerConnection}


async def _serve_forever() -> None:
    # websockets' defaults (compression="deflate"): the client decides whether deflate is used.
    async with serve(_handle, "127.0.0.1", 0, max_size=MAX_FRAME, **_server_connection()) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()


class _MinimalClient:
    """The same ClientSession over a plain websockets connection with the given compression."""

    def __init__(self, url: str, compression: str | None) -> None:
        self.url, self.compression = url, compression

    async def __aenter__(self) -> "_MinimalClient":
        self.ws = await connect(self.url, compression=self.compression, max_size=MAX_FRAME)
        self.session = ClientSession("bench-min", "0")
        await self._flush()
        while self.session.state is not ConnectionState.READY:
            self.session.receive_frame(await self.ws.recv())
        self.extensions = [ext.name for ext in self.ws.protocol.extensions]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.ws.close()

    async def _flush(self) -> None:
        for frame in self.session.data_to_send():
            await self.ws.send(frame)

    async def upload(self, image: ImagePayload, job_id: str) -> None:
        self.session.submit(SubmitJob(job_id, "img2img", images={"image": image.id}), [image])
        await self._flush()
        while True:
            events = self.session.receive_frame(await self.ws.recv())
            await self._flush()
            if any(isinstance(e, ImageStored) for e in events):
                return


class _OurClient:
    """protocol.transport.AsyncClient, as the plugins use it."""

    def __init__(self, url: str) -> None:
        self.client = AsyncClient(url, client_name="bench", client_version="0", max_size=MAX_FRAME)

    async def __aenter__(self) -> "_OurClient":
        await self.client.start()
        assert isinstance(await self.client.next_event(30), Connected)
        # What was negotiated, read off the live connection (a private attribute; fine in a benchmark).
        self.extensions = [ext.name for ext in self.client._ws.protocol.extensions]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.client.close()

    async def upload(self, image: ImagePayload, job_id: str) -> None:
        self.client.submit(SubmitJob(job_id, "img2img", images={"image": image.id}), [image])
        while not isinstance(await self.client.next_event(120), ImageStored):
            pass


async def bench_transport(url: str, data: bytes, runs: int) -> dict[str, Any]:
    image = ImagePayload.build("rgba8", SIDE, SIDE, data)
    image.id
    clients = {"ours": _OurClient(url), "ws_default": _MinimalClient(url, "deflate"),
               "ws_no_compression": _MinimalClient(url, None)}
    times: dict[str, list[float]] = {name: [] for name in clients}
    extensions = {}
    for name, client in clients.items():
        await client.__aenter__()
        extensions[name] = client.extensions
        await client.upload(image, f"warm-{name}")
    try:
        for run in range(runs):
            for name, client in clients.items():
                t = time.perf_counter()
                await client.upload(image, f"{name}-{run}")
                times[name].append(time.perf_counter() - t)
    finally:
        for client in clients.values():
            await client.__aexit__(None, None, None)
    return {"median": {k: statistics.median(v) for k, v in times.items()}, "extensions": extensions}


# --------------------------------------------------------------------------- (c) round trip, before/after

async def _round_trips(url: str) -> None:
    """Child process: one round trip per line on stdin, one JSON line out. Up: a fresh 2048² layer
    (``submit_hashed``: the client's SHA-256 included) until ``image_stored``; back: the server's
    result hash until the ``JobResult`` is in hand (client reassembly and id check included).
    ``up_send_cpu``: the client loop thread's CPU from the offer queued to ``image_stored`` (sending
    the chunks, little else); ``back_send_cpu``: the server loop's for sending the previous result."""
    client = AsyncClient(url, client_name="bench-rt", client_version="0", max_size=MAX_FRAME)
    await client.start()
    base = noise_layer(1)
    run, server_cpu = 0, 0.0
    while sys.stdin.readline():
        run += 1
        image = ImagePayload.build("rgba8", SIDE, SIDE, bytes(base[:-8]) + run.to_bytes(8, "little"))  # a new id
        start, cpu = time.perf_counter(), time.process_time()
        await client.submit_hashed(SubmitJob(f"rt-{run}", "img2img", images={"image": image.id}), [image])
        sending = time.thread_time()
        up = back = up_send_cpu = back_send_cpu = 0.0
        while True:
            event = await client.next_event(120)
            if isinstance(event, ImageStored):
                up = time.perf_counter() - start
                up_send_cpu = time.thread_time() - sending
            elif type(event).__name__ == "JobResult":
                back = time.perf_counter() - event.finished.timings["back_start"]
                cpu = time.process_time() - cpu + event.finished.timings["server_cpu"] - server_cpu
                server_cpu = event.finished.timings["server_cpu"]
                back_send_cpu = event.finished.timings["send_cpu"]
                assert len(event.images[0].data) == SIDE * SIDE * 4
                break
        print(json.dumps({"up": up, "back": back, "cpu": cpu, "up_send_cpu": up_send_cpu, "back_send_cpu": back_send_cpu}),
              flush=True)
    await client.close()


def bench_round_trip(before: Path, runs: int) -> dict[str, dict[str, float]]:
    """(c): the same round trip with this tree's protocol/ and with ``before``'s, each its own server
    and client process pair, runs alternating between the two. Medians."""
    procs: list[subprocess.Popen] = []
    clients = {}
    try:
        for name, root in (("after", ""), ("before", str(before))):
            env = dict(os.environ, EASEL_BENCH_ROOT=root)
            server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True, env=env)
            procs.append(server)
            url = f"ws://127.0.0.1:{server.stdout.readline().strip()}"
            clients[name] = subprocess.Popen([sys.executable, __file__, "--round-trip-client", url], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, text=True, env=env)
            procs.append(clients[name])
        keys = ("up", "back", "cpu", "up_send_cpu", "back_send_cpu")
        times: dict[str, dict[str, list[float]]] = {name: {key: [] for key in (*keys, "total")} for name in clients}
        for run in range(runs + 1):  # the first is a warm-up
            for name in (("after", "before") if run % 2 else ("before", "after")):
                clients[name].stdin.write("go\n")
                clients[name].stdin.flush()
                got = json.loads(clients[name].stdout.readline())
                if run:
                    for key in keys:
                        if key != "back_send_cpu" or run > 1:  # the first trip reports the warm-up's
                            times[name][key].append(got[key])
                    times[name]["total"].append(got["up"] + got["back"])
    finally:
        for proc in procs:
            if proc.stdin:
                proc.stdin.close()
            proc.terminate()
            proc.wait(10)
    return {name: {key: statistics.median(v) for key, v in parts.items()} for name, parts in times.items()}


# --------------------------------------------------------------------------- (c) its floor with the hashing: raw sockets

_HASH_PIECE = 1 << 20


def _hash_send(sock: socket.socket, data: bytes) -> None:
    """Send ``data`` as the protocol's sender must: its SHA-256 first (the id travels ahead of the
    bytes), then the bytes, with nothing around them."""
    hashlib.sha256(data).hexdigest()
    sock.sendall(memoryview(data))


def _hash_receive(sock: socket.socket, size: int) -> bytes:
    """Receive ``size`` bytes as the protocol's receiver must: each 1 MiB piece hashed on a thread
    while the next arrives, then the pieces joined and the digest taken."""
    digest, pieces, ready = hashlib.sha256(), [], queue.SimpleQueue()

    def hash_pieces() -> None:
        while (piece := ready.get()) is not None:
            digest.update(piece)

    hasher = threading.Thread(target=hash_pieces)
    hasher.start()
    try:
        got = 0
        while got < size:
            piece = bytearray(min(_HASH_PIECE, size - got))
            view, filled = memoryview(piece), 0
            while filled < len(piece):
                n = sock.recv_into(view[filled:])
                if not n:
                    raise EOFError("the peer closed")
                filled += n
            got += filled
            pieces.append(piece)
            ready.put(piece)
    finally:
        ready.put(None)
        hasher.join()
    data = b"".join(pieces)
    digest.hexdigest()
    return data


def _hash_floor_peer(port: int) -> None:
    """The floor's other process: takes each image, answers one byte, and on a byte sends an image
    of the same size back, followed by the time its hashing began."""
    from backend.allocator import apply_policy  # the server's malloc policy, as the (c) servers have it
    apply_policy()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    size = SIDE * SIDE * 4
    try:
        while True:
            image = _hash_receive(sock, size)
            sock.sendall(b"k")
            back = image[::-1]
            if not sock.recv(1):
                return
            start = time.perf_counter()
            _hash_send(sock, back)
            sock.sendall(repr(start).encode().ljust(32))
    except (EOFError, OSError):
        return


def bench_hash_floor(runs: int) -> dict[str, float]:
    """The (c) round trip's floor on this machine with the hashing protocol v1 asks for: the same
    16 MiB up and back between two processes over loopback TCP, the sender hashing before it
    sends and the receiver hashing as the bytes arrive, with no websockets, msgpack, asyncio or
    session. Medians (up, back)."""
    listener = socket.create_server(("127.0.0.1", 0))
    peer = subprocess.Popen([sys.executable, __file__, "--hash-floor-peer", str(listener.getsockname()[1])])
    ups, backs = [], []
    try:
        sock, _ = listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        base = noise_layer(1)
        for run in range(runs + 1):  # the first is a warm-up
            data = bytes(base[:-8]) + run.to_bytes(8, "little")
            start = time.perf_counter()
            _hash_send(sock, data)
            sock.recv(1)
            up = time.perf_counter() - start
            sock.sendall(b"g")
            _hash_receive(sock, len(data))
            back = time.perf_counter() - float(sock.recv(32).decode())
            if run:
                ups.append(up)
                backs.append(back)
        sock.close()
    finally:
        listener.close()
        peer.wait(10)
    return {"up": statistics.median(ups), "back": statistics.median(backs)}


# --------------------------------------------------------------------------- (c) its floor: websockets alone

async def _raw_handler(ws: Any) -> None:
    """The floor server: takes four frames and answers ``ok``; for ``back`` sends four frames."""
    frame, got = _floor_frame(), 0
    async for message in ws:
        if message == b"back":
            for _ in range(4):
                await ws.send(frame)
        else:
            got += 1
            if got % 4 == 0:
                await ws.send(b"ok")


def _floor_frame() -> bytes:
    """One 4 MiB frame of the floor's traffic (random bytes, as the round trip's layers)."""
    return noise_layer(4)[:MAX_CHUNK_BYTES]


async def _raw_serve_forever() -> None:
    async with serve(_raw_handler, "127.0.0.1", 0, max_size=MAX_FRAME, compression=None) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()


def bench_floor(runs: int) -> dict[str, float]:
    """What websockets alone takes for the same bytes: four 4 MiB frames up (masked, to a server
    process) until its one-word answer, and four back, with no hashing, no codec and no session.
    Medians of ``runs``; run right after (c), on the same machine state."""
    server = subprocess.Popen([sys.executable, __file__, "--raw-serve"], stdout=subprocess.PIPE, text=True)

    async def trips() -> dict[str, float]:
        frame = _floor_frame()
        up: list[float] = []
        back: list[float] = []
        async with connect(f"ws://127.0.0.1:{server.stdout.readline().strip()}", max_size=MAX_FRAME,
                           compression=None) as ws:
            for run in range(runs + 1):
                start = time.perf_counter()
                for _ in range(4):
                    await ws.send(frame)
                assert await ws.recv() == b"ok"
                middle = time.perf_counter()
                await ws.send(b"back")
                for _ in range(4):
                    await ws.recv()
                if run:
                    up.append(middle - start)
                    back.append(time.perf_counter() - middle)
        return {"up": statistics.median(up), "back": statistics.median(back)}
    try:
        return asyncio.run(trips())
    finally:
        server.terminate()
        server.wait(10)


# --------------------------------------------------------------------------- (d) the edges, before/after

def _edges(runs: int) -> None:
    """Child process: the CPU (this thread's) of the steps at the two ends of a transfer, where
    nothing else overlaps them, for a 2048² upload and a 2048² result between a ClientSession and a
    ServerSession joined in memory. ``first``: from the frame that asks for the chunks (the client's
    ``images_wanted``; the server's ``job_finished`` call) until the first chunk frame is in hand.
    ``last``: the receiver's handling of the last chunk frame (its hash, the join, the id check).
    Medians over ``runs``; one JSON line out."""
    limits = Limits(max_frame_bytes=MAX_FRAME)
    one_at_a_time = "max_frames" in inspect.signature(ServerSession.data_to_send).parameters
    base = noise_layer(3)
    times: dict[str, list[float]] = {key: [] for key in ("up_first", "up_last", "back_first", "back_last")}

    def first_frame(session: Any) -> list[bytes]:
        return session.data_to_send(1) if one_at_a_time else session.data_to_send()

    for run in range(runs + 1):
        image = ImagePayload.build("rgba8", SIDE, SIDE, base[:-8] + run.to_bytes(8, "little"))
        result = ImagePayload.build("rgba8", SIDE, SIDE, base[8:] + run.to_bytes(8, "little"))
        image.id, result.id  # hashed before, as the client and the worker do
        client, server = ClientSession("edges", "0"), ServerSession(limits=limits)
        for frame in client.data_to_send():
            server.receive_frame(frame)
        server.welcome(server_name="edges", server_version="0", client_id="c", capabilities=Capabilities((), (), ()))
        for frame in server.data_to_send():
            client.receive_frame(frame)
        job = f"e{run}"
        client.submit(SubmitJob(job, "img2img", images={"image": image.id}), [image])
        (offer,) = [e for frame in client.data_to_send() for e in server.receive_frame(frame)]
        server.images_wanted(offer, have=())
        (wanted,) = server.data_to_send()
        t = time.thread_time()
        client.receive_frame(wanted)
        frames = first_frame(client)
        up_first = time.thread_time() - t
        *chunks, submit = frames + client.data_to_send()
        for frame in chunks[:-1]:
            server.receive_frame(frame)
        t = time.thread_time()
        (uploaded,) = server.receive_frame(chunks[-1])
        up_last = time.thread_time() - t
        assert uploaded.image == image
        server.receive_frame(submit)
        server.job_accepted(job, 0)
        server.job_started(job, model="edges", seed=0, steps=1, width=SIDE, height=SIDE)
        for frame in server.data_to_send():
            client.receive_frame(frame)
        t = time.thread_time()
        server.job_finished(job, [result], seed=0)
        frames = first_frame(server)
        back_first = time.thread_time() - t
        *chunks, finished = frames + server.data_to_send()
        for frame in chunks[:-1]:
            client.receive_frame(frame)
        t = time.thread_time()
        client.receive_frame(chunks[-1])
        back_last = time.thread_time() - t
        (done,) = client.receive_frame(finished)
        assert done.images == (result,)
        if run:  # the first is a warm-up
            for key, value in zip(times, (up_first, up_last, back_first, back_last)):
                times[key].append(value)
    print(json.dumps({key: statistics.median(values) for key, values in times.items()}), flush=True)


def bench_edges(before: Path, runs: int) -> dict[str, dict[str, float]]:
    """(d): :func:`_edges` with this tree's protocol/ and with ``before``'s, two processes each,
    alternating (each configured as its server is: the malloc policy where the tree has it); the
    median over the processes."""
    got: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for name in ("before", "after", "after", "before"):
        env = dict(os.environ, EASEL_BENCH_ROOT=str(before) if name == "before" else "")
        out = subprocess.run([sys.executable, __file__, "--edges", str(runs)], env=env, check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        got[name].append(json.loads(out))
    return {name: {key: statistics.median(r[key] for r in results) for key in results[0]} for name, results in got.items()}


# --------------------------------------------------------------------------- (e) the receiving loop's CPU, before/after

def _receive_cpu(role: str, runs: int) -> None:
    """Child process: the CPU of the receiving event loop's thread (``time.thread_time``, which
    waiting for a core does not inflate) per 16 MiB arriving as four 4 MiB binary frames, with the
    tree's connection class: ``server`` (masked frames from a plain websockets client in another
    process, the tree's ``EaselServer`` connection class) or ``client`` (frames from the floor's
    plain server, the class ``AsyncClient`` connects with). The frames are only received, not
    decoded. Median of ``runs``; one JSON line out."""
    try:
        from protocol.transport_frames import ReceivingClientConnection
        client_class: dict[str, Any] = {"create_connection": ReceivingClientConnection}
    except ImportError:  # a tree before the receive interceptor: websockets' own connection
        client_class = {}

    async def four(ws: Any) -> float:
        start = time.thread_time()
        for _ in range(4):
            assert len(await ws.recv()) == MAX_CHUNK_BYTES
        return time.thread_time() - start

    async def as_server() -> list[float]:
        got: asyncio.Future = asyncio.get_running_loop().create_future()

        async def handler(ws: Any) -> None:
            cpu = []
            for _ in range(runs + 1):
                await ws.send(b"go")
                cpu.append(await four(ws))
            got.set_result(cpu[1:])
        async with serve(handler, "127.0.0.1", 0, max_size=MAX_FRAME, compression=None, **_server_connection()) as server:
            sender = subprocess.Popen([sys.executable, __file__, "--raw-send", str(server.sockets[0].getsockname()[1])])
            try:
                return await got
            finally:
                sender.terminate()
                sender.wait(10)

    async def as_client() -> list[float]:
        server = subprocess.Popen([sys.executable, __file__, "--raw-serve"], stdout=subprocess.PIPE, text=True)
        try:
            async with connect(f"ws://127.0.0.1:{server.stdout.readline().strip()}", max_size=MAX_FRAME,
                               compression=None, **client_class) as ws:
                cpu = []
                for _ in range(runs + 1):
                    await ws.send(b"back")
                    cpu.append(await four(ws))
                return cpu[1:]
        finally:
            server.terminate()
            server.wait(10)
    cpu = asyncio.run(as_server() if role == "server" else as_client())
    print(json.dumps(statistics.median(cpu)), flush=True)


async def _raw_send(port: int) -> None:
    """(e)'s sender: a plain websockets client that sends four 4 MiB frames for each ``go``."""
    frame = _floor_frame()
    async with connect(f"ws://127.0.0.1:{port}", max_size=MAX_FRAME, compression=None) as ws:
        async for message in ws:
            for _ in range(4):
                await ws.send(frame)


def bench_receive_cpu(before: Path, runs: int) -> dict[str, dict[str, float]]:
    """(e): :func:`_receive_cpu` for both roles and both trees, alternating; medians."""
    got: dict[str, dict[str, list[float]]] = {name: {"server": [], "client": []} for name in ("before", "after")}
    for name in ("before", "after", "after", "before"):
        env = dict(os.environ, EASEL_BENCH_ROOT=str(before) if name == "before" else "")
        for role in ("server", "client"):
            out = subprocess.run([sys.executable, __file__, "--receive-cpu", role, "--runs", str(runs)], env=env,
                                 check=True, stdout=subprocess.PIPE, text=True).stdout
            got[name][role].append(json.loads(out))
    return {name: {role: statistics.median(v) for role, v in roles.items()} for name, roles in got.items()}


# --------------------------------------------------------------------------- report

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per measurement; medians are reported")
    parser.add_argument("--content", choices=[*LAYERS, "both"], default="both")
    parser.add_argument("--before", type=Path, help="(c) only: a tree holding protocol/ as it was before a change "
                        "(e.g. `git archive main protocol | tar -x -C /tmp/before`), timed side by side with this one")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the server process
    parser.add_argument("--round-trip-client", help=argparse.SUPPRESS)  # a (c) client process
    parser.add_argument("--edges", type=int, help=argparse.SUPPRESS)  # a (d) process
    parser.add_argument("--raw-serve", action="store_true", help=argparse.SUPPRESS)  # the floor's server
    parser.add_argument("--receive-cpu", choices=["server", "client"], help=argparse.SUPPRESS)  # an (e) process
    parser.add_argument("--raw-send", type=int, help=argparse.SUPPRESS)  # (e)'s sender
    parser.add_argument("--hash-floor-peer", type=int, help=argparse.SUPPRESS)  # the hashed floor's other process
    args = parser.parse_args()
    if args.hash_floor_peer:
        _hash_floor_peer(args.hash_floor_peer)
        return
    if args.receive_cpu:
        _receive_cpu(args.receive_cpu, args.runs)
        return
    if args.raw_send:
        asyncio.run(_raw_send(args.raw_send))
        return
    if args.serve:
        # The server's malloc policy, as EaselServer.start sets it, when the tree in use has it (checked
        # by path: an editable install of another checkout could otherwise supply the module).
        if (Path(sys.path[0]) / "backend" / "allocator.py").exists():
            from backend.allocator import apply_policy
            print(f"server: {apply_policy()}", file=sys.stderr)
        else:
            print("server: no malloc policy (glibc defaults)", file=sys.stderr)
        asyncio.run(_serve_forever())
        return
    if args.raw_serve:
        if (Path(sys.path[0]) / "backend" / "allocator.py").exists():  # configured as the (c) servers are
            from backend.allocator import apply_policy
            apply_policy()
        asyncio.run(_raw_serve_forever())
        return
    if args.round_trip_client:
        asyncio.run(_round_trips(args.round_trip_client))
        return
    if args.edges:
        if (Path(sys.path[0]) / "backend" / "allocator.py").exists():
            from backend.allocator import apply_policy
            apply_policy()
        _edges(args.edges)
        return
    if args.before:
        print(f"(c) round trip: a {SIDE}x{SIDE} RGBA layer up (client SHA-256 → offer → chunks → image_stored) and a "
              f"{SIDE}² result back (server SHA-256 → chunks → client reassembly and id check → JobResult), over "
              f"loopback; this tree vs {args.before}, alternating, medians of {args.runs}; load average "
              f"{os.getloadavg()[0]:.2f}\n")
        result = bench_round_trip(args.before, args.runs)
        print("| code | up ms | back ms | up + back ms | CPU ms, client + server processes "
              "| sending loop's CPU ms: client up, server back |")
        print("|---|---|---|---|---|---|")
        for name in ("before", "after"):
            r = result[name]
            print(f"| {name} | {r['up'] * 1e3:.1f} | {r['back'] * 1e3:.1f} | {r['total'] * 1e3:.1f} | {r['cpu'] * 1e3:.1f} "
                  f"| {r['up_send_cpu'] * 1e3:.2f}, {r['back_send_cpu'] * 1e3:.2f} |")
        floor = bench_floor(args.runs)
        print(f"| websockets alone, the same 16 MiB as four frames each way (no SHA-256, codec or session) | "
              f"{floor['up'] * 1e3:.1f} | {floor['back'] * 1e3:.1f} | {(floor['up'] + floor['back']) * 1e3:.1f} | | |")
        hashed = bench_hash_floor(args.runs)
        print(f"| raw TCP sockets with the hashing protocol v1 asks for (sender SHA-256 first; receiver hashes 1 MiB "
              f"pieces on a thread as they arrive, then joins), no websockets, msgpack, asyncio or session | "
              f"{hashed['up'] * 1e3:.1f} | {hashed['back'] * 1e3:.1f} | {(hashed['up'] + hashed['back']) * 1e3:.1f} | | |")
        print(f"\nafter ÷ before: up + back {result['after']['total'] / result['before']['total']:.2f}, "
              f"CPU {result['after']['cpu'] / result['before']['cpu']:.2f}; "
              f"load average after: {os.getloadavg()[0]:.2f}")
        print(f"\n(d) the edges of each transfer, the steps nothing overlaps: CPU ms of one thread (not inflated by "
              f"waiting for a core), medians of {args.runs} per process, two processes per tree; load average "
              f"{os.getloadavg()[0]:.2f}\n")
        edges = bench_edges(args.before, args.runs)
        rows = [("up_first", "up: `images_wanted` in → first chunk frame out (client)"),
                ("up_last", "up: last chunk frame in → image whole and checked (server)"),
                ("back_first", "back: `job_finished` called → first chunk frame out (server)"),
                ("back_last", "back: last chunk frame in → image whole and checked (client)")]
        print("| step | before ms | after ms | after ÷ before |")
        print("|---|---|---|---|")
        for key, label in rows:
            b, a = edges["before"][key], edges["after"][key]
            print(f"| {label} | {b * 1e3:.2f} | {a * 1e3:.2f} | {a / b:.2f} |")
        b, a = (sum(edges[name].values()) for name in ("before", "after"))
        print(f"| **all four** | {b * 1e3:.2f} | {a * 1e3:.2f} | {a / b:.2f} |")
        print(f"\n(e) the receiving loop: CPU ms of its thread per 16 MiB arriving as four 4 MiB frames (received, not "
              f"decoded), medians of {args.runs} per process, two processes per tree and role; load average "
              f"{os.getloadavg()[0]:.2f}\n")
        cpu = bench_receive_cpu(args.before, args.runs)
        print("| receiver | before ms | after ms | after ÷ before |")
        print("|---|---|---|---|")
        for role, label in (("server", "server (masked frames in)"), ("client", "client (a result's frames in)")):
            b, a = cpu["before"][role], cpu["after"][role]
            print(f"| {label} | {b * 1e3:.2f} | {a * 1e3:.2f} | {a / b:.2f} |")
        return

    import msgpack
    print(f"python {platform.python_version()}, msgpack {msgpack.version} ({msgpack.Packer.__module__}), "
          f"websockets {websockets.__version__}, {os.cpu_count()} cpus, {platform.machine()}\n")
    contents = list(LAYERS) if args.content == "both" else [args.content]
    layers = {name: LAYERS[name](0) for name in contents}
    mib = SIDE * SIDE * 4 / 2 ** 20

    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        url = f"ws://127.0.0.1:{server.stdout.readline().strip()}"
        print(f"(b) transport: upload of the {SIDE}x{SIDE} RGBA layer ({mib:.0f} MiB) over loopback, offer → "
              f"image_stored, one server process (websockets defaults), medians of {args.runs}\n")
        print("| client | layer | negotiated | ms | MB/s | deflate ÷ this |")
        print("|---|---|---|---|---|---|")
        labels = {"ours": "`AsyncClient` (compression=None)", "ws_default": "websockets defaults (deflate)",
                  "ws_no_compression": "same minimal client, compression=None"}
        for name, layer in layers.items():
            result = asyncio.run(bench_transport(url, layer, args.runs))
            median, extensions = result["median"], result["extensions"]
            for key in ("ours", "ws_default", "ws_no_compression"):
                seconds = median[key]
                print(f"| {labels[key]} | {name} | {', '.join(extensions[key]) or 'none'} | {seconds * 1e3:.0f} | "
                      f"{len(layer) / seconds / 1e6:.0f} | {median['ws_default'] / seconds:.1f} |")
    finally:
        server.terminate()
        server.wait(10)

    # The codec runs last: pinning the allocator lasts for the rest of the process.
    chunks = len(chunk_image(ImagePayload.build("rgba8", SIDE, SIDE, layers[contents[0]])))
    print(f"\n(a) codec: the {SIDE}x{SIDE} RGBA layer as {chunks} chunk frames; ms are medians of {args.runs}, "
          f"× copy is the median of per-run ratios to a copy of the 16 MiB timed just before the step\n")
    rows = [("`chunk_image` (4 MiB slices)", ["chunk"], "chunk"), ("`encode` of the chunk frames", ["encode"], "encode"),
            ("`decode` of the chunk frames", ["decode"], "decode"), ("**codec: encode + decode**", ["encode", "decode"], "codec"),
            ("server `receive_frame` (decode + reassembly + SHA-256 id check)", ["server_receive"], "server_receive"),
            ("a plain copy of the 16 MiB (median of all)", ["copy"], None)]
    for regime in ("warm", "fresh"):
        pinned = pin_allocator(regime)
        print(f"{regime} memory{'' if pinned else ' (allocator NOT pinned: not glibc)'}, layer {contents[0]}:\n")
        print("| step | ms | × copy |")
        print("|---|---|---|")
        codec = bench_codec(layers[contents[0]], args.runs)
        for label, keys, ratio in rows:
            ms = sum(codec["seconds"][k] for k in keys) * 1e3
            print(f"| {label} | {ms:.2f} | {codec['ratio'][ratio]:.2f} |" if ratio else f"| {label} | {ms:.2f} | 1 |")
        print()


if __name__ == "__main__":
    main()
