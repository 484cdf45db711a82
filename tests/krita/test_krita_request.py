"""The request model (host-free): one request per action, its SubmitJob, and its round trips."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from easel_krita.geometry import Margins, Rect
from easel_krita.request import Action, GenerationRequest, GenerationSettings, RequestError, plan
from protocol import ImageFormat, ImagePayload, Margins as WireMargins, Task, decode, encode

CANVAS = Rect(0, 0, 640, 480)
SETTINGS = GenerationSettings(prompt="a red fox in snow", negative_prompt="blurry", model="demo", seed=42,
                              steps=12, cfg_scale=6.5, sampler="euler", strength=0.4, batch_size=2, context=32,
                              margins=Margins(64, 0, 32, 16))


def _rgba(rect: Rect) -> ImagePayload:
    return ImagePayload.build(ImageFormat.RGBA8, rect.width, rect.height, bytes(rect.area * 4))


def _grey(rect: Rect) -> ImagePayload:
    return ImagePayload.build(ImageFormat.GREY8, rect.width, rect.height, b"\xff" * rect.area)


def test_generate_covers_the_selection_and_sends_no_image():
    request = plan(Action.GENERATE, SETTINGS, CANVAS, Rect(100, 50, 200, 100), native_size=512)
    assert request.placement.region == Rect(100, 50, 200, 100) == request.placement.crop
    job, images = request.submit("j1")
    assert job.task == Task.TXT2IMG and images == [] and job.images is None
    p = job.params
    assert (p.prompt, p.negative_prompt, p.model, p.seed, p.steps, p.cfg_scale, p.sampler, p.batch_size) == \
        ("a red fox in snow", "blurry", "demo", 42, 12, 6.5, "euler", 2)
    assert p.strength is None and p.margins is None and p.previews and p.result_format is ImageFormat.RGBA8
    assert (p.width, p.height) == request.size and p.width % 8 == 0


def test_generate_without_selection_covers_the_canvas():
    request = plan(Action.GENERATE, SETTINGS, CANVAS, None)
    assert request.placement.region == CANVAS == request.placement.crop


def test_refine_sends_the_region_image_with_strength():
    request = plan(Action.REFINE, SETTINGS, CANVAS, Rect(10, 10, 64, 64))
    image = _rgba(request.input_rect)
    job, images = request.submit("j2", image)
    assert job.task == Task.IMG2IMG and job.images == {"image": image.id} and images == [image]
    assert job.params.strength == 0.4
    assert (job.params.width, job.params.height) == (None, None)  # the server picks the working area


def test_fill_sends_context_and_mask_and_keeps_only_the_selection():
    selection = Rect(100, 100, 50, 40)
    request = plan(Action.FILL, SETTINGS, CANVAS, selection)
    assert request.placement.region == Rect(68, 68, 114, 104)
    assert request.placement.crop == selection
    image, mask = _rgba(request.input_rect), _grey(request.input_rect)
    job, images = request.submit("j3", image, mask)
    assert job.task == Task.INPAINT and job.images == {"image": image.id, "mask": mask.id}
    assert job.params.strength == 1.0 and set(images) == {image, mask}


def test_fill_needs_a_selection():
    with pytest.raises(RequestError, match="select the area to fill"):
        plan(Action.FILL, SETTINGS, CANVAS, None)


def test_expand_covers_the_grown_canvas_and_sends_the_old_one():
    request = plan(Action.EXPAND, SETTINGS, CANVAS, Rect(0, 0, 5, 5))
    assert request.placement.region == Rect(0, 0, 640 + 96, 480 + 16) == request.placement.crop
    assert request.input_rect == CANVAS
    job, _ = request.submit("j4", _rgba(CANVAS))
    assert job.task == Task.OUTPAINT and job.params.margins == WireMargins(64, 0, 32, 16)


def test_submit_checks_images():
    request = plan(Action.FILL, SETTINGS, CANVAS, Rect(0, 0, 10, 10))
    with pytest.raises(RequestError, match="needs the image"):
        request.submit("j")
    with pytest.raises(RequestError, match="needs a selection"):
        request.submit("j", _rgba(request.input_rect))
    with pytest.raises(RequestError, match="rgba8 image of"):
        request.submit("j", _rgba(Rect(0, 0, 3, 3)))


def test_submit_job_survives_the_wire():
    request = plan(Action.FILL, SETTINGS, CANVAS, Rect(20, 30, 40, 50))
    job, _ = request.submit("job-7", _rgba(request.input_rect), _grey(request.input_rect))
    assert decode(encode(job)) == job


def test_request_round_trips_through_json():
    for action in Action:
        request = plan(action, SETTINGS, CANVAS, Rect(20, 30, 40, 50), preprocessor="canny",
                       control_type="canny").with_seed(1234)
        again = GenerationRequest.from_dict(json.loads(json.dumps(request.to_dict())))
        assert again == request
        assert again.job_params() == request.job_params()


@given(st.text(max_size=50), st.one_of(st.none(), st.integers(0, 2 ** 32 - 1)), st.floats(0, 1),
       st.integers(1, 8), st.one_of(st.none(), st.integers(1, 200)))
def test_settings_round_trip(prompt, seed, strength, batch, steps):
    settings = GenerationSettings(prompt=prompt, seed=seed, strength=strength, batch_size=batch, steps=steps)
    assert GenerationSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings


def test_from_dict_rejects_malformed_input_with_sentences():
    good = plan(Action.GENERATE, SETTINGS, CANVAS, None).to_dict()
    with pytest.raises(RequestError, match="version"):
        GenerationRequest.from_dict({**good, "version": 99})
    with pytest.raises(RequestError, match="unknown action"):
        GenerationRequest.from_dict({**good, "action": "paint"})
    with pytest.raises(RequestError, match="region must be"):
        GenerationRequest.from_dict({**good, "region": [1, 2]})
    with pytest.raises(RequestError, match="steps must be a whole number"):
        GenerationSettings.from_dict({"steps": "ten"})
    assert GenerationSettings.from_dict({"unknown": 1}) == GenerationSettings()


@pytest.mark.parametrize("change, words", [
    ({"strength": 1.5}, "strength must be between 0 and 1"),
    ({"batch_size": 0}, "batch must be between 1 and 8"),
    ({"steps": 0}, "steps must be between 1 and 150"),
    ({"steps": 151}, "steps must be between 1 and 150, got 151"),
    ({"seed": -1}, "seed must be between"),
    ({"cfg_scale": float("nan")}, "CFG scale"),
    ({"region_mode": "apart"}, 'region_mode must be "separate" or "attention", got \'apart\''),
])
def test_settings_check_names_the_bad_value(change, words):
    with pytest.raises(RequestError, match=words):
        plan(Action.GENERATE, GenerationSettings(**change), CANVAS, None)


def test_random_seed_is_left_to_the_server_and_fixed_by_with_seed():
    request = plan(Action.GENERATE, GenerationSettings(seed=None), CANVAS, None)
    assert request.job_params().seed is None
    assert request.with_seed(99).job_params().seed == 99


def test_layer_name_has_prompt_and_seed():
    request = plan(Action.GENERATE, GenerationSettings(prompt="  a   very " + "long " * 20), CANVAS, None)
    name = request.layer_name(7)
    assert name.startswith("a very long") and name.endswith("· seed 7") and len(name) < 70
    assert plan(Action.REFINE, GenerationSettings(), CANVAS, None).layer_name(3) == "Refine · seed 3"


def test_live_flag_reaches_the_job():
    request = plan(Action.REFINE, SETTINGS, CANVAS, None, live=True)
    assert request.job_params().live is True


def test_keep_regions_apart_reaches_the_job_and_the_history():
    """The Regions list's "Keep regions apart": on (the default) sends ``region_mode`` "separate",
    off "attention"; the choice travels with the request through the history's JSON."""
    assert plan(Action.GENERATE, SETTINGS, CANVAS, None).job_params().region_mode == "separate"
    request = plan(Action.REFINE, GenerationSettings(region_mode="attention"), CANVAS, None)
    job, _ = request.submit("j", image=_rgba(request.input_rect))
    assert decode(encode(job)).params.region_mode == "attention"
    again = GenerationRequest.from_dict(json.loads(json.dumps(request.to_dict())))
    assert again.settings.region_mode == "attention"
    with pytest.raises(RequestError, match="region_mode must be text"):
        GenerationSettings.from_dict({"region_mode": 1})
