"""The hardening suite's long runs, and the machinery its tests share.

    python tests/hardening/soak.py                      # 100,000 fuzz frames, 1,000 cycles, floods
    python tests/hardening/soak.py --frames 5000 --cycles 100 --no-floods
    python tests/hardening/soak.py --write-results      # also rewrite "Hardening" in benchmarks/RESULTS.md

Everything runs against a real :class:`backend.server.EaselServer` with the real engine on tiny
random models (built offline, CPU), on a loopback port, in this process — so that asyncio tasks and
threads can be counted from inside, and open files and resident memory read from ``/proc/self``.
The clients run on an event loop thread of their own.

* **Fuzz** (:func:`run_fuzz`): several connections send random and mutated frames (random bytes,
  bit flips, truncations, splices, fields swapped for values of other types, lying msgpack headers,
  huge containers, deep nesting, server messages, oversized frames), each followed by a ``ping``
  barrier so that every answer is matched to its frame. A frame our own decoder refuses must be
  answered with exactly one ``error`` of the same code; an oversized one with close 1009; a valid
  request with the answers the protocol gives it. Meanwhile a well-behaved client (the plugins'
  ``AsyncClient``) runs jobs to completion. Any ``internal`` error, untyped answer, unexpected close,
  error logged by the server or unhandled exception on its loop counts as a failure.
* **Cycles** (:func:`run_cycles`): connect → hello → upload → submit → disconnect at a random point
  (before hello, mid-upload, after submit, mid-job, after the result; closing cleanly or aborting
  the socket; some reconnect with an earlier client id). Tasks on the server's loop, threads, open
  files and resident memory are measured after a warm-up and after the run once the server has
  settled (connections closed, grace periods over).
* **Floods** (:func:`run_floods`): oversized frames, too many jobs, idle connections past
  ``max_connections`` — while the well-behaved client's job completes.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import random
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import msgpack
import websockets
from websockets.asyncio.client import connect

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for path in (str(ROOT), str(ROOT / "tests" / "backend")):
    if path not in sys.path:
        sys.path.insert(0, path)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

from protocol import (  # noqa: E402
    MESSAGES, CancelJob, ClientSession, ControlUnit, ErrorCode, ErrorEvent, Hello, ImageChunk, ImageFormat,
    ImageInfo, ImagePayload, ImagesWanted, ImageStored, JobAccepted, JobCancelled, JobFailed, JobFinished,
    JobParams, JobResult, JobStarted, ListModels, LoraWeight, Margins, ModelList, OfferImages, Ping, Pong,
    QueuePosition, RemoteProtocolError, StepPreview, SubmitJob, Welcome, chunk_image, decode, encode, image_info,
)
from protocol.messages import CLIENT_MESSAGES  # noqa: E402
from protocol.transport import AsyncClient, Connected, Disconnected, JobLost  # noqa: E402

#: Generous bound on any single wait, so that a hang fails instead of blocking (not a timing claim).
WAIT_S = 120.0
#: Receive limit of the test clients (results come in chunks of up to 4 MiB).
MAX_SIZE = 8 * 1024 * 1024
#: Ping nonces used as barriers; fuzz pings use small or random nonces and cannot collide in practice.
BARRIER = 2 ** 63


# =============================================================================== server

def build_tiny_model(folder: Path) -> Path:
    from backend.demo import build_tiny_model as build

    return build(folder, "base")


def tiny_server_config(model: Path, cache: Path, **overrides: Any) -> Any:
    """A server config on the tiny model: CPU, a free loopback port, the given overrides."""
    from backend.config import ModelEntry, ServerConfig

    settings: dict[str, Any] = dict(port=0, models=(ModelEntry("tiny", str(model)),), device="cpu", cache_dir=cache,
                                    threads=0)
    settings.update(overrides)
    return ServerConfig(**settings)


class ServerUnderTest:
    """A real EaselServer on its own loop thread (the backend tests' ServerThread), plus a log
    watcher that counts what would mean a crash: records at ERROR or above from the server, the
    worker or asyncio (an exception nobody handled), and exceptions the loop's handler saw."""

    def __init__(self, config: Any, engine: Any) -> None:
        from test_server_harness import ServerThread

        self.thread = ServerThread(config, engine)
        self.errors: list[str] = []
        self._handler = _ErrorCounter(self.errors)

    @property
    def server(self) -> Any:
        return self.thread.server

    @property
    def url(self) -> str:
        return self.thread.url

    @property
    def port(self) -> int:
        return self.thread.port

    def call(self, fn: Callable[[], Any]) -> Any:
        return self.thread.call(fn)

    def __enter__(self) -> "ServerUnderTest":
        for name in ("easel", "asyncio", "websockets"):
            logging.getLogger(name).addHandler(self._handler)
        self.thread.__enter__()
        self.thread.loop.call_soon_threadsafe(self.thread.loop.set_exception_handler, self._loop_exception)
        return self

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        self.errors.append(f"loop: {context.get('message')} {context.get('exception')!r}")
        loop.default_exception_handler(context)

    def __exit__(self, *exc: Any) -> None:
        self.thread.close()
        for name in ("easel", "asyncio", "websockets"):
            logging.getLogger(name).removeHandler(self._handler)

    # -- state, read on the server's loop

    def state(self) -> dict[str, int]:
        def read() -> dict[str, int]:
            server = self.server
            return {"connections": len(server.connections), "admitted": server.connection_count,
                    "clients": len(server.clients), "queued": server.scheduler.length,
                    "running": int(server.scheduler.running is not None),
                    "tasks": len(asyncio.all_tasks()) - 1,  # minus the task reading this
                    "store_bytes": sum(c.store.bytes for c in server.clients.values())}
        return self.call(read)

    def settle(self, timeout: float = WAIT_S, clients: int = 0) -> dict[str, int]:
        """Wait until no connection is open, no job queued or running, and at most ``clients``
        clients are kept; returns that state."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state()
            if (state["connections"] == 0 and state["admitted"] == 0 and state["queued"] == 0
                    and state["running"] == 0 and state["clients"] <= clients):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not settle: {state}")
            time.sleep(0.05)


class _ErrorCounter(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(f"{record.name}: {record.getMessage()}")


# =============================================================================== resources

def resources(server: ServerUnderTest | None = None) -> dict[str, int]:
    """Threads, open files and resident memory of this process (and the server loop's tasks)."""
    gc.collect()
    status = Path("/proc/self/status").read_text()
    rss_kib = int(status.split("VmRSS:")[1].split()[0])
    os_threads = int(status.split("Threads:")[1].split()[0])  # Python's and the libraries' (OpenMP) threads
    names = sorted(t.name for t in threading.enumerate())
    io = sum(name.startswith("easel-io") for name in names)  # the server's bounded pool (IO_THREADS), started on demand
    out = {"threads": len(names) - io, "io_threads": io, "os_threads": os_threads - io, "fds": len(os.listdir("/proc/self/fd")),
           "rss_kib": rss_kib, "thread_names": names}
    if server is not None:
        out["tasks"] = server.state()["tasks"]
    return out


class ClientLoop:
    """An event loop on a thread of its own, for the test clients (so the server's loop and the
    clients' never share a thread)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-clients", daemon=True)
        self.thread.start()

    def run(self, coroutine: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.run(cancel_all(), 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()

    def __enter__(self) -> "ClientLoop":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class RawClient:
    """A synchronous client that speaks raw frames (no ClientSession to keep it honest): hello on
    connect, then whatever the test sends; answers are decoded and handed back as they come."""

    def __init__(self, url: str, name: str = "raw", token: str = "", client_id: str = "") -> None:
        from websockets.sync.client import connect as connect_sync

        self.ws = connect_sync(url, compression=None, max_size=MAX_SIZE, open_timeout=WAIT_S, max_queue=None)
        self.ws.send(encode(Hello(1, name, "1", token, client_id)))
        self.welcome = decode(self.ws.recv(WAIT_S))

    def send(self, message: Any) -> None:
        self.ws.send(message if isinstance(message, (bytes, str)) else encode(message))

    def until(self, predicate: Callable[[Any], bool], timeout: float = WAIT_S) -> list[Any]:
        """Messages until one satisfies ``predicate`` (that one last)."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            seen.append(decode(self.ws.recv(max(0.01, deadline - time.monotonic()))))
            if predicate(seen[-1]):
                return seen

    def error(self) -> ErrorEvent:
        return self.until(lambda m: isinstance(m, ErrorEvent))[-1]

    def job(self, job_id: str, steps: int = 1) -> Any:
        """Run a small txt2img job; returns its last message (JobFinished, JobFailed or JobCancelled)."""
        self.send(txt2img_job(job_id, steps=steps))
        return self.until(lambda m: isinstance(m, (JobFinished, JobFailed, JobCancelled)) and m.job_id == job_id)[-1]

    def close(self) -> None:
        self.ws.close()
        self.ws.recv_events_thread.join(WAIT_S)  # so that thread counts do not see it linger

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# =============================================================================== images and jobs

def rgba_image(width: int, height: int, seed: int) -> ImagePayload:
    rng = random.Random(seed)
    row = bytes(rng.randrange(256) for _ in range(width * 4))
    data = b"".join(row[i % len(row):] + row[:i % len(row)] for i in range(height))
    return ImagePayload(ImageFormat.RGBA8, width, height, data)


def txt2img_job(job_id: str, steps: int = 2, seed: int = 1) -> SubmitJob:
    return SubmitJob(job_id, "txt2img", JobParams(model="tiny", prompt="soak", width=64, height=64, steps=steps, seed=seed))


def img2img_job(job_id: str, image: ImagePayload, steps: int = 3) -> SubmitJob:
    return SubmitJob(job_id, "img2img", JobParams(model="tiny", prompt="soak", width=64, height=64, steps=steps,
                                                   seed=7, strength=0.8), {"image": image.id})


# =============================================================================== the well-behaved client

@dataclass
class GoodStats:
    finished: int = 0
    busy: int = 0
    failures: list[str] = field(default_factory=list)


async def good_client(url: str, stop: asyncio.Event, stats: GoodStats, *, image: ImagePayload | None = None,
                      ready: asyncio.Event | None = None) -> None:
    """Run jobs one after another through the plugins' transport until ``stop`` is set; every job
    must finish (``busy`` is retried: it is the typed answer to a full queue). ``ready`` is set once
    it is connected."""
    client = AsyncClient(url, client_name="good-client", client_version="1", backoff=(0.05, 0.5))
    await client.start()
    if ready is not None:
        ready.set()
    n = 0
    try:
        while not stop.is_set():
            n += 1
            job_id = f"good-{n}"
            if image is not None and n % 2:
                await client.submit_hashed(img2img_job(job_id, image), [image])
                size = (image.width, image.height)
            else:
                client.submit(txt2img_job(job_id, seed=n))
                size = (64, 64)
            while True:
                event = await client.next_event(WAIT_S)
                if isinstance(event, JobResult) and event.job_id == job_id:
                    if [(i.width, i.height) for i in event.images] != [size]:
                        stats.failures.append(f"{job_id}: wrong result {event.images!r}")
                    stats.finished += 1
                    break
                if isinstance(event, JobFailed) and event.job_id == job_id:
                    if event.code is ErrorCode.BUSY:
                        stats.busy += 1
                        await asyncio.sleep(0.1)
                        break
                    stats.failures.append(f"{job_id}: {event.code.value}: {event.message}")
                    break
                if isinstance(event, (JobCancelled, JobLost, Disconnected)):
                    stats.failures.append(f"{job_id}: {event!r}")
                    if isinstance(event, Disconnected):
                        return
                    break
    finally:
        await client.close()


# =============================================================================== the fuzzer

def _valid_corpus() -> list[Any]:
    image = rgba_image(8, 8, 1)
    info = image_info(image)
    big = ImageInfo("ab" * 32, ImageFormat.RGBA8, 4096, 4096, 4096 * 4096 * 4)
    params = JobParams(prompt="fuzz", model="tiny", steps=1, width=64, height=64, seed=3)
    return [
        Ping(1), Ping(2 ** 64 - 1), ListModels(),
        OfferImages((info,)), OfferImages((info, big)), OfferImages(()),
        *chunk_image(image), ImageChunk(big.id, big.format, big.width, big.height, big.size, 0, 256, b"\x00" * 65536),
        SubmitJob("f-1", "txt2img", params),
        SubmitJob("f-2", "img2img", JobParams(prompt="x", strength=0.5, steps=1), {"image": info.id}),
        SubmitJob("f-3", "inpaint", JobParams(controls=(ControlUnit("tiny", info.id),), loras=(LoraWeight("x"),)),
                  {"image": info.id, "mask": info.id}),
        SubmitJob("f-4", "outpaint", JobParams(margins=Margins(8, 0, 8, 0), steps=1), {"image": info.id}),
        SubmitJob("f-5", "txt2img", JobParams(width=72, height=64, batch_size=2, steps=2, seed=None)),
        CancelJob("f-1"), CancelJob("nope"),
        Hello(1, "again", "1"),
        Welcome(1, "x", "1", "c", _caps(), _limits()), JobAccepted("f-1", 0), StepPreview("f-1", 1, 2, 8, 8, b"\xff\xd8\xff"),
        JobFinished("f-1", (info,), 1), ErrorEvent(ErrorCode.INTERNAL, "x"), Pong(3), ModelList(()),
        ImagesWanted((info.id,)), ImageStored(info.id), JobStarted("f-1", "tiny", 1, 1, 8, 8), QueuePosition("f-1", 0),
    ]


def _caps() -> Any:
    from protocol import Capabilities

    return Capabilities(("txt2img",), ("euler",), ())


def _limits() -> Any:
    from protocol import Limits

    return Limits(5 * 1024 * 1024)


#: Frames that lie about their sizes, nest absurdly, or use what Easel forbids (hand-made).
NASTY = [
    b"", b"\xc1", b"\x90", b"\xa4ping", b"\xc0",
    b"\xdd\xff\xff\xff\xff",                                  # array of 2^32 - 1 items, then nothing
    b"\xdf\xff\xff\xff\xff\xa4type",                          # map of 2^32 - 1 pairs
    b"\xdb\xff\xff\xff\xff" + b"x" * 10,                      # str of 4 GB
    b"\xc6\xff\xff\xff\xff",                                  # bin of 4 GB
    b"\x81\xa4type\xa4ping" + b"\x00",                        # trailing data
    b"\x91" * 100_000 + b"\xc0",                              # nested 100,000 deep
    b"\x82\xa4type\xa4ping\xa5nonce" + b"\x81\xa1k" * 1000 + b"\xc0",
    b"\x82\xa4type\xa4ping\xa5nonce\xd4\x01\x02",             # ext type
    b"\x82\xa4type\xa4ping\xa5nonce\xd6\xff\x00\x00\x00\x00",  # timestamp ext
    b"\x81\xa4type\xa3\xed\xa0\x80",                          # surrogate (invalid UTF-8)
    b"\x81\xc4\x04type\xa4ping",                              # bin key
    b"\x81\x01\xa4ping",                                      # int key
    # a 5 MB frame of empty arrays (~5 million objects if decoded naively)
    b"\x81\xa4type\xdc\x00\x50" + (b"\xdc\xff\xff" + b"\x90" * 65535) * 78,
    # a pickle whose loading would create a file: must be a malformed frame, never unpickled
    b"\x80\x04\x95" + b"\x00" * 8 + b"cposix\nsystem\n(S'touch /tmp/easel-pwned'\ntR.",
]


class Fuzzer:
    """Random and mutated frames, reproducible from ``seed``. ``oversized`` frames (larger than the
    server's frame limit) come with probability ``oversized_rate``."""

    def __init__(self, seed: int, max_frame: int, oversized_rate: float = 0.0005) -> None:
        self.rng = random.Random(seed)
        self.max_frame = max_frame
        self.oversized_rate = oversized_rate
        self.corpus = [encode(m) for m in _valid_corpus()]
        self.bodies = [msgpack.unpackb(f, raw=False) for f in self.corpus]

    def value(self, depth: int = 0) -> Any:
        rng = self.rng
        kind = rng.randrange(14 if depth < 3 else 10)
        if kind == 0:
            return None
        if kind == 1:
            return rng.choice([True, False])
        if kind == 2:
            return rng.choice([0, -1, 1, 2 ** 63 - 1, -(2 ** 63), 2 ** 64 - 1, 65535, 65536, 2 ** 32, 8192, 4097])
        if kind == 3:
            return rng.randrange(-(2 ** 63), 2 ** 64)
        if kind == 4:
            return rng.choice([0.0, -0.0, 1.5, 1e308, -1e308, float("nan"), float("inf"), float("-inf"), 1.4])
        if kind == 5:
            return rng.choice(["", "tiny", "../../etc/passwd", "/etc/passwd", "x" * rng.randrange(300),
                               "txt2img", "rgba8", "png", "\u202e\x00\n", "ab" * 32, "C:\\\\Windows"])
        if kind == 6:
            return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        if kind == 7:
            return rng.choice(list(MESSAGES))
        if kind == 8:
            return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(20)))
        if kind == 9:
            return rng.choice([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\x00" * 70000])
        if kind in (10, 11):
            return [self.value(depth + 1) for _ in range(rng.randrange(6))]
        return {rng.choice(["type", "id", "job_id", "data", "x", "params", "images"]): self.value(depth + 1)
                for _ in range(rng.randrange(5))}

    def _swap(self, body: Any) -> Any:
        rng = self.rng
        if isinstance(body, dict) and body:
            key = rng.choice(sorted(body, key=str))
            if key == "type" and rng.random() < 0.8:
                return {**body, "extra": self.value()}
            if rng.random() < 0.5:
                return {**body, key: self._swap(body[key])}
            return {**body, key: self.value()}
        if isinstance(body, list) and body:
            i = rng.randrange(len(body))
            return body[:i] + [self._swap(body[i])] + body[i + 1:]
        return self.value()

    def frame(self) -> tuple[bytes | str, bool]:
        """(frame, oversized)."""
        rng = self.rng
        if rng.random() < self.oversized_rate:
            return b"\x81\xa4type\xa4ping" + b"\x00" * (self.max_frame + rng.randrange(1, 1000)), True
        kind = rng.randrange(100)
        base = rng.choice(self.corpus)
        if kind < 10:
            return bytes(rng.randrange(256) for _ in range(rng.randrange(600))), False
        if kind < 20:
            data = bytearray(base)
            for _ in range(rng.randrange(1, 9)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            return bytes(data), False
        if kind < 27:
            return base[:rng.randrange(len(base))], False
        if kind < 34:
            other = rng.choice(self.corpus)
            return base[:rng.randrange(len(base) + 1)] + other[rng.randrange(len(other) + 1):], False
        if kind < 40:
            at = rng.randrange(len(base) + 1)
            return base[:at] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 17))) + base[at:], False
        if kind < 72:
            try:
                return msgpack.packb(self._swap(rng.choice(self.bodies)), use_bin_type=True), False
            except (ValueError, OverflowError, TypeError):
                return base, False
        if kind < 80:
            return msgpack.packb({"type": rng.choice(list(MESSAGES) + ["frobnicate", ""]),
                                  **{rng.choice(["job_id", "id", "nonce", "images", "params", "task", "data"]): self.value()
                                     for _ in range(rng.randrange(4))}}, use_bin_type=True), False
        if kind < 86:
            return rng.choice(NASTY), False
        if kind < 89:
            # A big frame within the limit: a huge field in an otherwise valid message.
            body = dict(rng.choice(self.bodies))
            body[rng.choice(["data", "prompt", "x"])] = rng.choice([b"\x00", "y"]) * rng.randrange(70_000, 1_500_000)
            return msgpack.packb(body, use_bin_type=True), False
        if kind < 91:
            return rng.choice(["{\"type\": \"ping\"}", "hello", ""]), False  # a text frame
        return base, False


