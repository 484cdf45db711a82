"""What a live job carries and what makes one, against a real ``easel serve`` (demo models:
ControlNets ``demo-canny``/``demo-depth-control``, LoRA ``demo-style``) through the logging relay
``krita_proxy.DropProxy`` (what the plugin really submitted), with the STUB HOST of
``krita_live_kit`` in place of Krita (real Krita: ``test_krita_live_e2e.py``).

* Live jobs send the document's control layers as ControlNet units like the other actions; a
  stroke on a control layer makes a live job with the new control image, uploaded once; a stroke on
  the picture does not upload the unchanged control image again; a marking change (strength) makes
  a job and uploads nothing.
* Changing the prompt, negative prompt, model, LoRAs, the form's seed (live seed "pick one"), live
  strength, live steps or live seed while live is on makes a new live job — debounced, without a
  canvas change or Refresh; a change no live job depends on sends nothing.
"""
from __future__ import annotations

from dataclasses import replace

import pytest

from easel_krita import pixels
from easel_krita.control import ControlSpec
from easel_krita.geometry import Rect
from easel_krita.live import LIVE_LAYER_NAME, LiveSettings
from easel_krita.loras import LoraChoice
from easel_krita.protocol import ImageFormat, ImagePayload
from krita_fake_host import FakeLayer
from krita_live_kit import H, W, live_doc, make, pump, settle, uploaded  # noqa: F401  (make: a fixture)
from krita_proxy import DropProxy


@pytest.fixture
def proxy(backend):
    relay = DropProxy(backend.url)
    yield relay
    relay.close()


def control_id(layer: FakeLayer, rect: Rect, size: tuple[int, int], host) -> str:
    """The content id of ``layer``'s pixels over ``rect`` as a control image of ``size``."""
    rgba = pixels.swap_red_blue(layer.block(rect))
    if (rect.width, rect.height) != size:
        rgba = host.scale_rgba(rgba, rect.width, rect.height, *size)
    return ImagePayload.build(ImageFormat.RGBA8, size[0], size[1], rgba).id


def sent(proxy: DropProxy, live) -> dict:
    """The parameters of the newest live job as the server received them."""
    return proxy.log.submitted[f"live-{live.jobs.session}-{live.stats.jobs_sent}"]


def next_result(controller, live, jobs_before: int) -> None:
    """Wait for exactly one more live job and its result."""
    pump(controller, lambda: live.stats.jobs_sent == jobs_before + 1
         and live.stats.results_drawn[-1:] == [f"live-{live.jobs.session}-{jobs_before + 1}"] and not live.jobs.sending)


def test_live_jobs_are_guided_by_control_layers_and_follow_strokes_on_them(make, proxy):
    selection = Rect(16, 8, 64, 56)
    doc = live_doc(selection)
    edges = FakeLayer("Edges", W, H)
    doc.layers.insert(1, edges)
    controller, host, live = make(doc, proxy.url)
    host.paint(doc, edges, Rect(30, 20, 20, 24), bytes([255, 255, 255, 255]))
    doc.undo.clear()
    doc.active = edges
    assert controller.mark_active_layer(ControlSpec("canny", 0.8, 0.0, 0.9))

    assert live.enable()
    pump(controller, lambda: live.stats.results_drawn)
    assert not live.view.error, live.view.status
    unit, = sent(proxy, live)["controls"]
    assert (unit["model"], unit["weight"], unit["start"], unit["end"]) == ("demo-canny", 0.8, 0.0, 0.9)
    assert unit["image"] == control_id(edges, selection, (selection.width, selection.height), host)
    # The control layer guides; it is not part of the picture the live job refines.
    assert host.source_reads and all("Edges" not in seen for seen in host.source_reads)
    assert edges.visible
    area = selection.area * 4
    assert uploaded(controller) == 2 * area  # the picture and the control image, once each

    # A stroke on the control layer: a new live job whose unit names the new pixels, uploaded once.
    jobs, before, first_control = live.stats.jobs_sent, uploaded(controller), unit["image"]
    host.paint(doc, edges, Rect(20, 40, 30, 6), bytes([255, 255, 255, 255]))
    next_result(controller, live, jobs)
    unit, = sent(proxy, live)["controls"]
    assert unit["image"] == control_id(edges, selection, (selection.width, selection.height), host) != first_control
    assert uploaded(controller) == before + area  # only the control image: the picture did not change
    assert live.stats.control_images[-1] == (unit["image"],)

    # A stroke on the picture: the unchanged control layer is named again, not uploaded again.
    jobs, before, control = live.stats.jobs_sent, uploaded(controller), unit["image"]
    host.paint(doc, doc.layers[0], Rect(24, 12, 8, 8), bytes([0, 0, 250, 255]))
    next_result(controller, live, jobs)
    assert sent(proxy, live)["controls"][0]["image"] == control
    assert uploaded(controller) == before + area  # the picture only

    # A new strength (an annotation, no undo step, no change signal): a job, nothing uploaded.
    jobs, before = live.stats.jobs_sent, uploaded(controller)
    controller.set_control(edges.uid, ControlSpec("canny", 0.5))
    next_result(controller, live, jobs)
    assert sent(proxy, live)["controls"][0]["weight"] == 0.5
    assert uploaded(controller) == before

    # Unmarked: the next live job has no unit.
    jobs = live.stats.jobs_sent
    controller.set_control(edges.uid, None)
    next_result(controller, live, jobs)
    assert not sent(proxy, live).get("controls")
    live.disable()
    assert [layer.name for layer in doc.layers] == ["Background", "Edges", "Paint"]
    assert [what for what, _ in doc.undo] == ["paint", "paint"]  # only the painter's strokes


