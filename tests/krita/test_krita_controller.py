"""The controller and the connection against a real ``easel serve`` (demo model), with a STUB HOST
(``krita_fake_host.FakeCanvas``, an in-memory canvas) in place of Krita. The asyncio loop is driven by
calling ``Connection.tick()`` in a loop, as Krita's QTimer does. The same flows run in real Krita in
``test_krita_e2e.py``."""
from __future__ import annotations

import time

import pytest

from easel_krita.clientkit.links import AsyncLink, ReconnectPolicy
from easel_krita.controller import Controller
from easel_krita.geometry import Margins, Rect
from easel_krita.request import Action, GenerationSettings
from krita_fake_host import FakeCanvas, FakeDoc, FakeLayer
from krita_jobs_kit import pump

W, H = 96, 80
BACKGROUND = bytes([40, 80, 160, 255])  # BGRA


def _doc(selection: Rect | None = None) -> FakeDoc:
    doc = FakeDoc(W, H)
    background = FakeLayer("Background", W, H)
    background.data[:] = BACKGROUND * (W * H)
    background.data[0:4] = bytes([1, 2, 3, 255])  # one odd pixel, so the layer is not uniform
    doc.layers.append(background)
    if selection is not None:
        mask = bytearray(W * H)
        for y in range(selection.y, selection.bottom):
            mask[y * W + selection.x:y * W + selection.right] = b"\xff" * selection.width
        doc.selection = bytes(mask)
    return doc


@pytest.fixture
def make(backend):
    made = []

    def factory(doc: FakeDoc, **settings) -> tuple[Controller, FakeCanvas]:
        host = FakeCanvas(doc)
        controller = Controller(host, AsyncLink(lambda e: None, client_name="krita", client_version="test"))
        controller.settings = GenerationSettings(prompt="a lighthouse", steps=4, **settings)
        controller.connect(backend.url)
        pump(controller, lambda: controller.view.connection == "online")
        made.append(controller)
        return controller, host

    yield factory
    for controller in made:
        controller.connection.close()


def test_connects_and_lists_the_servers_models(make):
    controller, _ = make(_doc())
    assert controller.view.models and controller.view.models[0].id
    assert "Connected to" in controller.view.status and controller.view.samplers


def test_reference_adapters_and_controlnets_are_never_offered_as_the_model(make):
    controller, _ = make(_doc())
    listed = {m.id: m.kind for m in controller.view.server_models}
    assert listed["demo-ip-adapter"] == "reference"  # the demo server lists a reference adapter (tasks empty)
    offered = [m.id for m in controller.view.models]
    assert "demo" in offered and "demo-ip-adapter" not in offered
    assert all(listed[i] not in ("controlnet", "reference") for i in offered)
    # any other kind that runs the plugin's tasks is offered (Flux's full control models: kind ``control``)
    from dataclasses import replace

    from protocol import ModelList

    base = controller.view.models[0]
    adapter = replace(base, id="ip-x", name="IP X", kind="reference", tasks=(), control_type="ip_adapter")
    control = replace(base, id="flux-depth", name="Flux Depth", kind="control", tasks=("txt2img", "img2img"))
    controller.handle_event(ModelList((adapter, control, base)))
    assert [m.id for m in controller.view.models] == ["flux-depth", base.id]


def test_generate_into_a_selection_makes_one_masked_layer_from_the_preview_layer(make):
    selection = Rect(20, 10, 40, 30)
    doc = _doc(selection)
    original = bytes(doc.layers[0].data)
    controller, host = make(doc, seed=7)
    job = controller.start(Action.GENERATE)
    assert job is not None
    pump(controller, lambda: not controller.jobs)
    assert not controller.view.message_is_error, controller.view.message
    assert [layer.name for layer in doc.layers] == ["Background", "a lighthouse · seed 7"]
    result = doc.layers[1]
    assert bytes(doc.layers[0].data) == original  # the painter's layer is untouched
    alpha = bytes(result.data[3::4])
    inside = [alpha[y * W + x] for y in range(selection.y, selection.bottom) for x in range(selection.x, selection.right)]
    assert min(inside) == 255
    assert sum(alpha) == 255 * selection.area  # transparent everywhere outside the selection
    assert controller.stats.previews_drawn >= 1
    # the preview layer became the result: one undoable add, no remove
    assert [op for op, _ in doc.undo] == ["add"]
    assert result.visible and not result.locked
    assert len(controller.history) == 1 and controller.history.latest().request.seed == 7