def _sent_by_a_client(cls: type) -> None:
    if cls not in CLIENT_MESSAGES:  # image_chunk goes both ways
        raise RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "a server message from a client")


def expectation(frame: bytes | str) -> tuple[str, Any]:
    """What the server must answer ``frame`` with, judged by our own decoder (see the module doc)."""
    if isinstance(frame, str):
        return "error", ErrorCode.MALFORMED_FRAME
    try:
        # The server checks a message's direction by its type before its fields (docs/protocol.md 5).
        message = decode(frame, check_type=_sent_by_a_client)
    except RemoteProtocolError as exc:
        return "error", exc.code
    if isinstance(message, Hello):  # after the handshake
        return "error", ErrorCode.UNEXPECTED_MESSAGE
    if isinstance(message, Ping):
        return "pong", message.nonce
    if isinstance(message, ListModels):
        return "model_list", None
    if isinstance(message, OfferImages):
        return "offer", None
    if isinstance(message, SubmitJob):
        return "submit", message.job_id
    return "at_most_one", None  # image_chunk, cancel_job


_ASYNC = (JobStarted, QueuePosition, StepPreview, JobFinished, ImageChunk)


@dataclass
class FuzzStats:
    frames: int = 0
    bad_frames: int = 0      # frames our decoder refuses (each must get the same error code)
    oversized: int = 0       # frames over the server's limit (each must close the connection with 1009)
    errors_by_code: dict[str, int] = field(default_factory=dict)
    jobs_accepted: int = 0
    connections: int = 0
    failures: list[str] = field(default_factory=list)

    def merge(self, other: "FuzzStats") -> None:
        self.frames += other.frames
        self.bad_frames += other.bad_frames
        self.oversized += other.oversized
        self.jobs_accepted += other.jobs_accepted
        self.connections += other.connections
        self.failures += other.failures
        for code, n in other.errors_by_code.items():
            self.errors_by_code[code] = self.errors_by_code.get(code, 0) + n


