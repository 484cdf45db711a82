"""Shared pieces of the server tests: tiny real models, a real server on a loopback port in a
thread of its own, and a small synchronous websocket client driving a real ClientSession.

No test lives here (pytest collects nothing from this module); the server test modules import it.
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest
from websockets.sync.client import connect

from backend.config import ModelEntry, ServerConfig
from protocol import (
    ClientSession, ImageFormat, ImagePayload, JobCancelled, JobFailed, JobParams, JobResult, SubmitJob,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

#: How long any one wait in these tests may take before the test fails (not a timing claim:
#: a generous bound so that a hang fails instead of blocking the suite).
WAIT_S = 120.0

TERMINAL = (JobResult, JobFailed, JobCancelled)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A tiny base model and a tiny inpainting model (9-channel UNet), built once per session."""
    from backend.demo import build_tiny_model

    root = tmp_path_factory.mktemp("models")
    return {"base": build_tiny_model(root / "tiny", "base"), "inpaint": build_tiny_model(root / "tiny-inpaint", "inpaint")}


def tiny_config(tiny_models: dict[str, Path], tmp_path: Path, **overrides: Any) -> ServerConfig:
    models = (ModelEntry("tiny", str(tiny_models["base"])), ModelEntry("tiny-inpaint", str(tiny_models["inpaint"])))
    settings = dict(port=0, models=models, device="cpu", cache_dir=tmp_path / "cache", queue_size=4)
    settings.update(overrides)
    return ServerConfig(**settings)


def make_engine(config: ServerConfig) -> Any:
    from backend.engine import Engine

    return Engine(config)


@pytest.fixture(scope="module")
def engine(tiny_models, tmp_path_factory) -> Any:
    """One real engine per test module that imports this fixture: models load once, as they do in a
    long-running server."""
    return make_engine(tiny_config(tiny_models, tmp_path_factory.mktemp("engine")))


@pytest.fixture
def server(engine, tiny_models, tmp_path) -> Any:
    """A real server on the module's engine with :func:`tiny_config`'s settings."""
    with ServerThread(tiny_config(tiny_models, tmp_path), engine) as running:
        yield running


class ServerThread:
    """A real :class:`backend.server.EaselServer` on its own event loop thread.

    ``with ServerThread(config, engine) as server:`` starts it (``server.port`` is the bound port);
    leaving the block closes it the way a SIGTERM does.
    """

    def __init__(self, config: ServerConfig, engine: Any) -> None:
        from backend.server import EaselServer

        self.server = EaselServer(config, engine)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="test-server", daemon=True)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            try:
                await self.server.start()
            except BaseException as exc:
                self._error = exc
                raise
            finally:
                self._ready.set()
            await self.server.serve_until(self._stop)

        try:
            self.loop.run_until_complete(main())
        except BaseException:
            pass
        finally:
            self.loop.close()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server's loop and return its result (to read server state safely)."""
        async def wrapper() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(WAIT_S)

    def __enter__(self) -> "ServerThread":
        self._thread.start()
        self._ready.wait(WAIT_S)
        if self._error is not None:
            raise self._error
        return self

    def close(self) -> None:
        if self._thread.is_alive() and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(WAIT_S)

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Client:
    """A synchronous test client: a real websocket and a real :class:`ClientSession`."""

    def __init__(self, url: str, name: str = "test", token: str = "", client_id: str = "") -> None:
        # max_queue=None: the socket is always read (and the server's keepalive pings answered) even
        # while a test looks at another client; unread events wait in memory here.
        self.ws = connect(url, compression=None, max_size=8 * 1024 * 1024, open_timeout=WAIT_S, max_queue=None)
        self.session = ClientSession(name, "1.0", token=token, client_id=client_id)
        self.flush()
        self.welcome = self.next_events()[0]
        self.log: list[Any] = []

    def flush(self) -> None:
        for frame in self.session.data_to_send():
            self.ws.send(frame)

    def next_events(self, timeout: float = WAIT_S) -> list[Any]:
        """Events from the next frame (uploads the session owes are sent before returning)."""
        events = self.session.receive_frame(self.ws.recv(timeout))
        self.flush()
        return events

    def submit(self, job: SubmitJob, images: Iterable[ImagePayload] = ()) -> None:
        self.session.submit(job, images)
        self.flush()

    def cancel(self, job_id: str) -> None:
        self.session.cancel(job_id)
        self.flush()

    def send_raw(self, frame: bytes | str) -> None:
        self.ws.send(frame)

    def until(self, predicate: Callable[[Any], bool], timeout: float = WAIT_S) -> list[Any]:
        """Read events until one satisfies ``predicate``; returns every event read (that one last)."""
        deadline = time.monotonic() + timeout
        seen: list[Any] = []
        while True:
            for event in self.next_events(max(0.01, deadline - time.monotonic())):
                seen.append(event)
                self.log.append(event)
                if predicate(event):
                    return seen

    def until_done(self, job_id: str, timeout: float = WAIT_S) -> list[Any]:
        """Events until ``job_id`` ends (result, failure or cancel); the terminal event is last."""
        return self.until(lambda e: isinstance(e, TERMINAL) and e.job_id == job_id, timeout)

    def run(self, job: SubmitJob, images: Iterable[ImagePayload] = (), timeout: float = WAIT_S) -> list[Any]:
        self.submit(job, images)
        return self.until_done(job.job_id, timeout)

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def txt2img(job_id: str, **params: Any) -> SubmitJob:
    settings = dict(model="tiny", width=64, height=64, steps=2, seed=1, prompt="a test")
    settings.update(params)
    return SubmitJob(job_id, "txt2img", JobParams(**settings))


