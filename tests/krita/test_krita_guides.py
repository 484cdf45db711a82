"""Reference layers and region layers: their marks, how a request carries them, and — with the
STUB HOST (krita_fake_host) and a real ``easel serve`` behind the logging proxy — the SubmitJob and
the uploaded pixels the controller produces. (Until the server runs references and regions it
answers such jobs ``unsupported``: these tests check what the plugin sends, not the result.) The
same runs in real Krita in ``test_krita_guides_e2e.py``."""
from __future__ import annotations

import json

import pytest

from easel_krita import pixels
from easel_krita.control import ControlError, ControlInput, ControlSpec, plan_controls
from easel_krita.geometry import Rect
from easel_krita.references import plan_references
from easel_krita.regions import (
    ANNOTATION_TYPE, RegionInput, RegionMarkError, check_prompt, decode_annotation, encode_annotation,
)
from easel_krita.request import Action, GenerationRequest, GenerationSettings, plan
from protocol import ImageFormat, ImagePayload, ModelInfo

FACE = ModelInfo("ipa-face-sd15", "IP-Adapter face", "reference", "sd15", control_type="face")
CANNY = ModelInfo("canny15", "Canny", "controlnet", "sd15", control_type="canny")


def test_region_marks_round_trip_and_a_broken_annotation_gives_what_parses():
    marks = {"{b}": "a red door", "{a}": "a cat, sleeping"}
    data = encode_annotation(marks)
    assert decode_annotation(data) == marks and data == encode_annotation(dict(reversed(marks.items())))
    assert decode_annotation(b"not json") == {} and decode_annotation(None) == {}
    body = json.loads(data)
    body["layers"]["{c}"] = {"prompt": ""}
    body["layers"]["{d}"] = "no map"
    assert decode_annotation(json.dumps(body).encode()) == marks
    assert check_prompt("  a   cat ") == "a cat"
    with pytest.raises(RegionMarkError, match="type the region's prompt first"):
        check_prompt("   ")


def test_references_are_control_layers_of_a_reference_type_kept_apart_from_controlnets():
    layers = [("Photo", "{p}", ControlSpec("reference", 0.6, 0.0, 0.8)), ("Face", "{f}", ControlSpec("reference_face")),
              ("Off", "{o}", ControlSpec("reference", 0.0)), ("Edges", "{e}", ControlSpec("canny"))]
    refs = plan_references(layers, (FACE, CANNY), "sd15")
    assert [(r.layer_name, r.model, r.spec.strength) for r in refs] == [("Photo", "", 0.6), ("Face", FACE.id, 1.0)]
    assert [c.layer_name for c in plan_controls(layers, (FACE, CANNY), "sd15")] == ["Edges"]
    with pytest.raises(ControlError, match="reference layer 'Face': the server has no face reference adapter for sdxl"):
        plan_references(layers, (FACE, CANNY), "sdxl")


def test_a_request_with_references_and_regions_round_trips_and_old_requests_still_read():
    request = plan(Action.GENERATE, GenerationSettings(prompt="a garden"), Rect(0, 0, 64, 64), None)
    ref = ControlInput("Photo", "{p}", ControlSpec("reference", 0.6), "")
    guided = GenerationRequest(**{**request.__dict__, "references": (ref,),
                                  "regions": (RegionInput("Door", "{d}", "a red door"),)})
    data = json.loads(json.dumps(guided.to_dict()))
    assert GenerationRequest.from_dict(data) == guided
    del data["references"], data["regions"]
    assert GenerationRequest.from_dict(data) == request


# ---------------------------------------------------------------- the controller, against a real server

from easel_krita.clientkit.guides import REFERENCE_MAX_SIDE  # noqa: E402
from krita_jobs_kit import add_layer, connect, painted_doc, pump  # noqa: E402
from krita_proxy import DropProxy  # noqa: E402


@pytest.fixture
def proxy(backend):
    relay = DropProxy(backend.url)
    yield relay
    relay.close()


@pytest.fixture
def controllers():
    made = []
    yield made
    for controller in made:
        controller.connection.close()


def _alpha_over(layer, rect: Rect) -> bytes:
    return bytes(layer.block(rect)[3::4])