def _check(expected: tuple[str, Any], answers: list[Any], open_jobs: set[str], stats: FuzzStats, frame: bytes | str) -> None:
    kind, value = expected
    for answer in answers:
        if isinstance(answer, ErrorEvent):
            stats.errors_by_code[answer.code.value] = stats.errors_by_code.get(answer.code.value, 0) + 1
            if answer.code is ErrorCode.INTERNAL or not answer.message or "Traceback" in answer.message:
                stats.failures.append(f"bad error {answer!r} for frame {frame[:60]!r}")
    ok: bool
    if kind == "error":
        ok = len(answers) == 1 and isinstance(answers[0], ErrorEvent) and answers[0].code is value
    elif kind == "pong":
        ok = len(answers) == 1 and isinstance(answers[0], Pong) and answers[0].nonce == value
    elif kind == "model_list":
        ok = len(answers) == 1 and isinstance(answers[0], ModelList)
    elif kind == "offer":
        ok = len(answers) == 1 and (isinstance(answers[0], ImagesWanted)
                                    or (isinstance(answers[0], ErrorEvent) and answers[0].ref == "offer_images"))
    elif kind == "submit":
        ok = len(answers) == 1 and (
            (isinstance(answers[0], (JobAccepted, JobFailed)) and answers[0].job_id == value)
            or (isinstance(answers[0], ErrorEvent) and answers[0].ref == value[:128]))
        if ok and isinstance(answers[0], JobAccepted):
            open_jobs.add(value)
            stats.jobs_accepted += 1
    else:
        ok = len(answers) <= 1 and all(isinstance(a, (ErrorEvent, ImageStored)) for a in answers)
    if not ok:
        stats.failures.append(f"frame {frame[:80]!r} expected {kind} {value!r}, got {answers!r}"[:600])


