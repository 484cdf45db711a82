"""Fixtures of the hardening suite: one engine on tiny random models for the session, servers with
settings per test, and a recorder of the files the process opens (Python audit events).

Everything is real: the websocket server, the engine, the diffusers pipelines (tiny random models
built offline, CPU). Where a test injects a fault (an exception inside the pipeline, a stalled
socket), the test says so.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

HERE = Path(__file__).resolve().parent
for path in (str(HERE), str(HERE.parents[1] / "tests" / "backend"), str(HERE.parents[1])):
    if path not in sys.path:
        sys.path.insert(0, path)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from soak import ServerUnderTest  # noqa: E402
from test_server_harness import make_engine, tiny_config, tiny_models  # noqa: E402,F401 - tiny_models is a fixture


@pytest.fixture(scope="session")
def engine(tiny_models, tmp_path_factory) -> Any:  # noqa: F811 - the fixture imported above
    """One real engine (tiny + tiny-inpaint) for the whole suite: models load once."""
    return make_engine(tiny_config(tiny_models, tmp_path_factory.mktemp("hardening-engine")))


@pytest.fixture
def serve(engine, tiny_models, tmp_path) -> Any:  # noqa: F811
    """``with serve(**settings) as server:`` a real server on the session's engine (or ``engine=``)
    with :func:`tiny_config`'s settings plus ``settings``. On the way out it checks that the server
    logged no error and its loop saw no unhandled exception."""
    @contextlib.contextmanager
    def start(engine_: Any = None, allow_errors: bool = False, **settings: Any) -> Iterator[ServerUnderTest]:
        with ServerUnderTest(tiny_config(tiny_models, tmp_path, **settings), engine_ or engine) as server:
            yield server
        if not allow_errors:
            assert server.errors == [], server.errors
    return start


class OpenedFiles:
    """Paths the process opened while the ``with`` block ran (every thread; Python's ``open``
    audit event, which C-level ``io.open`` also raises)."""

    _active: list["OpenedFiles"] = []
    _lock = threading.Lock()
    _installed = False

    def __init__(self) -> None:
        self.paths: list[str] = []

    @classmethod
    def _hook(cls, event: str, args: tuple) -> None:
        if event == "open" and cls._active and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            for recorder in list(cls._active):
                recorder.paths.append(path)

    def __enter__(self) -> "OpenedFiles":
        with OpenedFiles._lock:
            if not OpenedFiles._installed:  # an audit hook cannot be removed: install one, once
                sys.addaudithook(OpenedFiles._hook)
                OpenedFiles._installed = True
            OpenedFiles._active.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        with OpenedFiles._lock:
            OpenedFiles._active.remove(self)

    def under(self, folder: str | Path) -> list[str]:
        root = os.path.realpath(folder)
        return [p for p in self.paths if os.path.realpath(p) == root or os.path.realpath(p).startswith(root + os.sep)]


@pytest.fixture
def opened_files() -> type[OpenedFiles]:
    return OpenedFiles