def test_a_control_type_the_server_lacks_holds_live_jobs_back_with_a_sentence_until_fixed(make):
    doc = live_doc()
    pose = FakeLayer("Pose", W, H)
    doc.layers.insert(1, pose)
    controller, host, live = make(doc)
    doc.active = pose
    controller.mark_active_layer(ControlSpec("openpose"))
    assert live.enable()
    pump(controller, lambda: live.view.error)
    assert live.view.status.startswith("Live: control layer 'Pose': the server has no openpose ControlNet")
    assert live.stats.jobs_sent == 0 and LIVE_LAYER_NAME in [layer.name for layer in doc.layers]
    controller.set_control(pose.uid, ControlSpec("openpose", 0.0))  # switched off: live goes on by itself
    pump(controller, lambda: live.stats.results_drawn)
    assert not live.view.error


def test_form_and_live_settings_changes_make_a_new_live_image_without_a_canvas_change(make, proxy):
    doc = live_doc()
    controller, host, live = make(doc, proxy.url)
    live.set_settings(LiveSettings(strength=0.6, steps=2, seed=None))  # the live seed follows the form's
    controller.set_settings(replace(controller.settings, seed=11))
    assert live.enable()
    pump(controller, lambda: live.stats.results_drawn and not live.jobs.sending)
    assert sent(proxy, live)["seed"] == 11
    model = controller.current_model()
    assert model is not None

    changes = [
        ("prompt", lambda: controller.set_settings(replace(controller.settings, prompt="a red lighthouse")),
         lambda p: p["prompt"] == "a red lighthouse"),
        ("negative prompt", lambda: controller.set_settings(replace(controller.settings, negative_prompt="fog")),
         lambda p: p["negative_prompt"] == "fog"),
        ("model", lambda: controller.set_settings(replace(controller.settings, model=model.id)),
         lambda p: p["model"] == model.id),
        ("LoRA", lambda: controller.set_settings(replace(controller.settings, loras=(LoraChoice("demo-style", 0.7),))),
         lambda p: [(lora["id"], lora["weight"]) for lora in p["loras"]] == [("demo-style", 0.7)]),
        ("form seed", lambda: controller.set_settings(replace(controller.settings, seed=12)),
         lambda p: p["seed"] == 12),
        ("live strength", lambda: live.set_settings(replace(live.settings, strength=0.8)),
         lambda p: p["strength"] == 0.8),
        ("live steps", lambda: live.set_settings(replace(live.settings, steps=3)),
         lambda p: p["steps"] == 4),  # 3 steps that run at strength 0.8: ceil(3 / 0.8)
        ("live seed", lambda: live.set_settings(replace(live.settings, seed=99)),
         lambda p: p["seed"] == 99),
    ]
    for name, change, check in changes:
        jobs, canvas_changes = live.stats.jobs_sent, live.stats.changes
        change()
        next_result(controller, live, jobs)
        assert check(sent(proxy, live)), (name, sent(proxy, live))
        assert live.stats.changes == canvas_changes, name  # no canvas change was needed
        assert not live.view.error, (name, live.view.status)
    assert uploaded(controller) == W * H * 4  # the picture went once; every later job named it by id

    # Typing is debounced: a burst of keystrokes makes one job, with the last text.
    jobs = live.stats.jobs_sent
    for end in range(1, 8):
        controller.set_settings(replace(controller.settings, prompt="a blue boat"[:end + 4]), notify=False)
        settle(controller, 0.01)
    next_result(controller, live, jobs)
    assert sent(proxy, live)["prompt"] == "a blue boat"
    settle(controller, 0.3)
    assert live.stats.jobs_sent == jobs + 1

    # A change no live job depends on (Expand's margins, batch size) sends nothing.
    unchanged, jobs = live.stats.unchanged, live.stats.jobs_sent
    controller.set_settings(replace(controller.settings, batch_size=3, context=8))
    pump(controller, lambda: live.stats.unchanged == unchanged + 1)
    settle(controller, 0.2)
    assert live.stats.jobs_sent == jobs
    # Off: changes are not followed any more.
    live.disable()
    controller.set_settings(replace(controller.settings, prompt="nothing"))
    settle(controller, 0.3)
    assert live.stats.jobs_sent == jobs