class _connection:
    """``async with _connection(url) as ws``: a websocket that is closed on the way out unless the
    server already closed it (closing a failed connection again trips over its aborted transport)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ws: Any = None

    async def __aenter__(self) -> Any:
        self.ws = await connect(self.url, compression=None, max_size=MAX_SIZE, max_queue=None, open_timeout=WAIT_S)
        return self.ws

    async def __aexit__(self, *exc: Any) -> None:
        from websockets.protocol import State

        if self.ws.state is State.OPEN:
            await self.ws.close()


async def fuzz_connection(url: str, fuzzer: Fuzzer, count: int, stats: FuzzStats, batch: int = 32) -> None:
    """Send ``count`` fuzz frames over as many connections as it takes (an oversized frame ends one),
    checking every answer."""
    sent = 0
    held: tuple[bytes | str, bool] | None = None  # an oversized frame waiting for its own turn
    while sent < count:
        stats.connections += 1
        async with _connection(url) as ws:
            await ws.send(encode(Hello(1, "fuzzer", "1")))
            welcome = decode(await asyncio.wait_for(ws.recv(), WAIT_S))
            if not isinstance(welcome, Welcome):
                stats.failures.append(f"no welcome: {welcome!r}")
                return
            open_jobs: set[str] = set()
            cancels: list[str] = []
            while sent < count:
                pending: list[tuple[bytes | str, tuple[str, Any], int]] = []
                oversized = False
                for frame in [encode(CancelJob(job_id)) for job_id in cancels]:
                    # Cancel every job a fuzz frame got accepted: the device is for the good client.
                    await ws.send(frame)
                    await ws.send(encode(Ping(BARRIER - len(pending) - 1)))
                    pending.append((frame, ("at_most_one", None), BARRIER - len(pending) - 1))
                cancels.clear()
                for _ in range(min(batch, count - sent)):
                    frame, oversized = held or fuzzer.frame()
                    held = None
                    if oversized and pending:
                        # The server fails the connection as soon as it reads an oversized frame, and
                        # answers to frames before it may not have left yet: send it on its own.
                        held = (frame, oversized)
                        oversized = False
                        break
                    expected = ("close", 1009) if oversized else expectation(frame)
                    sent += 1
                    stats.frames += 1
                    if expected[0] == "error":
                        stats.bad_frames += 1
                    await ws.send(frame)
                    if oversized:
                        stats.oversized += 1
                        break
                    nonce = BARRIER + stats.frames
                    await ws.send(encode(Ping(nonce)))
                    pending.append((frame, expected, nonce))
                for frame, expected, nonce in pending:
                    answers: list[Any] = []
                    while True:
                        raw = await asyncio.wait_for(ws.recv(), WAIT_S)
                        message = decode(raw)
                        if isinstance(message, Pong) and message.nonce == nonce:
                            break
                        job_id = getattr(message, "job_id", None)
                        if isinstance(message, _ASYNC) or (isinstance(message, (JobFailed, JobCancelled)) and job_id in open_jobs):
                            if isinstance(message, (JobFinished, JobFailed, JobCancelled)):
                                open_jobs.discard(job_id)
                            continue
                        answers.append(message)
                    before = set(open_jobs)
                    _check(expected, answers, open_jobs, stats, frame)
                    cancels += sorted(open_jobs - before)
                if oversized:
                    try:
                        while True:
                            await asyncio.wait_for(ws.recv(), WAIT_S)
                    except websockets.exceptions.ConnectionClosed as closed:
                        if closed.rcvd is None or closed.rcvd.code != 1009:
                            stats.failures.append(f"an oversized frame closed the connection with {closed.rcvd!r}, not 1009")
                    break


def run_fuzz(url: str, frames: int, connections: int, seed: int, max_frame: int, client_loop: ClientLoop,
             good_image: ImagePayload | None = None) -> tuple[FuzzStats, GoodStats, float]:
    """``frames`` fuzz frames over ``connections`` concurrent connections while the good client
    runs jobs. Returns the fuzz and good-client stats and the seconds it took."""
    async def main() -> tuple[FuzzStats, GoodStats]:
        stop = asyncio.Event()
        good = GoodStats()
        good_task = asyncio.create_task(good_client(url, stop, good, image=good_image))
        parts = [FuzzStats() for _ in range(connections)]
        share = frames // connections
        try:
            await asyncio.gather(*(fuzz_connection(url, Fuzzer(seed + i, max_frame), share + (i < frames % connections), part)
                                   for i, part in enumerate(parts)))
        finally:
            stop.set()
            await asyncio.wait_for(good_task, WAIT_S)
        total = FuzzStats()
        for part in parts:
            total.merge(part)
        return total, good

    started = time.perf_counter()
    stats, good = client_loop.run(main())
    return stats, good, time.perf_counter() - started


# =============================================================================== cycles

POINTS = ("before_hello", "after_hello", "mid_upload", "before_submit", "after_submit", "after_accepted",
          "mid_job", "after_end")


@dataclass
class CycleStats:
    cycles: int = 0
    by_point: dict[str, int] = field(default_factory=dict)
    resumed: int = 0
    aborted: int = 0
    failures: list[str] = field(default_factory=list)


async def one_cycle(url: str, rng: random.Random, images: list[ImagePayload], known: list[tuple[str, str]],
                    stats: CycleStats) -> None:
    """One client life: connect, maybe resume an earlier client, upload, submit, drop at a random point."""
    point = rng.choice(POINTS)
    stats.by_point[point] = stats.by_point.get(point, 0) + 1
    ws = await connect(url, compression=None, max_size=MAX_SIZE, max_queue=None, open_timeout=WAIT_S)
    abort = rng.random() < 0.5
    try:
        if point == "before_hello":
            return
        client_id, job_id = ("", "")
        if known and rng.random() < 0.1:
            client_id, job_id = rng.choice(known)
            stats.resumed += 1
        session = ClientSession("cycle", "1", client_id=client_id, resume=(job_id,) if job_id else (),
                                chunk_bytes=64 * 1024)
        events: list[Any] = []

        async def pump(until: Callable[[Any], bool]) -> None:
            while True:
                for frame in session.data_to_send():
                    await ws.send(frame)
                for event in session.receive_frame(await asyncio.wait_for(ws.recv(), WAIT_S)):
                    events.append(event)
                    if until(event):
                        return

        await pump(lambda e: isinstance(e, Welcome))
        mine = f"cy-{stats.cycles}"
        known.append((session.client_id, mine))
        del known[:-50]
        if point == "after_hello":
            return
        image = rng.choice(images)
        session.submit(img2img_job(mine, image), [image])
        for frame in session.data_to_send():  # the offer
            await ws.send(frame)
        while not any(isinstance(e, ImagesWanted) for e in events):
            events += session.receive_frame(await asyncio.wait_for(ws.recv(), WAIT_S))
        frames = session.data_to_send()  # the wanted chunks, then submit_job
        chunks, submit = frames[:-1], frames[-1:]
        if point == "mid_upload" and len(chunks) > 1:
            for frame in chunks[:rng.randrange(1, len(chunks))]:
                await ws.send(frame)
            return
        for frame in chunks:
            await ws.send(frame)
        if point in ("mid_upload", "before_submit"):
            return
        for frame in submit:
            await ws.send(frame)
        if point == "after_submit":
            return
        ended = (JobResult, JobFailed, JobCancelled)
        await pump(lambda e: isinstance(e, (JobAccepted, *ended)) and e.job_id == mine)
        if point == "after_accepted":
            return
        await pump(lambda e: isinstance(e, (StepPreview, *ended)) and e.job_id == mine)
        if point == "mid_job":
            return
        if not isinstance(events[-1], ended):
            await pump(lambda e: isinstance(e, ended) and e.job_id == mine)
        if not isinstance(events[-1], JobResult):
            stats.failures.append(f"cycle {stats.cycles}: the job ended with {events[-1]!r}")
    finally:
        stats.cycles += 1
        if abort:
            stats.aborted += 1
            ws.transport.abort()
            await asyncio.sleep(0)
        await ws.close()


def run_cycles(server: ServerUnderTest, cycles: int, seed: int, client_loop: ClientLoop, warmup: int = 20,
               settle_clients: int = 0) -> tuple[CycleStats, dict[str, int], dict[str, int], dict[str, int], float]:
    """``warmup`` cycles, a measurement, ``cycles`` cycles, the server settled, a measurement.
    Returns (stats, before, after, peak state seen during the run, seconds)."""
    rng = random.Random(seed)
    images = [rgba_image(64, 64, 1), rgba_image(128, 128, 2), rgba_image(200, 160, 3), rgba_image(256, 256, 4)]
    known: list[tuple[str, str]] = []
    stats = CycleStats()
    peak: dict[str, int] = {}

    async def run(n: int) -> None:
        for _ in range(n):
            try:
                await one_cycle(server.url, rng, images, known, stats)
            except (websockets.exceptions.ConnectionClosed, RemoteProtocolError) as exc:
                stats.failures.append(f"cycle {stats.cycles}: {exc!r}")

    client_loop.run(run(warmup))
    server.settle(clients=settle_clients)
    before = resources(server)
    started = time.perf_counter()
    done = 0
    while done < cycles:
        step = min(100, cycles - done)
        client_loop.run(run(step))
        done += step
        for key, value in server.state().items():
            peak[key] = max(peak.get(key, 0), value)
    seconds = time.perf_counter() - started
    server.settle(clients=settle_clients)
    after = resources(server)
    return stats, before, after, peak, seconds


# =============================================================================== floods

@dataclass
class FloodStats:
    oversized_closed_1009: int = 0
    busy: int = 0
    busy_codes: dict[str, int] = field(default_factory=dict)
    refused_503: int = 0
    idle_closed: int = 0
    good_finished: int = 0
    failures: list[str] = field(default_factory=list)


async def flood_oversized(url: str, count: int, max_frame: int, stats: FloodStats) -> None:
    for _ in range(count):
        async with _connection(url) as ws:
            await ws.send(encode(Hello(1, "flood", "1")))
            await ws.recv()
            await ws.send(b"\x00" * (max_frame + 1))
            try:
                await asyncio.wait_for(ws.recv(), WAIT_S)
            except websockets.exceptions.ConnectionClosed as closed:
                if closed.rcvd is not None and closed.rcvd.code == 1009:
                    stats.oversized_closed_1009 += 1
                else:
                    stats.failures.append(f"oversized frame: closed with {closed.rcvd!r}")


async def flood_jobs(url: str, jobs: int, stats: FloodStats) -> None:
    """One client submits ``jobs`` long jobs without waiting; the ones over a bound get busy."""
    async with _connection(url) as ws:
        session = ClientSession("flood", "1")
        for frame in session.data_to_send():
            await ws.send(frame)
        session.receive_frame(await ws.recv())
        for n in range(jobs):
            session.submit(txt2img_job(f"flood-{n}", steps=50))
        for frame in session.data_to_send():
            await ws.send(frame)
        answered = 0
        while answered < jobs:
            for event in session.receive_frame(await asyncio.wait_for(ws.recv(), WAIT_S)):
                if isinstance(event, JobAccepted):
                    answered += 1
                elif isinstance(event, JobFailed):
                    if event.code is ErrorCode.BUSY:
                        answered += 1
                        stats.busy += 1
                        key = "client" if "client_jobs" in (event.details or {}) or "connection" in event.message else "queue"
                        stats.busy_codes[key] = stats.busy_codes.get(key, 0) + 1
                    else:
                        stats.failures.append(f"flood job: {event.code.value}: {event.message}")
        # Leave with the jobs open: the server cancels them.


async def flood_idle(url: str, count: int, stats: FloodStats) -> None:
    """Open ``count`` connections that never say hello; those past max_connections get HTTP 503,
    the rest are closed by the server's hello timeout."""
    async def idle() -> None:
        try:
            ws = await connect(url, compression=None, open_timeout=WAIT_S)
        except websockets.exceptions.InvalidStatus as refused:
            if refused.response.status_code == 503:
                stats.refused_503 += 1
            else:
                stats.failures.append(f"idle connection refused with {refused.response.status_code}")
            return
        try:
            await asyncio.wait_for(ws.recv(), WAIT_S)
        except websockets.exceptions.ConnectionClosed as closed:
            if closed.rcvd is not None and closed.rcvd.code == 1008:
                stats.idle_closed += 1
            else:
                stats.failures.append(f"idle connection closed with {closed.rcvd!r}")
    await asyncio.gather(*(idle() for _ in range(count)))


