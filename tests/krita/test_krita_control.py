"""Control layers, host-free: markings, the document annotation, picking a ControlNet for the
model's family, and the control units a request sends (``easel_krita.control`` + ``request``)."""
from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from easel_krita.layer_marks import ANNOTATION_VERSION
from easel_krita.control import (
    MAX_CONTROL_LAYERS, ControlError, ControlInput, ControlSpec, control_type, decode_annotation,
    encode_annotation, offered_types, pick_controlnet, plan_controls, preprocessor_type, preprocessors_for,
)
from easel_krita.geometry import Rect
from easel_krita.request import Action, GenerationRequest, GenerationSettings, RequestError, plan
from protocol import ImageFormat, ImagePayload, ModelInfo

SD15_CANNY = ModelInfo("canny15", "Canny 1.5", "controlnet", "sd15", control_type="canny")
XL_CANNY = ModelInfo("cannyxl", "Canny XL", "controlnet", "sdxl", control_type="canny")
SD15_DEPTH = ModelInfo("depth15", "Depth 1.5", "controlnet", "sd15", control_type="depth")
BASE = ModelInfo("sd15", "SD 1.5", "base", "sd15", tasks=("txt2img", "img2img", "inpaint", "outpaint"))
SERVER = (BASE, SD15_CANNY, XL_CANNY, SD15_DEPTH)


def test_control_types_accept_ids_aliases_and_labels():
    assert control_type("Canny").id == "canny"
    assert control_type("pose").id == "openpose"
    assert control_type("Line art").id == "lineart"
    assert control_type("sketch").id == "scribble"
    assert control_type("qrcode").id == "qrcode"  # a server's own type is kept as it is
    with pytest.raises(ControlError, match="pick a control type"):
        control_type("  ")
    with pytest.raises(ControlError, match="is not a control type"):
        control_type("canny; rm -rf")


def test_spec_checks_its_ranges_with_sentences():
    assert ControlSpec("canny", 0.8).describe() == "canny 0.8"
    assert ControlSpec("depth", 1, 0, 0.6).describe() == "depth 1 (0–0.6)"
    with pytest.raises(ControlError, match="strength must be between 0 and 2, got 2.5"):
        ControlSpec("canny", 2.5)
    with pytest.raises(ControlError, match="0 ≤ start < end ≤ 1"):
        ControlSpec("canny", 1, 0.7, 0.3)
    with pytest.raises(ControlError, match="must be a number"):
        ControlSpec("canny", float("nan"))
    with pytest.raises(ControlError, match="must be a number"):
        ControlSpec("canny", True)


@given(st.dictionaries(st.text(min_size=1, max_size=40),
                       st.builds(ControlSpec, st.sampled_from(["canny", "depth", "openpose", "scribble"]),
                                 st.floats(0, 2), st.just(0.0), st.floats(0.01, 1)), max_size=8))
def test_annotation_round_trips(marks):
    assert decode_annotation(encode_annotation(marks)) == marks


def test_annotation_is_stable_and_tolerant():
    marks = {"{b}": ControlSpec("depth"), "{a}": ControlSpec("canny", 0.5)}
    data = encode_annotation(marks)
    assert data == encode_annotation(dict(reversed(list(marks.items()))))  # same marks, same bytes
    assert json.loads(data)["version"] == ANNOTATION_VERSION
    # a broken or foreign annotation gives no marks, never an error that stops every job
    for junk in (b"", b"\xff\xfe", b"[1, 2]", b'{"version": 99, "layers": {}}', b"x" * 300_000, None):
        assert decode_annotation(junk) == {}
    mixed = json.dumps({"version": 1, "layers": {"{ok}": {"type": "canny"}, "{bad}": {"type": "canny", "strength": 9},
                                                 "{worse}": "canny"}}).encode()
    assert decode_annotation(mixed) == {"{ok}": ControlSpec("canny")}


def test_pick_controlnet_matches_type_and_family_and_says_what_is_missing():
    assert pick_controlnet(SERVER, "sd15", "canny") is SD15_CANNY
    assert pick_controlnet(SERVER, "sdxl", "canny") is XL_CANNY
    with pytest.raises(ControlError, match="depth ControlNet only for sd15 models, and the chosen model is sdxl"):
        pick_controlnet(SERVER, "sdxl", "depth")
    with pytest.raises(ControlError, match=r"no openpose ControlNet for sd15 models \(it has: canny, depth\); add one"):
        pick_controlnet(SERVER, "sd15", "openpose")
    with pytest.raises(ControlError, match="no canny ControlNet for sd2 models; add one"):
        pick_controlnet((BASE,), "sd2", "canny")


