"""A dropped connection never loses a result (issue 8, the plugin's half).

Host-free: the history's statuses. Then the controller (STUB HOST ``krita_fake_host.FakeCanvas``)
against a real ``easel serve`` through ``krita_proxy.DropProxy``, which aborts the sockets at a
chosen message: mid-job, right after the result, between the result's chunks and its
``job_finished``; a server killed mid-job (``JobLost``); the painter pressing Connect mid-job; the
image closed before the result came. Real Krita: ``test_krita_control_e2e.py``.
"""
from __future__ import annotations

import signal
from dataclasses import replace

import pytest

from easel_krita.geometry import Rect
from easel_krita.history import APPLIED, LOST, NOT_APPLIED, History, title
from easel_krita.request import Action, GenerationSettings, plan
from krita_jobs_kit import connect, finish, painted_doc, pump
from krita_proxy import DropProxy
from protocol import ImageFormat, ImagePayload

REQUEST = plan(Action.GENERATE, GenerationSettings(prompt="p"), Rect(0, 0, 8, 8), None)


def _image(value: int = 0) -> ImagePayload:
    return ImagePayload.build(ImageFormat.RGBA8, 8, 8, bytes([value]) * 256)


def test_history_statuses_and_lost_entries_without_images():
    history = History()
    kept = history.add(REQUEST, (5,), (_image(),), status=NOT_APPLIED, detail="the image was closed")
    assert kept.status_text() == "not applied: the image was closed" and kept.has_images
    lost = history.add(REQUEST, (), (), status=LOST, detail="the server restarted while it ran")
    assert lost.seeds == () and title(lost) == "p" and lost.status_text().startswith("lost: ")
    assert history.set_status(kept.id, APPLIED).status_text() == ""
    with pytest.raises(ValueError):
        history.add(REQUEST, (), (_image(),))  # a result needs its seeds
    with pytest.raises(ValueError):
        history.set_status(kept.id, "maybe")


def test_results_never_placed_keep_their_pixels_longest():
    history = History(max_entries=3, max_image_bytes=600)
    unplaced = history.add(REQUEST, (1,), (_image(1),), status=NOT_APPLIED, detail="closed")
    placed = [history.add(REQUEST, (i,), (_image(i),)) for i in (2, 3)]
    # over the byte budget: the placed ones lose their pixels first, oldest first
    entries = {e.id: e for e in history}
    assert entries[unplaced.id].has_images and not entries[placed[0].id].has_images
    # over the count: the oldest *placed* entry goes, not the only copy of a result
    history.add(REQUEST, (4,), ())
    assert unplaced.id in {e.id for e in history} and placed[0].id not in {e.id for e in history}


# ---------------------------------------------------------------- controller + real server


@pytest.fixture
def proxy(backend):
    relay = DropProxy(backend.url)
    yield relay
    relay.close()


def _slow(controller, steps: int = 60) -> None:
    controller.settings = replace(controller.settings, steps=steps, seed=21)


def test_a_job_running_when_the_connection_drops_resumes_and_lands_in_its_preview_layer(proxy):
    doc = painted_doc(Rect(10, 10, 60, 50))
    controller, _ = connect(proxy.url, doc)
    try:
        _slow(controller)
        proxy.drop_on("step_preview", count=2)
        job_id = controller.start(Action.GENERATE)
        pump(controller, lambda: proxy.dropped == 1)
        pump(controller, lambda: controller.view.connection == "reconnecting", timeout=20)
        assert job_id in controller.jobs  # its context (document, region, preview layer) is kept
        assert "waiting for the connection to the server to come back" in controller.view.progress_text
        finish(controller)
        # the reconnect presented the client id of the first welcome and named the open job
        assert len(proxy.log.hellos) == 2 and proxy.log.hellos[1]["client_id"] == proxy.log.welcomes[0] != ""
        assert proxy.log.hellos[1]["open_jobs"] == [job_id] and proxy.log.welcomes[1] == proxy.log.welcomes[0]
        assert [layer.name for layer in doc.layers] == ["Background", "a lighthouse · seed 21"]
        assert [op for op, _ in doc.undo] == ["add"]  # the preview layer became the result, as without a drop
        assert controller.history.latest().status == APPLIED
    finally:
        controller.connection.close()