def run_floods(server: ServerUnderTest, client_loop: ClientLoop, *, oversized: int, flood_clients: int,
               jobs_each: int, idle: int) -> FloodStats:
    """The floods, one after another, each while the good client runs jobs."""
    stats = FloodStats()
    max_frame = server.server.limits.max_frame_bytes

    async def with_good_client(flood: Any) -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        good = GoodStats()
        task = asyncio.create_task(good_client(server.url, stop, good, ready=ready))
        try:
            await asyncio.wait_for(ready.wait(), WAIT_S)  # connected before the flood, like a running plugin
            await flood
            while good.finished < 1 and not task.done():  # its job must complete during the flood
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.wait_for(task, WAIT_S)
        stats.good_finished += good.finished
        stats.failures += good.failures

    client_loop.run(with_good_client(flood_oversized(server.url, oversized, max_frame, stats)))
    async def jobs() -> None:
        await asyncio.gather(*(flood_jobs(server.url, jobs_each, stats) for _ in range(flood_clients)))
    client_loop.run(with_good_client(jobs()))
    client_loop.run(with_good_client(flood_idle(server.url, idle, stats)))
    return stats


# =============================================================================== pressure

#: The worst prompt the fuzzing knows, made to be refused after a full parse (an explicit weight of
#: 5 at its end): the parser scans all 10,000 characters and no job runs.
WORST_PROMPT = "(:" + "1" * 9_990 + " (x:5)"