def test_refine_and_fill_keep_everything_outside_the_selection(make):
    selection = Rect(30, 20, 24, 24)
    doc = _doc(selection)
    controller, _ = make(doc, seed=3, strength=0.6, context=16)
    for action in (Action.REFINE, Action.FILL):
        assert controller.start(action) is not None
        pump(controller, lambda: not controller.jobs)
        assert not controller.view.message_is_error, controller.view.message
    names = [layer.name for layer in doc.layers]
    assert names == ["Background", "a lighthouse · seed 3", "a lighthouse · seed 3"]
    for layer in doc.layers[1:]:
        block = layer.block(selection)
        assert set(block[3::4]) == {255}
        assert sum(layer.data[3::4]) == 255 * selection.area


def test_expand_grows_the_canvas_and_keeps_layers_in_place(make):
    doc = _doc()
    controller, _ = make(doc, seed=5, margins=Margins(16, 8, 0, 24))
    controller.start(Action.EXPAND)
    pump(controller, lambda: not controller.jobs)
    assert not controller.view.message_is_error, controller.view.message
    assert (doc.width, doc.height) == (W + 16, H + 32)
    background = doc.layers[0]
    # the odd pixel moved with its layer, by (left, top)
    assert background.block(Rect(16, 8, 1, 1)) == bytes([1, 2, 3, 255])
    assert doc.layers[1].block(Rect(0, 0, doc.width, doc.height))[3::4] == b"\xff" * (doc.width * doc.height)


def test_cancel_removes_the_preview_and_changes_nothing(make):
    doc = _doc(Rect(10, 10, 50, 50))
    original = bytes(doc.layers[0].data)
    controller, _ = make(doc)
    controller.settings = GenerationSettings(prompt="slow", steps=150)
    controller.start(Action.GENERATE)
    pump(controller, lambda: controller.stats.previews_drawn >= 1)
    assert len(doc.layers) == 2 and doc.layers[1].locked and doc.layers[1].visible  # the preview, locked
    assert controller.cancel_all() == 1
    pump(controller, lambda: not controller.jobs)
    assert controller.view.message == "Generate cancelled."
    assert [layer.name for layer in doc.layers] == ["Background"] and bytes(doc.layers[0].data) == original
    assert len(controller.history) == 0


def test_server_errors_reach_the_painter_as_sentences(make):
    doc = _doc()
    controller, _ = make(doc)
    controller.settings = GenerationSettings(sampler="no_such_sampler")  # only the server knows its samplers
    controller.start(Action.GENERATE)
    pump(controller, lambda: not controller.jobs)
    assert controller.view.message_is_error
    assert controller.view.message.startswith("Generate failed: Unknown sampler 'no_such_sampler'")
    assert "Traceback" not in controller.view.message and len(doc.layers) == 1


def test_steps_above_the_servers_limit_are_refused_before_sending(make):
    controller, _ = make(_doc())
    controller.settings = GenerationSettings(steps=180)
    assert controller.start(Action.GENERATE) is None
    assert controller.view.message_is_error and "steps must be between 1 and 150, got 180" in controller.view.message.lower()
    assert controller.stats.jobs_submitted == 0


def test_fill_without_selection_is_refused_before_sending(make):
    controller, _ = make(_doc())
    assert controller.start(Action.FILL) is None
    assert controller.view.message == "Fill repaints the selection: select the area to fill first."
    assert controller.stats.jobs_submitted == 0


def test_history_apply_again_reuse_seed_and_copy_settings(make):
    doc = _doc(Rect(0, 0, 64, 64))
    controller, _ = make(doc, seed=11, negative_prompt="fog")
    controller.start(Action.GENERATE)
    pump(controller, lambda: not controller.jobs)
    entry = controller.history.latest()
    controller.settings = GenerationSettings()
    controller.apply_history(entry.id)
    pump(controller, lambda: len(doc.layers) == 3)
    assert bytes(doc.layers[2].data) == bytes(doc.layers[1].data)  # the same layer, again
    controller.reuse_seed(entry.id)
    assert controller.settings.seed == 11 and controller.settings.prompt == ""
    controller.copy_settings(entry.id)
    assert controller.settings.prompt == "a lighthouse" and controller.settings.negative_prompt == "fog"


def test_unreachable_server_is_reported_and_retried():
    doc = _doc()
    controller = Controller(FakeCanvas(doc), AsyncLink(lambda e: None, client_name="krita", policy=ReconnectPolicy(first_backoff=(0.2, 0.2))))
    controller.connect("ws://127.0.0.1:9")  # nothing listens on the discard port
    try:
        pump(controller, lambda: "Cannot reach" in controller.view.status, timeout=20)
        assert "Trying again in" in controller.view.status
        assert controller.start(Action.GENERATE) is not None
        pump(controller, lambda: not controller.jobs, timeout=20)
        assert controller.view.message.startswith("Generate was not sent: not connected")
    finally:
        controller.connection.close()


