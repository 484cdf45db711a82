"""Reference layers and region layers in live mode, against a real ``easel serve`` (demo models:
``demo-ip-adapter`` for the demo family, which takes regions) through the logging relay
``krita_proxy.DropProxy`` (what the plugin really submitted and uploaded), with the STUB HOST of
``krita_live_kit`` in place of Krita (real Krita: ``test_krita_live_e2e.py``, scenario
``live_guides.py``).

* A live job carries the reference (the layer's painted box, RGBA, its weight and range) and the
  regions (prompt; mask = the layer's alpha over the live area), like Refine.
* The images are named by content id: a stroke on the picture sends a new job that names the
  unchanged reference and mask again and uploads neither; a stroke on the region layer uploads its
  new mask; a new region prompt makes a job and uploads nothing.
* What the model cannot take is left out with one sentence: references when the server's model
  list has no adapter for the family (the list is trimmed here: the demo server has one), regions
  after the server answered a live job ``unsupported`` for them (that answer is injected here: every
  demo model takes regions).
"""
from __future__ import annotations

import pytest

from easel_krita import pixels
from easel_krita.control import ControlSpec
from easel_krita.geometry import Rect
from easel_krita.live_jobs import LiveJob
from easel_krita.protocol import ErrorCode, JobFailed
from krita_jobs_kit import add_layer
from krita_live_kit import live_doc, make, pump, uploaded  # noqa: F401  (make: a fixture)
from krita_proxy import DropProxy


@pytest.fixture
def proxy(backend):
    relay = DropProxy(backend.url)
    yield relay
    relay.close()


def sent(proxy: DropProxy, live) -> dict:
    return proxy.log.submitted[f"live-{live.jobs.session}-{live.stats.jobs_sent}"]


def next_result(controller, live, jobs_before: int) -> None:
    pump(controller, lambda: live.stats.jobs_sent == jobs_before + 1
         and live.stats.results_drawn[-1:] == [f"live-{live.jobs.session}-{jobs_before + 1}"] and not live.jobs.sending)


def alpha(layer, rect: Rect) -> bytes:
    return bytes(layer.block(rect)[3::4])


def test_live_jobs_carry_references_and_regions_uploaded_once_and_follow_region_marks(make, proxy):
    selection = Rect(16, 8, 64, 56)
    doc = live_doc(selection)
    photo = add_layer(doc, "Photo", Rect(70, 50, 20, 24), bytes((10, 200, 30, 255)))  # partly outside the area
    door = add_layer(doc, "Door", Rect(20, 10, 20, 30), bytes((0, 0, 255, 255)))
    sky = add_layer(doc, "Sky", Rect(0, 70, 10, 10))  # painted only outside the live area
    controller, host, live = make(doc, proxy.url)
    doc.active = photo
    assert controller.mark_active_layer(ControlSpec("reference", 0.6, 0.0, 0.8))
    controller.guides.mark_region(doc, door, "a red door")
    controller.guides.mark_region(doc, sky, "blue sky")
    doc.undo.clear()

    assert live.enable()
    pump(controller, lambda: live.stats.results_drawn and not live.jobs.sending)
    assert not live.view.error, live.view.status
    params, uploads = sent(proxy, live), proxy.log.uploads
    reference, = params["references"]
    assert (reference["weight"], reference["start"], reference["end"], reference["model"]) == (0.6, 0.0, 0.8, "")
    assert uploads[reference["image"]] == {"format": "rgba8", "width": 20, "height": 24,
                                           "data": pixels.swap_red_blue(photo.block(Rect(70, 50, 20, 24)))}
    region, = params["regions"]  # Sky covers nothing of the live area: left out
    mask = uploads[region["mask"]]
    assert region["prompt"] == "a red door"
    assert (mask["format"], mask["width"], mask["height"]) == ("grey8", selection.width, selection.height)
    assert mask["data"] == alpha(door, selection)
    # The reference layer is kept out of the picture live refines; the region layer is part of it.
    assert host.source_reads and all("Photo" not in seen and "Door" in seen for seen in host.source_reads)
    area = selection.area
    assert uploaded(controller) == area * 4 + 20 * 24 * 4 + area  # picture, reference, mask: once each

    # A stroke on the picture: the unchanged reference and mask are named again, not uploaded again.
    jobs, before = live.stats.jobs_sent, uploaded(controller)
    host.paint(doc, doc.layers[0], Rect(50, 40, 8, 8), bytes([0, 0, 250, 255]))
    next_result(controller, live, jobs)
    again = sent(proxy, live)
    assert again["references"][0]["image"] == reference["image"] and again["regions"][0]["mask"] == region["mask"]
    assert uploaded(controller) == before + area * 4  # the picture only

    # A stroke on the region layer: its new mask, uploaded once (the stub host's picture is its
    # bottom layer: it composites nothing, so the picture stays).
    jobs, before = live.stats.jobs_sent, uploaded(controller)
    host.paint(doc, door, Rect(40, 30, 10, 10), bytes((0, 0, 255, 255)))
    next_result(controller, live, jobs)
    moved = sent(proxy, live)["regions"][0]
    assert moved["mask"] != region["mask"] and proxy.log.uploads[moved["mask"]]["data"] == alpha(door, selection)
    assert uploaded(controller) == before + area

    # A new region prompt (an annotation, no undo step, no change signal): a job, nothing uploaded.
    jobs, before = live.stats.jobs_sent, uploaded(controller)
    controller.guides.set_region(doc, door.uid, "a blue door")
    next_result(controller, live, jobs)
    assert [r["prompt"] for r in sent(proxy, live)["regions"]] == ["a blue door"]
    assert uploaded(controller) == before
    # Unmarked: the next live job has no region.
    jobs = live.stats.jobs_sent
    controller.guides.set_region(doc, door.uid, None)
    next_result(controller, live, jobs)
    assert not sent(proxy, live).get("regions") and sent(proxy, live)["references"]
    live.disable()
    assert [what for what, _ in doc.undo] == ["paint", "paint"]  # only the painter's strokes