def _rss_mib() -> float:
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024


class PeakRss:
    """``with PeakRss() as peak:`` samples this process's resident memory every 10 ms; ``peak.mib``."""

    def __init__(self) -> None:
        self.mib = _rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.mib = max(self.mib, _rss_mib())

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.mib = max(self.mib, _rss_mib())


@dataclass
class PressureStats:
    ping_idle_ms: float = 0.0
    ping_flood_ms: float = 0.0
    worst_frames: int = 0
    worst_refused: int = 0
    rss_start_mib: float = 0.0
    rss_four_clients_mib: float = 0.0
    four_client_bytes: int = 0
    rss_unread_mib: float = 0.0
    unread_result_bytes: int = 0
    unread_dropped: bool = False
    budget_mib: float = 0.0
    failures: list[str] = field(default_factory=list)


async def _hello(url: str, name: str, max_queue: int | None = None) -> Any:
    ws = await connect(url, compression=None, max_size=MAX_SIZE, open_timeout=WAIT_S, max_queue=max_queue)
    await ws.send(encode(Hello(1, name, "1")))
    welcome = decode(await asyncio.wait_for(ws.recv(), WAIT_S))
    return ws, welcome


async def _longest_ping(url: str, pings: int, during: Any = None) -> float:
    """The longest of ``pings`` round trips (ms), one after another, while ``during`` runs."""
    ws, _ = await _hello(url, "pinger")
    task = asyncio.ensure_future(during) if during is not None else None
    longest = 0.0
    try:
        for nonce in range(pings):
            started = time.perf_counter()
            await ws.send(encode(Ping(BARRIER + nonce)))
            while not isinstance(decode(await asyncio.wait_for(ws.recv(), WAIT_S)), Pong):
                pass
            longest = max(longest, (time.perf_counter() - started) * 1000)
            if task is not None and task.done():
                break
        if task is not None:
            await task
    finally:
        await ws.close()
    return longest


async def _worst_prompts(url: str, frames: int, stats: PressureStats) -> None:
    """``frames`` submit_jobs with :data:`WORST_PROMPT`, pipelined on one connection."""
    ws, _ = await _hello(url, "worst")
    try:
        for n in range(frames):
            await ws.send(encode(SubmitJob(f"w{n}", "txt2img", JobParams(model="tiny", prompt=WORST_PROMPT, steps=1))))
        stats.worst_frames += frames
        answered = 0
        while answered < frames:
            message = decode(await asyncio.wait_for(ws.recv(), WAIT_S))
            if isinstance(message, JobFailed):
                answered += 1
                stats.worst_refused += message.code is ErrorCode.INVALID_PARAMETER
    finally:
        await ws.close()


async def _storing_client(url: str, images: int, side: int, seed: int) -> int:
    """Upload ``images`` distinct side² RGBA images (each with a job refused after the upload, so
    nothing runs) and keep them in the client's store; returns the bytes uploaded."""
    ws = await connect(url, compression=None, max_size=MAX_SIZE, open_timeout=WAIT_S, max_queue=None)
    session = ClientSession("store", "1")
    sent = 0

    async def pump(until: Callable[[Any], bool]) -> None:
        while True:
            for frame in session.data_to_send():
                await ws.send(frame)
            if any(until(event) for event in session.receive_frame(await asyncio.wait_for(ws.recv(), WAIT_S))):
                return
    try:
        await pump(lambda e: isinstance(e, Welcome))
        for n in range(images):
            image = ImagePayload(ImageFormat.RGBA8, side, side, random.Random(seed * 1000 + n).randbytes(side * side * 4))
            job = SubmitJob(f"s{n}", "img2img", JobParams(model="tiny", strength=5.0), images={"image": image.id})
            session.submit(job, [image])
            await pump(lambda e, job_id=job.job_id: isinstance(e, (JobFailed, ErrorEvent)) and getattr(e, "job_id", job_id) == job_id)
            sent += len(image.data)
    finally:
        await ws.close()
    return sent


async def _unread_client(server: ServerUnderTest, jobs: int, stats: PressureStats) -> None:
    """Submit ``jobs`` jobs with big results and never read (the library pauses the socket)."""
    ws, _ = await _hello(server.url, "deaf", max_queue=1)
    for n in range(jobs):
        await ws.send(encode(SubmitJob(f"big{n}", "txt2img", JobParams(model="tiny", width=512, height=512,
                                                                        batch_size=4, steps=1))))
    stats.unread_result_bytes = jobs * 4 * 512 * 512 * 4
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        state = await asyncio.to_thread(server.state)
        if state["connections"] == 0:
            break
        await asyncio.sleep(0.05)
    state = await asyncio.to_thread(server.state)
    stats.unread_dropped = state["connections"] == 0
    ws.transport.abort()