def test_preprocessors_by_type_in_preference_order():
    server = ("canny", "lineart_standard", "depth_midas", "depth_zoe", "lineart", "depth_anything", "openpose")
    assert preprocessors_for("lineart", server) == ("lineart_standard", "lineart")
    assert preprocessors_for("depth", server) == ("depth_midas", "depth_zoe", "depth_anything")
    assert preprocessors_for("openpose", server) == ("openpose",)
    assert preprocessors_for("tile", server) == ()
    assert preprocessor_type("depth_anything") == "depth" and preprocessor_type("softedge_pidi") == "softedge"
    assert preprocessor_type("mystery") == ""
    assert offered_types(SERVER + (ModelInfo("qr", "QR", "controlnet", "sd15", control_type="qrcode"),))[-1] == "qrcode"


def test_plan_controls_skips_strength_zero_and_bounds_the_count():
    layers = [("Edges", "{1}", ControlSpec("canny", 0.7)), ("Off", "{2}", ControlSpec("depth", 0.0)),
              ("Depth", "{3}", ControlSpec("depth", 1.0, 0.0, 0.5))]
    inputs = plan_controls(layers, SERVER, "sd15")
    assert [(i.layer_name, i.model, i.spec.strength) for i in inputs] == [("Edges", "canny15", 0.7), ("Depth", "depth15", 1.0)]
    assert inputs[1].unit("abc").end == 0.5 and inputs[1].unit("abc").image == "abc"
    with pytest.raises(ControlError, match="control layer 'Edges': the server has a canny ControlNet only for"):
        plan_controls(layers[:1], (XL_CANNY,), "sd15")
    many = [(f"L{i}", f"{{{i}}}", ControlSpec("canny")) for i in range(MAX_CONTROL_LAYERS + 1)]
    with pytest.raises(ControlError, match=f"at most {MAX_CONTROL_LAYERS} guide one job"):
        plan_controls(many, SERVER, "sd15")


def _rgba(width: int, height: int, value: int = 7) -> ImagePayload:
    return ImagePayload.build(ImageFormat.RGBA8, width, height, bytes([value, 0, 0, 255]) * (width * height))


CANVAS = Rect(0, 0, 200, 120)
EDGES = ControlInput("Edges", "{1}", ControlSpec("canny", 0.8, 0.0, 0.9), "canny15")
DEPTH = ControlInput("Depth", "{2}", ControlSpec("depth", 1.2), "depth15")


def test_request_sends_one_unit_per_control_layer_with_its_image():
    request = plan(Action.REFINE, GenerationSettings(prompt="x"), CANVAS, Rect(10, 10, 50, 40), controls=(EDGES, DEPTH))
    assert request.control_size == (50, 40)
    image = _rgba(50, 40, 1)
    edges, depth = _rgba(50, 40, 2), _rgba(50, 40, 3)
    job, images = request.submit("j1", image, None, [edges, depth])
    units = job.params.controls
    assert [(u.model, u.image, u.weight, u.start, u.end) for u in units] == [
        ("canny15", edges.id, 0.8, 0.0, 0.9), ("depth15", depth.id, 1.2, 0.0, 1.0)]
    assert [i.id for i in images] == [image.id, edges.id, depth.id]  # every image the job names is offered
    # two identical control images are uploaded once
    job, images = request.submit("j2", image, None, [edges, edges])
    assert len(images) == 2 and job.params.controls[1].image == edges.id


def test_generate_sends_control_images_at_the_generation_size():
    request = plan(Action.GENERATE, GenerationSettings(), CANVAS, Rect(0, 0, 96, 80), native_size=64, controls=(EDGES,))
    assert request.size is not None and request.control_size == request.size  # the result's exact size
    with pytest.raises(RequestError, match=r"control layer 'Edges' needs an rgba8 image of \d+x\d+"):
        request.submit("j", None, None, [_rgba(96, 80)])
    with pytest.raises(RequestError, match="1 control layer"):
        request.submit("j", None, None, [])
    job, _ = request.submit("j", None, None, [_rgba(*request.size)])
    assert len(job.params.controls) == 1


def test_expand_sends_control_images_of_the_canvas_before_it_grows():
    request = plan(Action.EXPAND, GenerationSettings(), CANVAS, None, controls=(EDGES,))
    assert request.input_rect == CANVAS and request.control_size == (200, 120)