@pytest.mark.parametrize("when", ["after", "before"])
def test_a_result_around_a_drop_is_applied(proxy, when):
    """``after``: the drop comes right after ``job_finished`` reached the plugin; ``before``: the
    result's chunks arrived but not its ``job_finished`` (the server resends the end after the
    reconnect, from the client's image store)."""
    doc = painted_doc()
    controller, _ = connect(proxy.url, doc, seed=8)
    try:
        proxy.drop_on("job_finished", when=when)
        controller.start(Action.GENERATE)
        pump(controller, lambda: proxy.dropped == 1)
        finish(controller)
        assert [layer.name for layer in doc.layers] == ["Background", "a lighthouse · seed 8"]
        assert len(controller.history) == 1 and controller.history.latest().status == APPLIED
        if when == "before":
            assert proxy.log.connections == 2
    finally:
        controller.connection.close()


def test_pressing_connect_mid_job_keeps_the_job(proxy):
    doc = painted_doc()
    controller, _ = connect(proxy.url, doc)
    try:
        _slow(controller)
        job_id = controller.start(Action.REFINE)
        pump(controller, lambda: controller.stats.previews_drawn >= 1)
        controller.connect(proxy.url)  # the painter presses Connect: a new client, same server
        finish(controller)
        assert proxy.log.hellos[-1]["client_id"] == proxy.log.welcomes[0] != ""
        assert job_id in proxy.log.hellos[-1]["open_jobs"]
        assert doc.layers[-1].name == "a lighthouse · seed 21" and controller.history.latest().status == APPLIED
    finally:
        controller.connection.close()


def test_a_job_the_restarted_server_does_not_have_is_lost_with_a_clear_status():
    from krita_backend import BackendServer

    first = BackendServer()
    doc = painted_doc(Rect(10, 10, 40, 40))
    controller, _ = connect(first.url, doc)
    second = None
    try:
        _slow(controller, steps=150)
        controller.start(Action.GENERATE)
        pump(controller, lambda: controller.stats.previews_drawn >= 1)
        first.proc.send_signal(signal.SIGKILL)  # no goodbye: the socket just dies
        first.proc.wait(10)
        second = BackendServer("--port", str(first.port))
        pump(controller, lambda: not controller.jobs, timeout=90)
        assert controller.view.message.startswith("Generate was lost: the server restarted while it ran.")
        entry = controller.history.latest()
        assert entry.status == LOST and not entry.has_images and entry.seeds == (21,)
        assert [layer.name for layer in doc.layers] == ["Background"]  # the preview layer is gone
        controller.apply_history(entry.id)
        assert controller.view.message.startswith("That job was lost")
    finally:
        controller.connection.close()
        first.stop()
        if second is not None:
            second.stop()


def test_a_result_for_a_closed_image_is_kept_and_applied_to_the_current_one(backend):
    from krita_fake_host import FakeDoc

    doc = painted_doc(Rect(20, 10, 30, 30))
    controller, host = connect(backend.url, doc)
    try:
        _slow(controller, steps=20)
        controller.start(Action.GENERATE)
        pump(controller, lambda: controller.stats.previews_drawn >= 1)
        doc.open = False  # the painter closes the image while the job runs
        pump(controller, lambda: not controller.jobs)
        entry = controller.history.latest()
        assert entry.status == NOT_APPLIED and entry.detail == "the image was closed" and entry.has_images
        assert controller.view.message.startswith("Generate finished but was not placed: the image was closed.")
        other = painted_doc()
        host.doc = other
        controller.apply_history(entry.id)
        pump(controller, lambda: len(other.layers) == 2)
        assert other.layers[1].name == "a lighthouse · seed 21"
        assert controller.history.get(entry.id).status == APPLIED
        assert controller.view.message == "Applied a lighthouse · seed 21 to the current image as a new layer."
        assert isinstance(other, FakeDoc)
    finally:
        controller.connection.close()


def test_switching_servers_mid_job_marks_the_job_lost(backend):
    from krita_backend import BackendServer

    doc = painted_doc()
    controller, _ = connect(backend.url, doc)
    other = BackendServer()
    try:
        _slow(controller, steps=150)
        controller.start(Action.GENERATE)
        pump(controller, lambda: controller.stats.previews_drawn >= 1)
        controller.connect(other.url)  # the painter enters another server's address
        pump(controller, lambda: not controller.jobs)
        assert controller.view.message.startswith(f"Generate was lost: Easel switched to the server at {other.url}")
        assert controller.history.latest().status == LOST and [layer.name for layer in doc.layers] == ["Background"]
        pump(controller, lambda: controller.view.connection == "online")
    finally:
        controller.connection.close()
        other.stop()
