"""The plugins' side of a server download, over the real links: clientkit's DownloadTracker drives
an AsyncLink (Krita's) and a ThreadLink (Blender's) against a real server (``allow_downloads``, a
ComfyUI models folder) whose files come from the hub-shaped loopback server (``HF_ENDPOINT``).
The missing base model is named with the server's offer; the download runs with progress; the
tracker asks for the list again and the new model is in it, so nothing is missing any more."""
from __future__ import annotations

import time

import pytest

from clientkit import downloads as dl
from clientkit.links import AsyncLink, ThreadLink
from protocol import DownloadProgress, ModelList
from protocol.transport import Connected
from hub_presets import SD15, SD15_ID, preset_hub
from test_download_server import start

WAIT_S = 120.0  # a bound so a hang fails; not a timing claim


@pytest.fixture
def hub(monkeypatch):
    server = preset_hub(pace=0.01)  # a few progress events
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield server
    server.close()


def wait(step, until, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out"
        step()
        time.sleep(0.005)


def listings(events: list) -> list[ModelList]:
    return [e for e in events if isinstance(e, ModelList)]


def test_the_async_link_downloads_the_missing_base_model(hub, tmp_path):
    events: list = []
    views: list = []
    with start(tmp_path) as server:
        link = AsyncLink(lambda e: None, client_name="test")
        tracker = dl.DownloadTracker(link.download, link.list_models, views.append)

        def take(event) -> None:
            events.append(event)
            tracker.handle(event)
        link.on_event = take
        try:
            link.connect(server.url)
            wait(link.tick, lambda: link.connected)
            link.list_models()
            wait(link.tick, lambda: listings(events))
            missing = dl.check(tracker.listing, dl.base_model())
            assert missing.offer.name == "sd15" and "demo model" in missing.message
            tracker.start(missing.offer)
            wait(link.tick, lambda: not tracker.running)
            assert tracker.view.state == dl.FINISHED, tracker.view.text
            progress = [e for e in events if isinstance(e, DownloadProgress)]
            assert progress and progress[-1].done == progress[-1].total == len(hub.files[SD15])
            running = [v for v in views if v is not None and v.running and v.fraction > 0]
            assert running and running[-1].fraction == 1.0 and "of" in running[-1].text
            wait(link.tick, lambda: len(listings(events)) >= 2)  # the tracker asked for the list again
            assert dl.check(tracker.listing, dl.base_model()) is None
            assert any(m.id == SD15_ID and m.family == "sd15" for m in listings(events)[-1].models)
        finally:
            link.close()


def test_the_thread_link_downloads_and_a_second_request_is_refused_while_one_runs(hub, tmp_path):
    hub.pace = 0.05
    with start(tmp_path) as server:
        link = ThreadLink(server.url, client_name="test")
        events: list = []
        tracker = dl.DownloadTracker(link.download, link.list_models)

        def poll() -> None:
            for event in link.poll():
                events.append(event)
                tracker.handle(event)
        try:
            link.list_models()
            wait(poll, lambda: listings(events))
            offer = dl.check(tracker.listing, dl.base_model()).offer
            tracker.start(offer)
            with pytest.raises(RuntimeError, match="still downloading"):
                tracker.start(offer)
            wait(poll, lambda: tracker.view.fraction > 0)
            wait(poll, lambda: not tracker.running)
            assert tracker.view.state == dl.FINISHED, tracker.view.text
            wait(poll, lambda: len(listings(events)) >= 2)
            assert dl.check(tracker.listing, dl.base_model()) is None
            assert any(isinstance(e, Connected) for e in events)
        finally:
            link.close()


def test_a_server_without_downloads_is_answered_with_the_command(hub, tmp_path):
    with start(tmp_path, allow=False) as server:
        link = ThreadLink(server.url, client_name="test")
        events: list = []
        try:
            link.list_models()
            wait(lambda: events.extend(link.poll()), lambda: listings(events))
            missing = dl.check(listings(events)[-1], dl.base_model())
            assert missing.offer is None and missing.command == "easel download sd15"
        finally:
            link.close()