def run_pressure(server: ServerUnderTest, client_loop: ClientLoop, *, worst_frames: int, pings: int,
                 store_images: int, store_side: int, unread_jobs: int) -> PressureStats:
    """The event loop's longest stall (a ping's round trip) idle and under the worst prompts; the
    process's peak memory under four clients storing images and under a client that never reads."""
    stats = PressureStats(rss_start_mib=_rss_mib())
    stats.ping_idle_ms = client_loop.run(_longest_ping(server.url, pings))
    stats.ping_flood_ms = client_loop.run(_longest_ping(server.url, pings, _worst_prompts(server.url, worst_frames, stats)))
    if stats.worst_refused != worst_frames:
        stats.failures.append(f"worst prompts: {stats.worst_refused} of {worst_frames} refused with invalid_parameter")
    with PeakRss() as peak:
        async def four() -> list[int]:
            return await asyncio.gather(*(_storing_client(server.url, store_images, store_side, seed) for seed in range(4)))
        stats.four_client_bytes = sum(client_loop.run(four()))
    stats.rss_four_clients_mib = peak.mib
    server.settle()
    with PeakRss() as peak:
        client_loop.run(_unread_client(server, unread_jobs, stats))
    stats.rss_unread_mib = peak.mib
    if not stats.unread_dropped:
        stats.failures.append("the client that never reads was not dropped")
    server.settle()
    return stats


# =============================================================================== the script

