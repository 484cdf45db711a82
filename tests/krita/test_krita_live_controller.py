"""Live mode (``easel_krita.live``) against a real ``easel serve`` (demo model), with a STUB HOST in
place of Krita: ``LiveFakeCanvas`` extends the in-memory ``FakeCanvas`` with the live layer, which
it adds, writes and removes without undo entries, as the Krita adapter does (real Krita is checked
in ``test_krita_live_e2e.py``). Its change signal fires for every undoable operation, like the Undo
History model's reset in Krita. The asyncio loop is driven by ``Connection.tick()``.

Also the host-free pieces: live settings and the few-step schedules.
"""
from __future__ import annotations

from typing import Any

import pytest

from easel_krita.geometry import Rect
from easel_krita.live import LIVE_LAYER_NAME, LiveSettings, live_schedule
from easel_krita.protocol import JobResult, ModelInfo
from easel_krita.request import RequestError
from krita_live_kit import H, W, live_doc, live_layer, make, pump, settle, uploaded  # noqa: F401  (make: a fixture)


def test_live_mode_follows_changes_and_turning_it_off_leaves_the_document_as_it_was(make):
    doc = live_doc()
    controller, host, live = make(doc)
    assert live.enable()
    layer = live_layer(doc)
    assert doc.layers[-1] is layer and layer.locked  # on top of the stack, the painter's layers untouched
    pump(controller, lambda: len(live.stats.results_drawn) == 1)
    assert live.view.can_keep and not live.view.error, live.view.status
    assert bytes(layer.data) != bytes(W * H * 4)  # the live image is in the live layer
    # The source is the painter's picture: the live layer was hidden for every read.
    assert host.source_reads and all(LIVE_LAYER_NAME not in visible for visible in host.source_reads)

    for i in range(3):  # three strokes, each waited for
        host.paint(doc, doc.layers[0], Rect(10 + 20 * i, 10, 8, 8), bytes([200, 30, 30, 255]))
        pump(controller, lambda: len(live.stats.results_drawn) == i + 2)
    assert live.stats.changes == 3 and live.stats.jobs_sent == 4
    settle(controller, 0.3)
    assert live.stats.jobs_sent == 4  # drawing the live layer never triggered another job

    painter_layers = [(layer.name, bytes(layer.data)) for layer in doc.layers if layer.name != LIVE_LAYER_NAME]
    live.disable()
    assert [(layer.name, bytes(layer.data)) for layer in doc.layers] == painter_layers
    assert [what for what, _ in doc.undo] == ["paint", "paint", "paint"]  # only the painter's own steps
    assert not live.view.enabled and not layer.attached
    host.paint(doc, doc.layers[0], Rect(0, 0, 4, 4), bytes([1, 1, 1, 255]))
    settle(controller, 0.3)
    assert live.stats.jobs_sent == 4 and LIVE_LAYER_NAME not in [layer.name for layer in doc.layers]


def test_only_the_newest_result_reaches_the_live_layer(make):
    doc = live_doc()
    controller, host, live = make(doc)
    # Hold back the first job's result until a newer job was sent: it then crosses that request.
    held: list[Any] = []
    router = controller.connection.on_event

    def holding(event: Any) -> None:
        if isinstance(event, JobResult) and not held and live.stats.jobs_sent == 1:
            held.append(event)
            return
        router(event)
    controller.connection.on_event = holding

    assert live.enable()
    pump(controller, lambda: held)
    first = held[0].job_id
    host.paint(doc, doc.layers[0], Rect(30, 30, 10, 10), bytes([10, 220, 10, 255]))
    pump(controller, lambda: live.stats.jobs_sent == 2)
    previews_before = len(live.stats.previews_from)
    router(held[0])  # the older result arrives after the newer request went out
    assert first in live.stats.dropped_results
    pump(controller, lambda: live.stats.results_drawn)
    second = f"live-{live.jobs.session}-2"
    assert live.stats.results_drawn == [second] and second != first
    assert first not in live.stats.previews_from[previews_before:]  # nor a preview of it, once a newer job was sent
    assert live.jobs.shown.job_id == second
    crop = live.jobs.shown.rect
    assert live_layer(doc).block(crop) == live.jobs.shown.bgra  # the layer holds exactly the newest result

    # A burst of changes, faster than the jobs: whatever the server superseded, the last change's
    # job is the one whose result the layer ends with.
    for i in range(6):
        host.paint(doc, doc.layers[0], Rect(5 * i, 60, 4, 4), bytes([i * 40, 0, 200, 255]))
        settle(controller, 0.07)
    # The last change is read and sent (under load a read may still run, and a change that came
    # meanwhile is read once more after it): only then is the newest job known.
    pump(controller, lambda: live.jobs.timer is None and not live.jobs.sending)
    sent = live.stats.jobs_sent
    newest = f"live-{live.jobs.session}-{sent}"
    pump(controller, lambda: live.stats.results_drawn[-1] == newest)
    settle(controller, 0.5)
    assert live.stats.results_drawn[-1] == newest and live.jobs.shown.job_id == newest
    drawn = [int(job_id.rsplit("-", 1)[1]) for job_id in live.stats.results_drawn]
    assert drawn == sorted(drawn)  # never an older result after a newer one
    assert live_layer(doc).block(live.jobs.shown.rect) == live.jobs.shown.bgra


