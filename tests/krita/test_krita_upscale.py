"""Upscale, host-free: where the result lands on the scaled document, what is read and sent
(``easel_krita.geometry`` + ``request``). The controller runs it on a real server in
``test_krita_upscale_controller.py``; real Krita in ``test_krita_control_e2e.py``."""
from __future__ import annotations

import json

import pytest

from easel_krita.geometry import Rect, scaled_rect, scaled_size
from easel_krita.request import Action, GenerationRequest, GenerationSettings, RequestError, plan


def test_scaled_sizes_round_like_the_server():
    assert scaled_size(97, 80, 2.0) == (194, 160)
    assert scaled_size(33, 21, 1.5) == (round(49.5), round(31.5)) == (50, 32)  # Python's round, as the server
    assert scaled_rect(Rect(10, 7, 33, 21), 1.5) == Rect(15, 10, 50, 32)


def test_whole_canvas_upscale_covers_the_scaled_canvas_exactly():
    request = plan(Action.UPSCALE, GenerationSettings(upscale_factor=2.0, upscale_strength=0.3), Rect(0, 0, 96, 80), None)
    assert request.input_rect == Rect(0, 0, 96, 80)
    assert request.scaled_canvas == Rect(0, 0, 192, 160)
    assert request.placement.region == request.placement.crop == Rect(0, 0, 192, 160)
    params = request.job_params()
    assert (params.upscale_factor, params.strength, params.batch_size, params.width) == (2.0, 0.3, 1, None)
    assert request.layer_name(5) == "Upscale ×2 · seed 5"


def test_selection_upscale_lands_on_the_selection_scaled_and_clips_at_the_edge():
    request = plan(Action.UPSCALE, GenerationSettings(upscale_factor=1.5), Rect(0, 0, 33, 21), Rect(10, 7, 23, 14))
    assert request.input_rect == Rect(10, 7, 23, 14)
    assert request.scaled_canvas == Rect(0, 0, 50, 32)
    region = request.placement.region
    assert region == Rect(15, 10, 34, 21)      # round(23 * 1.5) = 34 reaches one pixel past the edge
    assert request.placement.crop == Rect(15, 10, 34, 21).intersect(Rect(0, 0, 50, 32))
    assert GenerationRequest.from_dict(json.loads(json.dumps(request.to_dict()))) == request


def test_upscale_factor_and_strength_are_checked():
    with pytest.raises(RequestError, match="upscale factor must be between 1 and 4, got 5"):
        plan(Action.UPSCALE, GenerationSettings(upscale_factor=5.0), Rect(0, 0, 8, 8), None)
    with pytest.raises(RequestError, match="upscale strength must be between 0 and 1"):
        plan(Action.UPSCALE, GenerationSettings(upscale_strength=1.5), Rect(0, 0, 8, 8), None)
    # other actions never send an upscale factor (the server refuses one)
    assert plan(Action.REFINE, GenerationSettings(upscale_factor=3.0), Rect(0, 0, 8, 8), None).job_params().upscale_factor is None


# ---------------------------------------------------------------- the controller, against a real server
# STUB HOST (krita_fake_host.FakeCanvas) + real ``easel serve`` on the demo model; see krita_jobs_kit.

from krita_jobs_kit import connect, finish, painted_doc  # noqa: E402


def test_upscale_scales_the_document_and_adds_the_result_as_a_layer(backend):
    doc = painted_doc()
    odd = doc.layers[0].block(Rect(30, 25, 1, 1))
    controller, _ = connect(backend.url, doc, seed=2, upscale_factor=2.0)
    try:
        assert controller.start(Action.UPSCALE) is not None
        finish(controller)
        assert (doc.width, doc.height) == (192, 160)
        assert [layer.name for layer in doc.layers] == ["Background", "a lighthouse ×2 · seed 2"]
        result = doc.layers[1]
        assert set(result.data[3::4]) == {255}  # covers the whole scaled document
        assert doc.layers[0].block(Rect(60, 50, 1, 1)) == odd  # every layer scaled with it: nothing shifts
        # undo steps: (the preview layer, taken back) the scale, then the result layer
        assert [op for op, _ in doc.undo][-2:] == ["scale", "add"]
        entry = controller.history.latest()
        assert (entry.images[0].width, entry.images[0].height) == (192, 160)
        assert controller.view.message.startswith("Upscale done: seed 2")
    finally:
        controller.connection.close()


def test_upscale_of_a_selection_lands_on_it_in_the_scaled_document(backend):
    doc = painted_doc(Rect(16, 8, 40, 24))
    controller, _ = connect(backend.url, doc, seed=2, upscale_factor=1.5)
    try:
        controller.start(Action.UPSCALE)
        finish(controller)
        assert (doc.width, doc.height) == (144, 120)
        alpha = doc.layers[-1].data[3::4]
        rows = [y for y in range(doc.height) if any(alpha[y * doc.width:(y + 1) * doc.width])]
        cols = [x for x in range(doc.width) if any(alpha[y * doc.width + x] for y in rows)]
        assert (cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]) == (24, 12, 60, 36)
    finally:
        controller.connection.close()


def test_upscale_sends_no_references_or_regions_and_says_it_does_not_use_them(backend):
    # The server's upscale refuses references and regions (backend/params.py GUIDED_TASKS,
    # docs/protocol.md §11.5), so Upscale sends none and says so, before the click and with its result.
    from easel_krita.control import ControlSpec
    from krita_jobs_kit import add_layer

    doc = painted_doc()
    controller, _ = connect(backend.url, doc, seed=2, upscale_factor=1.5)
    try:
        assert controller.guides.unused_by_upscale() == ""
        photo = add_layer(doc, "Photo", Rect(4, 4, 10, 10))
        door = add_layer(doc, "Door", Rect(20, 20, 10, 10))
        doc.active = photo
        controller.mark_active_layer(ControlSpec("reference", 0.5))
        controller.guides.mark_region(doc, door, "a red door")
        sentence = ("Upscale does not use the reference layer 'Photo' and the region layer 'Door': "
                    "the server's upscale takes no references or regions.")
        assert controller.guides.unused_by_upscale() == sentence
        sent = []
        submit = controller.connection.submit
        controller.connection.submit = lambda job, images: (sent.append(job), submit(job, images))
        assert controller.start(Action.UPSCALE) is not None
        finish(controller)
        job, = sent
        assert job.task == "upscale" and not job.params.references and not job.params.regions
        assert controller.view.message.startswith("Upscale done: seed 2") and controller.view.message.endswith(sentence)
        # Generate on the same image still sends them (they are only left out of Upscale).
        assert controller.start(Action.GENERATE) is not None
        finish(controller)
        assert sent[-1].params.references and sent[-1].params.regions
        assert sentence not in controller.view.message
    finally:
        controller.connection.close()