def test_controls_round_trip_and_only_the_canvas_actions_take_them():
    request = plan(Action.FILL, GenerationSettings(), CANVAS, Rect(10, 10, 30, 30), controls=(EDGES, DEPTH))
    assert GenerationRequest.from_dict(json.loads(json.dumps(request.to_dict()))) == request
    with pytest.raises(RequestError, match="Upscale takes no control layers"):
        plan(Action.UPSCALE, GenerationSettings(), CANVAS, None, controls=(EDGES,))
    with pytest.raises(RequestError, match="controls must be a list"):
        GenerationRequest.from_dict({**request.to_dict(), "controls": "canny"})


def test_preprocess_request_names_the_preprocessor_and_no_model():
    request = plan(Action.PREPROCESS, GenerationSettings(prompt="ignored", model="sd15"), CANVAS, Rect(5, 5, 40, 30),
                   preprocessor="canny", control_type="canny")
    job, images = request.submit("p1", _rgba(40, 30))
    assert job.task == "preprocess" and job.params.preprocessor == "canny"
    assert job.params.model == "" and job.params.previews is False and not job.params.loras
    assert request.placement.crop == Rect(5, 5, 40, 30) and request.layer_name(0) == "Control: canny (canny)"
    with pytest.raises(RequestError, match="pick a control type and a preprocessor"):
        plan(Action.PREPROCESS, GenerationSettings(), CANVAS, None)


# ---------------------------------------------------------------- the controller, against a real server
# STUB HOST (krita_fake_host.FakeCanvas) + real ``easel serve`` on the demo models; see krita_jobs_kit.

from easel_krita import pixels  # noqa: E402
from easel_krita.control import ANNOTATION_TYPE  # noqa: E402
from krita_jobs_kit import add_layer, connect, finish, painted_doc, select  # noqa: E402
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


def _expected_control_id(layer, rect: Rect, size: tuple[int, int], host) -> str:
    """``layer``: a FakeLayer, or a (bgra, width, height) snapshot taken before the canvas changed."""
    data, width, height = layer if isinstance(layer, tuple) else (bytes(layer.data), layer.width, layer.height)
    rgba = pixels.swap_red_blue(pixels.crop(data, width, height, rect.x, rect.y, rect.width, rect.height))
    if (rect.width, rect.height) != size:
        rgba = host.scale_rgba(rgba, rect.width, rect.height, *size)
    return ImagePayload.build(ImageFormat.RGBA8, size[0], size[1], rgba).id


def test_a_marked_layer_guides_generate_with_its_pixels_model_and_strength(proxy, controllers):
    selection = Rect(16, 8, 64, 56)
    doc = painted_doc(selection)
    edges = add_layer(doc, "Edges", Rect(30, 20, 20, 30))
    controller, host = connect(proxy.url, doc, seed=3)
    controllers.append(controller)
    doc.active = edges
    assert controller.mark_active_layer(ControlSpec("canny", 0.8, 0.0, 0.9))
    assert [(c.name, c.spec) for c in controller.view.control_layers] == [("Edges", ControlSpec("canny", 0.8, 0.0, 0.9))]
    assert ANNOTATION_TYPE in doc.annotations  # the marking is kept in the document

    job_id = controller.start(Action.GENERATE)
    assert job_id is not None
    finish(controller)
    entry = controller.history.latest()
    assert [(c.layer_name, c.model, c.spec.strength) for c in entry.request.controls] == [("Edges", "demo-canny", 0.8)]
    sent = proxy.log.submitted[job_id]
    unit = sent["controls"][0]
    assert (unit["model"], unit["weight"], unit["start"], unit["end"]) == ("demo-canny", 0.8, 0.0, 0.9)
    # the layer's own pixels over the job's region, at the generation size
    assert unit["image"] == _expected_control_id(edges, selection, entry.request.size, host)
    # the control layer guided; it was kept out of the picture and is visible again
    assert edges.visible and doc.layers[-1].name == "a lighthouse · seed 3"