def test_an_unchanged_canvas_is_not_sent_again(make):
    selection = Rect(20, 16, 40, 32)
    doc = live_doc(selection)
    controller, host, live = make(doc)
    assert live.enable()
    pump(controller, lambda: live.stats.results_drawn)
    first_upload = uploaded(controller)
    assert first_upload == selection.area * 4  # the selection's bounds, once

    host.changed(doc, "rename")  # an undoable change that leaves the pixels as they were
    settle(controller, 0.3)
    host.paint(doc, doc.layers[0], Rect(0, 0, 8, 8), bytes([0, 0, 0, 255]))  # outside the selection
    settle(controller, 0.3)
    assert live.stats.changes == 2 and live.stats.unchanged == 2 and live.stats.jobs_sent == 1
    assert uploaded(controller) == first_upload

    live.disable()
    assert live.enable()  # the same picture again: a job, but the server holds its image
    pump(controller, lambda: len(live.stats.results_drawn) == 2)
    assert uploaded(controller) == first_upload

    host.paint(doc, doc.layers[0], Rect(30, 20, 4, 4), bytes([0, 250, 0, 255]))  # inside: sent
    pump(controller, lambda: len(live.stats.results_drawn) == 3)
    assert uploaded(controller) == first_upload + selection.area * 4
    layer = live_layer(doc)
    alpha = bytes(layer.data[3::4])
    assert sum(alpha) == 255 * selection.area  # the live image covers the selection only


def test_keep_copies_the_live_result_into_a_new_layer_under_the_live_layer(make):
    doc = live_doc()
    controller, host, live = make(doc)
    assert live.keep() is None and live.view.error  # nothing to keep yet
    assert live.enable()
    pump(controller, lambda: live.stats.results_drawn)
    kept = live.keep()
    assert kept is not None
    names = [layer.name for layer in doc.layers]
    assert names[-1] == LIVE_LAYER_NAME and names[-2] == kept.name and kept.name.endswith("seed 5 (live)")
    assert bytes(kept.data) == bytes(live_layer(doc).data)
    assert [what for what, _ in doc.undo] == ["add"]  # one undo step
    # Keeping is a change of the document like any other (in Krita it changes the picture the
    # next live job reads; the stub's picture is its bottom layer, so here nothing is sent again).
    pump(controller, lambda: live.stats.changes == 1 and live.stats.unchanged == 1)
    live.disable()
    assert [layer.name for layer in doc.layers] == ["Background", "Paint", kept.name]


def test_live_settings_and_few_step_schedules():
    with pytest.raises(RequestError, match="live strength"):
        LiveSettings(strength=0.0).check()
    with pytest.raises(RequestError, match="live steps"):
        LiveSettings(steps=0).check()
    plain = ModelInfo("sd15", "Stable Diffusion 1.5", "base", "sd15")
    assert live_schedule(plain, LiveSettings(strength=0.5, steps=4)) == live_schedule(None, LiveSettings(0.5, 4))
    schedule = live_schedule(plain, LiveSettings(strength=0.5, steps=4))
    assert (schedule.kind, schedule.sampler, schedule.steps, schedule.cfg_scale) == ("default", "", 8, None)
    assert live_schedule(plain, LiveSettings(strength=0.3, steps=4)).steps == 14  # int(14 * 0.3) = 4 steps run
    assert live_schedule(plain, LiveSettings(strength=0.05, steps=50)).steps == 150  # the server's limit, not 1000
    lcm = live_schedule(ModelInfo("dreamshaper-lcm", "DreamShaper LCM", "base", "sd15"), LiveSettings(0.5, 4))
    assert (lcm.kind, lcm.sampler, lcm.cfg_scale) == ("lcm", "lcm", 1.5)
    turbo = live_schedule(ModelInfo("sdxl", "SDXL Turbo", "base", "sdxl"), LiveSettings(1.0, 2))
    assert (turbo.kind, turbo.sampler, turbo.steps, turbo.cfg_scale) == ("turbo", "euler_a", 2, 1.0)
    lightning = live_schedule(ModelInfo("juggernaut-lightning", "", "base", "sdxl"), LiveSettings(0.5, 4))
    assert (lightning.kind, lightning.sampler) == ("lightning", "euler")