def rgba(width: int, height: int, seed: int = 0) -> ImagePayload:
    """A deterministic RGBA image with some structure (a gradient and a square)."""
    data = bytearray()
    for y in range(height):
        for x in range(width):
            inside = width // 4 <= x < 3 * width // 4 and height // 4 <= y < 3 * height // 4
            data += bytes(((x * 4 + seed) % 256, (y * 4) % 256, 200 if inside else 30, 255))
    return ImagePayload(ImageFormat.RGBA8, width, height, bytes(data))


def grey_mask(width: int, height: int, box: tuple[int, int, int, int]) -> ImagePayload:
    """A grey8 mask, 255 inside ``box`` (x0, y0, x1, y1), 0 elsewhere."""
    x0, y0, x1, y1 = box
    data = bytes(255 if x0 <= x < x1 and y0 <= y < y1 else 0 for y in range(height) for x in range(width))
    return ImagePayload(ImageFormat.GREY8, width, height, data)


class GatedEngine:
    """The real engine behind a gate: ``run`` waits until the test opens the gate for that job.

    Used ONLY by the deterministic concurrency tests (queue full, queue positions, cancel while
    queued), which need a job to hold the device for exactly as long as the test says. It still
    runs the real pipeline once the gate opens, and honours cancellation while it waits.
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.gates: dict[str, threading.Event] = {}
        self.started: list[str] = []

    def gate(self, prompt: str) -> threading.Event:
        return self.gates.setdefault(prompt, threading.Event())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def prepare(self, submit: SubmitJob, images: dict[str, ImagePayload]) -> Any:
        return _Gated(submit.params.prompt, self.engine.prepare(submit, images))

    def run(self, prepared: "_Gated", progress: Any) -> Any:
        from backend.errors import JobCancelledError

        self.started.append(prepared.gate_key)
        while not self.gate(prepared.gate_key).wait(0.01):
            if progress.cancelled():
                raise JobCancelledError(0, 0)
        return self.engine.run(prepared.inner, progress)


class _Gated:
    """The engine's prepared job plus the gate it waits on (keyed by the job's prompt)."""

    def __init__(self, gate_key: str, inner: Any) -> None:
        self.gate_key = gate_key
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