def _table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100_000, help="fuzz frames in all (default 100,000)")
    parser.add_argument("--connections", type=int, default=4, help="concurrent fuzz connections (default 4)")
    parser.add_argument("--cycles", type=int, default=1000, help="connect/upload/submit/disconnect cycles (default 1,000)")
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--no-floods", action="store_true")
    parser.add_argument("--pressure-only", action="store_true",
                        help="only the loop-stall and memory-pressure runs (with --write-results: their own section)")
    parser.add_argument("--write-results", action="store_true", help="rewrite the Hardening section of benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import tempfile

    from backend.engine import Engine

    work = Path(tempfile.mkdtemp(prefix="easel-soak-"))
    model = build_tiny_model(work / "tiny")
    config = tiny_server_config(model, work / "cache", queue_size=64)
    engine = Engine(config)
    rows: list[tuple[str, str]] = []
    failures: list[str] = []
    if args.pressure_only:
        # A memory budget of its own (512 MiB, not a quarter of the machine), so that the peaks can be
        # read against it: never above the budget plus what was resident at the start.
        pressure_config = tiny_server_config(model, work / "cache", queue_size=64, memory_budget=512 * 2**20)
        with ClientLoop() as clients, ServerUnderTest(pressure_config, engine) as server:
            print("pressure ...", flush=True)
            pressure = run_pressure(server, clients, worst_frames=20, pings=400, store_images=16, store_side=1024,
                                    unread_jobs=24)
            pressure.budget_mib = server.server.budget.limit / 2**20
            rows = pressure_rows(pressure)
            failures = pressure.failures + server.errors[:20]
        print(_table(rows))
        for failure in failures:
            print("FAILURE:", failure)
        if args.write_results:
            write_pressure_results(rows, failures)
        return 1 if failures else 0
    with ClientLoop() as clients, ServerUnderTest(config, engine) as server:
        max_frame = server.server.limits.max_frame_bytes
        print(f"fuzzing: {args.frames} frames over {args.connections} connections ...", flush=True)
        fuzz, good, seconds = run_fuzz(server.url, args.frames, args.connections, args.seed, max_frame, clients,
                                       good_image=rgba_image(96, 80, 9))
        codes = ", ".join(f"{k} {v}" for k, v in sorted(fuzz.errors_by_code.items(), key=lambda kv: -kv[1]))
        rows += [("fuzz frames sent (concurrent connections)", f"{fuzz.frames:,} ({args.connections})"),
                 ("  refused by the decoder, each answered with the same error code", f"{fuzz.bad_frames:,}"),
                 ("  oversized, each closed with 1009", f"{fuzz.oversized:,}"),
                 ("  fuzz jobs accepted (then cancelled)", f"{fuzz.jobs_accepted:,}"),
                 ("  errors answered, by code", codes),
                 ("  connections used", f"{fuzz.connections:,}"),
                 ("  mismatched or untyped answers, internal errors", f"{len(fuzz.failures)}"),
                 ("  well-behaved client's jobs completed meanwhile (busy retries)", f"{good.finished} ({good.busy})"),
                 ("  seconds", f"{seconds:.0f}")]
        failures += fuzz.failures[:20] + good.failures[:20]
        server.settle(clients=64)
        print(f"cycles: {args.cycles} ...", flush=True)
        cycles, before, after, peak, seconds = run_cycles(server, args.cycles, args.seed, clients, settle_clients=0)
        rows += [("cycles (connect → upload → submit → drop)", f"{cycles.cycles - 20:,} after 20 warm-up"),
                 ("  by drop point", ", ".join(f"{k} {v}" for k, v in cycles.by_point.items())),
                 ("  sockets aborted / closed cleanly; reconnects with an earlier client id",
                  f"{cycles.aborted} / {cycles.cycles - cycles.aborted}; {cycles.resumed}"),
                 ("  server loop tasks before → after", f"{before['tasks']} → {after['tasks']}"),
                 ("  threads (Python; all OS threads), besides the server's I/O pool, before → after",
                  f"{before['threads']} → {after['threads']}; {before['os_threads']} → {after['os_threads']}"),
                 ("  the server's I/O pool threads before → after (at most 4)", f"{before['io_threads']} → {after['io_threads']}"),
                 ("  open files before → after", f"{before['fds']} → {after['fds']}"),
                 ("  resident memory before → after (MiB)", f"{before['rss_kib'] / 1024:.0f} → {after['rss_kib'] / 1024:.0f}"
                                                           f" ({(after['rss_kib'] - before['rss_kib']) / 1024:+.1f})"),
                 ("  peak during the run: connections, kept clients, tasks",
                  f"{peak.get('connections')}, {peak.get('clients')}, {peak.get('tasks')}"),
                 ("  failures", f"{len(cycles.failures)}"),
                 ("  seconds (the cycles; the measurement after them waits out the 30 s grace)", f"{seconds:.0f}")]
        failures += cycles.failures[:20]
        if not args.no_floods:
            print("floods ...", flush=True)
            flood_config = tiny_server_config(model, work / "cache", queue_size=16, max_client_jobs=4,
                                              max_connections=16, hello_timeout_s=2.0, reconnect_grace_s=0.0)
            with ServerUnderTest(flood_config, engine) as flood_server:
                floods = run_floods(flood_server, clients, oversized=200, flood_clients=3, jobs_each=10, idle=64)
                rows += [("floods: oversized frames, each closed with 1009", f"{floods.oversized_closed_1009} of 200"),
                         ("  3 clients × 10 jobs (queue 16, 4 per client): busy", f"{floods.busy} ({floods.busy_codes})"),
                         ("  64 idle connections (max 16, 4 per address without hello): HTTP 503 / closed 1008",
                          f"{floods.refused_503} / {floods.idle_closed}"),
                         ("  well-behaved client's jobs completed during the floods", f"{floods.good_finished}")]
                failures += floods.failures[:20] + flood_server.errors[:20]
        failures += server.errors[:20]
        rows.append(("server errors logged / unhandled loop exceptions", f"{len(server.errors)}"))
    print(_table(rows))
    for failure in failures:
        print("FAILURE:", failure)
    if args.write_results:
        write_results(rows, args, failures)
    return 1 if failures else 0


_NOTES = """How to read it:
- Every fuzz frame is followed by a `ping` barrier, so each answer is matched to its frame. A frame
  our own decoder refuses must get exactly one `error` with the same code; a valid request the
  answer the protocol gives it (`pong`, `model_list`, one `images_wanted` or offer error, one
  `job_accepted`/`job_failed`/`error` for a submit, at most one answer to a chunk or a cancel); an
  oversized frame close 1009 (the fuzzer then reconnects). Fuzz jobs that were accepted are
  cancelled at once, so the device stays free for the well-behaved client.
- Memory, open files, threads and the server loop's tasks are measured after 20 warm-up cycles and
  after the run, once the server has settled (no connection, no job, the dropped clients' grace
  period over). The server's I/O pool (at most 4 threads, started on demand) is counted apart.
  During the run at most 33 clients are kept: 32 waiting for a reconnect (`max_connections` of
  them; the longest gone is forgotten first) and the one connected.
- The flood numbers follow from the bounds: 3 flooding clients × 10 jobs with 4 allowed each get
  3 × 6 `busy`; 64 idle connections from one address on a server of 16 may hold 4 slots without
  `hello` at a time: each new one closes the oldest (1008), the last 4 are closed by the 2 s hello
  timeout (1008), and none is refused HTTP 503.
- Before the item limits in the decoder, one 5 MiB frame of empty arrays cost ~370 MB and a second
  of CPU on the server's loop; now it is refused after 262,144 items (~2 MB, ~25 ms).
"""


def pressure_rows(p: PressureStats) -> list[tuple[str, str]]:
    return [
        ("longest ping round trip, idle (ms)", f"{p.ping_idle_ms:.1f}"),
        (f"longest ping round trip while {p.worst_frames} submit_jobs with the worst 10,000-character prompt "
         f"are pipelined on another connection (ms)", f"{p.ping_flood_ms:.1f}"),
        ("  of them refused invalid_parameter (after a full parse, off the loop)", f"{p.worst_refused}"),
        ("resident memory at the start (MiB; the tiny model loaded)", f"{p.rss_start_mib:.0f}"),
        (f"peak while four clients store {p.four_client_bytes / 2**20:.0f} MiB of images (MiB)",
         f"{p.rss_four_clients_mib:.0f}"),
        (f"peak while a client that never reads is sent {p.unread_result_bytes / 2**20:.0f} MiB of results (MiB)",
         f"{p.rss_unread_mib:.0f}"),
        ("  the unread client was dropped (its results wait for a reconnect)", "yes" if p.unread_dropped else "NO"),
        ("the server's memory budget (--memory-budget, MiB)", f"{p.budget_mib:.0f}"),
        ("the goal: at most the start (models loaded) plus the budget (MiB)", f"{p.rss_start_mib + p.budget_mib:.0f}"),
    ]


_PRESSURE_NOTES = """How to read it:
- The ping is the protocol's own `ping`, sent one after another on a connection of its own: its
  round trip includes every stall of the server's event loop. Before the fix one such prompt held
  the loop ~2 s (the emphasis parser backtracked quadratically, on the loop); ten delayed a ping by
  20.9 s. Now the parse is linear and runs on the server's I/O threads.
- The memory rows are this whole process (server, engine, the test clients and their buffers),
  sampled every 10 ms. The unread client gets 4 MiB per job; the server pauses its reader at 64 MiB
  unread (or the client's share of the budget: the budget over the connected clients, when that is
  less) and drops the connection instead of queuing a result that would take it past that. One
  budget (`--memory-budget`, default a quarter of the machine's memory; 512 MiB in this run) counts
  all clients' image stores (each at most 512 MiB of it), the frames they have not read, uploads in
  flight and the results of running jobs. The last row is the goal for both peaks: the whole
  process never above what it held at the start (the model loaded) plus the budget.
- The idle-connection flood in the section above predates the per-address bound on connections
  without `hello` (a quarter of `max_connections`: 4 of 16): with it, each new idle connection
  closes the address's oldest with 1008 and none is refused HTTP 503 (tests/hardening/test_floods.py).
"""


def _replace_section(title: str, body: str) -> None:
    """Put ``## title`` with ``body`` at the end of benchmarks/RESULTS.md, replacing an older one."""
    results = ROOT / "benchmarks" / "RESULTS.md"
    text = results.read_text(encoding="utf-8") if results.exists() else "# Benchmark results\n"
    start = text.find(f"\n## {title}\n")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + (text[end:] if end >= 0 else "\n")
    results.write_text(text.rstrip("\n") + f"\n\n## {title}\n\n{body}", encoding="utf-8")


def write_pressure_results(rows: list[tuple[str, str]], failures: list[str]) -> None:
    import platform

    _replace_section("Hardening under pressure", (
        f"`python tests/hardening/soak.py --pressure-only` on {platform.machine()} ({os.cpu_count()} cores, shared "
        f"with other work), CPU, the tiny random model, a real `EaselServer` in-process on loopback with default "
        f"settings (but `queue_size = 64`). Both pings were measured in the same run.\n\n{_table(rows)}\n\n"
        f"{'No failures.' if not failures else 'Failures: ' + '; '.join(failures[:5])}\n\n{_PRESSURE_NOTES}"))


def write_results(rows: list[tuple[str, str]], args: argparse.Namespace, failures: list[str]) -> None:
    import platform

    _replace_section("Hardening", (
        f"`python tests/hardening/soak.py --frames {args.frames} --connections {args.connections} "
        f"--cycles {args.cycles} --seed {args.seed}` on {platform.machine()} ({os.cpu_count()} cores, shared with other "
        f"work), CPU, the tiny random model; a real `EaselServer` in-process on loopback (default settings but "
        f"`queue_size = 64` for the fuzz and the cycles), the clients on an event loop thread of their own, the "
        f"well-behaved client being the plugins' `AsyncClient`. Counts, not timings: the seconds only say how long "
        f"a run takes.\n\n{_table(rows)}\n\n"
        f"{'No failures.' if not failures else 'Failures: ' + '; '.join(failures[:5])}\n\n{_NOTES}"))


if __name__ == "__main__":
    sys.exit(main())