def test_what_the_model_cannot_take_is_left_out_with_one_sentence_not_a_failure_per_stroke(make, proxy):
    selection = Rect(16, 8, 64, 56)
    doc = live_doc(selection)
    photo = add_layer(doc, "Photo", Rect(20, 20, 10, 10), bytes((10, 200, 30, 255)))
    door = add_layer(doc, "Door", Rect(20, 10, 20, 30), bytes((0, 0, 255, 255)))
    controller, host, live = make(doc, proxy.url)
    doc.active = photo
    controller.mark_active_layer(ControlSpec("reference"))
    controller.guides.mark_region(doc, door, "a red door")
    # A server whose model list has no reference adapter for the model's family (trimmed: the
    # demo server lists demo-ip-adapter for it).
    family = controller.current_model().family
    controller._update(server_models=tuple(m for m in controller.view.server_models if m.kind != "reference"))
    notices = []
    live.subscribe(lambda view: notices.append(view.status))

    assert live.enable()
    pump(controller, lambda: live.stats.results_drawn and not live.jobs.sending)
    params = sent(proxy, live)
    assert not params.get("references") and [r["prompt"] for r in params["regions"]] == ["a red door"]
    reason = f"the server has no reference adapter for {family} models"
    assert f"Live goes on without the reference layers: {reason}." in notices
    assert not live.view.error and live.view.status.endswith(f"; without the reference layers: {reason}.")

    # The server answers a live job "unsupported" for its regions (injected: every demo model takes
    # them): live does not fail; the same state goes again at once, without the regions, said once.
    jobs = live.stats.jobs_sent
    record = LiveJob("live-refused", live.jobs.shown.request, None, 5)
    live.jobs.open[record.job_id], live.jobs._newest = record, record.job_id
    message = "model 'x' (Demo) takes no regions; SD 1.x, SD 2.x, SDXL and Flux.1 models do"
    assert live.jobs.take(JobFailed(record.job_id, ErrorCode.UNSUPPORTED, message, details={"field": "regions"}))
    next_result(controller, live, jobs)
    assert not sent(proxy, live).get("regions") and not live.view.error
    assert notices.count(f"Live goes on without the region layers: {message}.") == 1
    assert "without the region layers" in live.view.status
    # Further strokes go without them, with no new sentence and no failure.
    for n in range(2):
        jobs = live.stats.jobs_sent
        host.paint(doc, doc.layers[0], Rect(30 + n, 30, 4, 4), bytes([0, 0, 250, 255]))
        next_result(controller, live, jobs)
        assert not sent(proxy, live).get("regions") and not live.view.error
    assert notices.count(f"Live goes on without the region layers: {message}.") == 1
    # Another model (or the form naming one) is asked afresh.
    assert live.jobs.guides.why_not("regions", "other-model", controller.current_model()) == ""
    live.disable()