def test_refine_fill_and_expand_send_the_control_layer_over_their_input(proxy, controllers):
    from easel_krita.geometry import Margins

    selection = Rect(24, 16, 40, 32)
    doc = painted_doc(selection)
    edges = add_layer(doc, "Edges", Rect(30, 20, 20, 30))
    controller, host = connect(proxy.url, doc, seed=4, context=8, margins=Margins(16, 0, 8, 8))
    controllers.append(controller)
    doc.active = edges
    controller.mark_active_layer(ControlSpec("canny", 1.2))
    for action in (Action.REFINE, Action.FILL, Action.EXPAND):
        if action is Action.EXPAND:
            select(doc, None)
        reads = len(host.visible_reads)
        before = (bytes(edges.data), doc.width, doc.height)  # Expand moves the layer afterwards
        job_id = controller.start(action)
        finish(controller)
        request = controller.history.latest().request
        unit = proxy.log.submitted[job_id]["controls"][0]
        assert unit["image"] == _expected_control_id(before, request.input_rect, request.control_size, host), action
        assert unit["weight"] == 1.2
        # every read of the visible image left the control layer out; it is shown again afterwards
        assert host.visible_reads[reads:] and all("Edges" not in seen for seen in host.visible_reads[reads:]), action
        assert edges.visible


def test_a_type_without_controlnet_is_refused_before_anything_is_sent(backend, controllers):
    doc = painted_doc()
    pose = add_layer(doc, "Pose", Rect(10, 10, 20, 20))
    controller, _ = connect(backend.url, doc)
    controllers.append(controller)
    doc.active = pose
    controller.mark_active_layer(ControlSpec("openpose"))
    assert controller.start(Action.GENERATE) is None
    assert controller.view.message.startswith("Control layer 'Pose': the server has no openpose ControlNet "
                                              "for demo models (it has: canny, depth); add one")
    assert controller.stats.jobs_submitted == 0
    # strength 0 switches it off without unmarking it
    layer_id = controller.view.control_layers[0].layer_id
    controller.set_control(layer_id, ControlSpec("openpose", 0.0))
    assert controller.start(Action.GENERATE) is not None
    finish(controller)
    controller.set_control(layer_id, None)
    assert controller.view.control_layers == () and controller.view.message == "Pose is no longer a control layer."


def test_preprocess_inserts_a_new_control_layer_marked_with_its_type(backend, controllers):
    doc = painted_doc()
    controller, host = connect(backend.url, doc)
    controllers.append(controller)
    before = [layer.name for layer in doc.layers]
    job_id = controller.make_control_layer("canny")
    assert job_id is not None
    finish(controller)
    assert [layer.name for layer in doc.layers] == before + ["Control: canny (canny)"]
    made = doc.layers[-1]
    assert [op for op, _ in doc.undo] == ["add"]  # one undo step: the layer's creation
    assert set(made.data[3::4]) == {255}  # an opaque control image over the whole canvas
    rgb = set(made.data[0::4]) | set(made.data[1::4]) | set(made.data[2::4])
    assert rgb == {0, 255}  # canny: white edges on black — the dark square's outline is there
    edge_rows = {i // (4 * doc.width) for i in range(0, len(made.data), 4) if made.data[i] == 255}
    assert min(edge_rows) >= doc.height // 4 - 2 and max(edge_rows) <= doc.height // 2 + 1
    assert [(c.name, c.spec) for c in controller.view.control_layers] == [("Control: canny (canny)", ControlSpec("canny"))]
    assert bytes(doc.layers[0].data) != bytes(made.data)  # the painter's layer is untouched, the new one is separate
    # the made layer now guides the next Generate
    controller.settings = controller.settings.__class__(prompt="x", steps=2, seed=1)
    job = controller.start(Action.GENERATE)
    finish(controller)
    assert controller.history.latest().request.controls[0].layer_name == "Control: canny (canny)"
    assert job is not None


def test_preprocess_from_the_selected_layer_inside_the_selection(backend, controllers):
    doc = painted_doc(Rect(8, 8, 48, 40))
    sketch = add_layer(doc, "Sketch", Rect(20, 20, 10, 10))
    controller, _ = connect(backend.url, doc)
    controllers.append(controller)
    doc.active = sketch
    assert controller.make_control_layer("lineart", from_layer=True) is not None
    finish(controller)
    made = doc.layers[-1]
    assert made.name == "Control: lineart (lineart_standard)"
    alpha = made.data[3::4]
    inside = [alpha[y * doc.width + x] for y in range(8, 48) for x in range(8, 56)]
    assert min(inside) == 255 and sum(alpha) == 255 * 48 * 40  # only the selection
    # an unknown type has no preprocessor: a sentence, nothing sent
    assert controller.make_control_layer("tile") is None
    assert "no preprocessor that makes tile images" in controller.view.message
