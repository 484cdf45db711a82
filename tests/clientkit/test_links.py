"""clientkit.links against a small protocol server on loopback (the benchmark's, answering every job
with one image): what the host's main thread does, and one connection attempt at a time."""
from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path

import pytest

from clientkit.events import ConnectFailed
from clientkit.links import AsyncLink, ReconnectPolicy
from protocol import ClientSession, JobParams, JobResult, SubmitJob
from protocol.transport import Connected

WAIT_S = 60.0  # a bound so a hang fails; not a timing claim


@pytest.fixture(scope="module")
def server():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "ui_stall_bench.py"
    spec = importlib.util.spec_from_file_location("ui_stall_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    return bench.ResultServer(512)


def pump(link: AsyncLink, until, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out"
        link.tick(0.01)
        time.sleep(0.002)


def test_a_result_is_reassembled_and_checked_off_the_main_thread(server, monkeypatch):
    """Issue 12, defect 4: the frames of a result (decode, chunk reassembly, SHA-256 check) are
    handled on the link's network thread; the main thread, which ticks the link, gets the
    finished result."""
    threads: list[threading.Thread] = []
    receive = ClientSession.receive_frame

    def watched(self, frame):
        threads.append(threading.current_thread())
        return receive(self, frame)
    monkeypatch.setattr(ClientSession, "receive_frame", watched)
    events: list = []
    link = AsyncLink(events.append, client_name="test")
    try:
        link.connect(f"ws://127.0.0.1:{server.port}")
        pump(link, lambda: link.connected)
        link.submit(SubmitJob("j1", "txt2img", JobParams(prompt="p")), [])
        pump(link, lambda: any(isinstance(e, JobResult) for e in events))
        result = next(e for e in events if isinstance(e, JobResult))
        assert result.images[0].data == server.image.data and result.images[0].id == server.image.id
        assert len(threads) > 2 and threading.main_thread() not in threads
    finally:
        link.close()


def test_connect_again_replaces_the_attempts_at_the_old_address(server):
    """Issue 12, defect 1 at the link: after Connect to a new address, no attempt at the old one
    is reported any more, and the link is connected where it was asked to be."""
    events: list = []
    link = AsyncLink(events.append, client_name="test", policy=ReconnectPolicy(first_backoff=(0.05, 0.05)))
    try:
        link.connect("ws://127.0.0.1:9")  # nothing listens on the discard port
        pump(link, lambda: sum(isinstance(e, ConnectFailed) for e in events) >= 2)
        link.connect(f"ws://127.0.0.1:{server.port}")
        pump(link, lambda: any(isinstance(e, Connected) for e in events))
        del events[:]
        deadline = time.monotonic() + 0.5  # ten of the old address's retry delays
        while time.monotonic() < deadline:
            link.tick(0.01)
            time.sleep(0.002)
        assert not [e for e in events if isinstance(e, ConnectFailed)]
        assert link.connected and not link.connecting and link.url == f"ws://127.0.0.1:{server.port}"
    finally:
        link.close()