def test_connect_to_another_address_tries_only_that_one_and_the_view_says_so(backend):
    """Issue 12, defect 1: Krita starts retrying an address where nothing listens; the painter types
    the server's address and presses Connect. From then on only that address is tried: the status
    stays "Connected", and a job's progress never says it waits for the connection."""
    controller = Controller(FakeCanvas(_doc()), AsyncLink(lambda e: None, client_name="krita",
                                                          policy=ReconnectPolicy(first_backoff=(0.1, 0.1))))
    statuses: list[str] = []
    progress: list[str] = []
    controller.subscribe(lambda view: (statuses.append(view.status), progress.append(view.progress_text)))
    controller.settings = GenerationSettings(prompt="a lighthouse", steps=4)
    try:
        controller.connect("ws://127.0.0.1:9")  # nothing listens on the discard port
        pump(controller, lambda: "Cannot reach" in controller.view.status, timeout=20)
        controller.connect(backend.url)
        pump(controller, lambda: controller.view.connection == "online")
        del statuses[:], progress[:]
        # Several of the old address's retry delays go by; a job runs to its end meanwhile.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            controller.connection.tick(0.01)
            time.sleep(0.002)
        assert controller.start(Action.GENERATE) is not None
        pump(controller, lambda: not controller.jobs)
        assert not controller.view.message_is_error, controller.view.message
        assert controller.view.connection == "online" and controller.view.status.startswith("Connected to")
        assert not [s for s in statuses if "Cannot reach" in s or "127.0.0.1:9." in s]
        assert not [p for p in progress if "waiting for the connection" in p]
        assert controller.connection.url == backend.url and not controller.connection.connecting
    finally:
        controller.connection.close()


def test_batch_makes_one_group_one_undo_step_with_a_layer_per_image_named_with_its_seed(make):
    doc = _doc(Rect(8, 8, 64, 64))
    controller, _ = make(doc, seed=100, batch_size=2)
    controller.start(Action.GENERATE)
    pump(controller, lambda: not controller.jobs)
    assert not controller.view.message_is_error, controller.view.message
    assert [layer.name for layer in doc.layers[1:]] == ["a lighthouse · 2 images, seeds 100–101"]
    group = doc.layers[1]
    assert [layer.name for layer in group.children] == ["a lighthouse · seed 100", "a lighthouse · seed 101"]
    assert all(set(layer.block(Rect(8, 8, 64, 64))[3::4]) == {255} for layer in group.children)
    # the preview layer went (Krita undoes its add: no trace), then the whole batch is one step
    assert doc.undo[-1] == ("add", group) and [op for op, layer in doc.undo if layer is not group] == ["add", "remove"]
    assert controller.history.latest().seeds == (100, 101)


def test_model_that_cannot_run_the_action_is_refused_with_a_sentence(make):
    from dataclasses import replace

    from protocol import ModelList

    controller, _ = make(_doc())
    base = controller.view.models[0]
    inpaint_only = replace(base, id="inpaint-x", name="Inpaint X", kind="inpaint", tasks=("inpaint", "outpaint"))
    depth_only = replace(base, id="depth-x", name="Depth X", kind="depth", tasks=("depth2img",))
    controller.handle_event(ModelList((inpaint_only, depth_only)))
    assert [m.id for m in controller.view.models] == ["inpaint-x"]  # depth-only models are not offered
    controller.settings = replace(controller.settings, model="inpaint-x")
    assert controller.start(Action.GENERATE) is None
    assert controller.view.message == "The model Inpaint X cannot generate (txt2img); pick another model in the Easel docker."


def test_reconnects_after_the_server_restarts_and_says_so():
    from krita_backend import BackendServer

    first = BackendServer()
    port = first.port
    controller = Controller(FakeCanvas(_doc()), AsyncLink(lambda e: None, client_name="krita"))
    try:
        controller.connect(first.url)
        pump(controller, lambda: controller.view.connection == "online")
        first.stop()
        pump(controller, lambda: controller.view.connection == "reconnecting", timeout=30)
        assert controller.view.status == f"Lost the connection to the Easel server at {first.url}; reconnecting…"
        second = BackendServer("--port", str(port))
        try:
            pump(controller, lambda: controller.view.connection == "online", timeout=60)
            assert controller.view.status.startswith("Connected to easel")
        finally:
            second.stop()
    finally:
        first.stop()
        controller.connection.close()