def test_a_reference_layer_and_two_regions_make_one_job_with_their_pixels_and_prompts(proxy, controllers):
    selection = Rect(8, 8, 80, 64)
    doc = painted_doc(selection)
    photo = add_layer(doc, "Photo", Rect(60, 50, 30, 20), bytes((10, 200, 30, 255)))
    door = add_layer(doc, "Door", Rect(10, 10, 20, 30), bytes((0, 0, 255, 255)))
    cat = add_layer(doc, "Cat", Rect(50, 12, 30, 20), bytes((0, 255, 0, 128)))  # half-covered: a soft mask
    outside = add_layer(doc, "Sky", Rect(0, 0, 6, 6))  # painted only outside the selection
    controller, host = connect(proxy.url, doc, seed=5)
    controllers.append(controller)
    doc.active = photo
    assert controller.mark_active_layer(ControlSpec("reference", 0.6, 0.0, 0.8))
    for layer, prompt in ((door, "a red door"), (cat, "a sleeping  cat"), (outside, "blue sky")):
        controller.guides.mark_region(doc, layer, prompt)
    assert doc.modified and ANNOTATION_TYPE in doc.annotations
    assert [(r.name, r.prompt) for r in controller.guides.region_layers(doc)] == [
        ("Door", "a red door"), ("Cat", "a sleeping cat"), ("Sky", "blue sky")]

    reads = len(host.visible_reads)
    job_id = controller.start(Action.REFINE)
    assert job_id is not None, controller.view.message
    request = controller.jobs[job_id].request
    pump(controller, lambda: not controller.jobs, 120)
    sent = proxy.log.submitted[job_id]
    uploads = proxy.log.uploads
    assert sent["prompt"] == "a lighthouse" and sent["controls"] == []
    # the reference: the Photo layer's painted box, RGBA, weight and range from its marking, default adapter
    [reference] = sent["references"]
    assert (reference["weight"], reference["start"], reference["end"], reference["model"]) == (0.6, 0.0, 0.8, "")
    expected = pixels.swap_red_blue(photo.block(Rect(60, 50, 30, 20)))
    assert uploads[reference["image"]] == {"format": "rgba8", "width": 30, "height": 20, "data": expected}
    # the regions: each layer's alpha over the Refine's input (the selection), grey8; Sky covers none of it
    assert [r["prompt"] for r in sent["regions"]] == ["a red door", "a sleeping cat"]
    for region, layer in zip(sent["regions"], (door, cat)):
        upload = uploads[region["mask"]]
        assert (upload["format"], upload["width"], upload["height"]) == ("grey8", 80, 64)
        assert upload["data"] == _alpha_over(layer, selection)
        assert region["references"] == []
    assert set(uploads[sent["regions"][1]["mask"]]["data"]) == {0, 128}
    # the reference layer is kept out of the picture Refine reads; the regions are part of it
    assert all("Photo" not in seen and "Door" in seen for seen in host.visible_reads[reads:])
    # the request (what the history keeps) names the layers that guided
    assert [r.layer_name for r in request.references] == ["Photo"]
    assert [r.layer_name for r in request.regions] == ["Door", "Cat", "Sky"]


def test_generate_sends_masks_at_the_generation_size_and_big_references_are_bounded(proxy, controllers):
    doc = painted_doc(None, 1200, 200)
    photo = add_layer(doc, "Photo", Rect(0, 0, 1200, 100), bytes((1, 2, 3, 255)))
    door = add_layer(doc, "Door", Rect(0, 0, 600, 200))
    controller, host = connect(proxy.url, doc, seed=6)
    controllers.append(controller)
    doc.active = photo
    controller.mark_active_layer(ControlSpec("reference"))
    controller.guides.mark_region(doc, door, "a red door")
    job_id = controller.start(Action.GENERATE)
    width, height = controller.jobs[job_id].request.size
    pump(controller, lambda: not controller.jobs, 120)
    sent, uploads = proxy.log.submitted[job_id], proxy.log.uploads
    mask = uploads[sent["regions"][0]["mask"]]
    assert (mask["width"], mask["height"]) == (width, height) == (sent["width"], sent["height"])
    expected = host.scale_rgba(bytes(door.data), 1200, 200, width, height)[3::4]
    assert mask["data"] == expected
    picture = uploads[sent["references"][0]["image"]]
    assert (picture["width"], picture["height"]) == (REFERENCE_MAX_SIDE, 85)


def test_too_many_references_or_an_empty_one_are_refused_with_a_sentence_before_sending(proxy, controllers):
    doc = painted_doc(None)
    controller, host = connect(proxy.url, doc)
    controllers.append(controller)
    layers = [add_layer(doc, f"Ref {i}", Rect(i, i, 4, 4)) for i in range(5)]
    for layer in layers:
        doc.active = layer
        controller.mark_active_layer(ControlSpec("reference"))
    assert controller.start(Action.GENERATE) is None
    assert "5 reference images are in use, the server takes at most 4 in one job" in controller.view.message
    controller.set_control(layers[0].uid, ControlSpec("reference", 0.0))  # weight 0: left out
    layers[1].data[:] = bytes(len(layers[1].data))  # emptied after marking
    job_id = controller.start(Action.GENERATE)
    pump(controller, lambda: not controller.jobs, 120)
    assert "The reference 'Ref 1' has no pixels" in controller.view.message and job_id not in proxy.log.submitted


def test_unmarking_a_region_and_changing_its_prompt(backend, controllers):
    doc = painted_doc(None)
    door = add_layer(doc, "Door", Rect(10, 10, 20, 30))
    controller, host = connect(backend.url, doc)
    controllers.append(controller)
    with pytest.raises(RegionMarkError):
        controller.guides.mark_region(doc, door, "")
    controller.guides.mark_region(doc, door, "a door")
    assert controller.guides.set_region(doc, door.uid, "a blue door") == "Door"
    assert decode_annotation(doc.annotations[ANNOTATION_TYPE]) == {door.uid: "a blue door"}
    controller.guides.set_region(doc, door.uid, None)
    assert controller.guides.region_layers(doc) == [] and door in doc.layers
