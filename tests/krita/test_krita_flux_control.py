"""Control layers on a model that takes its control image itself (kind ``control``, FLUX.1 Canny):
host-free planning (``easel_krita.control``), then the controller on the STUB HOST
(krita_fake_host.FakeCanvas) against a real server on the tiny Flux Canny-shaped model
(``tests/backend/tiny_flux_control.py``): the job names the model itself at full strength and runs."""
from __future__ import annotations

import pytest

from easel_krita.control import ControlError, ControlSpec, describe, offered_types, plan_controls
from easel_krita.request import Action
from protocol import ModelInfo

FLUX_CANNY = ModelInfo("flux-canny", "FLUX.1 Canny", "control", "flux", ("txt2img", "img2img", "inpaint", "outpaint"),
                       control_type="canny")
FLUX_CN = ModelInfo("flux-cn", "Flux canny ControlNet", "controlnet", "flux", control_type="canny")
SERVER = (FLUX_CANNY, FLUX_CN)


def test_a_control_model_plans_its_one_layer_naming_itself_at_full_strength():
    layers = [("Edges", "{e}", ControlSpec("canny", 0.4, 0.2, 0.7)), ("Off", "{o}", ControlSpec("depth", 0.0))]
    (only,) = plan_controls(layers, SERVER, "flux", FLUX_CANNY)
    assert (only.layer_name, only.model, only.spec) == ("Edges", "flux-canny", ControlSpec("canny", 1.0, 0.0, 1.0))
    assert plan_controls(layers, SERVER, "flux")[0].model == "flux-cn"  # a base model still picks a ControlNet
    assert offered_types(SERVER, FLUX_CANNY) == ("canny",) and "depth" in offered_types(SERVER)
    assert describe(layers[0][2], FLUX_CANNY) == "canny, full strength (set by FLUX.1 Canny)"
    with pytest.raises(ControlError, match=r"model 'FLUX.1 Canny' \(canny control model\) takes no depth ControlNet"):
        plan_controls([("Depth", "{d}", ControlSpec("depth"))], SERVER, "flux", FLUX_CANNY)
    with pytest.raises(ControlError, match="takes exactly one canny control layer, 2 are active; keep one and set "
                                           "the others' strength to 0 or unmark them"):
        plan_controls([*layers[:1], ("More", "{m}", ControlSpec("canny"))], SERVER, "flux", FLUX_CANNY)
    with pytest.raises(ControlError, match="needs exactly one canny control layer; add one"):
        plan_controls(layers[1:], SERVER, "flux", FLUX_CANNY)


# ---------------------------------------------------------------- the controller, against a real server

from easel_krita.geometry import Rect  # noqa: E402
from krita_jobs_kit import add_layer, connect, finish, painted_doc  # noqa: E402
from krita_proxy import DropProxy  # noqa: E402


@pytest.fixture(scope="module")
def flux_canny_server(tmp_path_factory):
    pytest.importorskip("diffusers")
    from backend.config import ModelEntry, ServerConfig
    from backend.demo import build_tiny_flux
    from backend.engine import Engine
    from tests.backend.test_server_harness import ServerThread
    from tests.backend.tiny_flux_control import build_tiny_flux_control

    root = tmp_path_factory.mktemp("krita-flux-control")
    control = build_tiny_flux_control(root / "flux-control", build_tiny_flux(root / "flux"))
    config = ServerConfig(port=0, models=(ModelEntry("flux-canny", str(control), control_type="canny"),),
                          device="cpu", cache_dir=root / "cache", queue_size=4)
    with ServerThread(config, Engine(config)) as server:
        relay = DropProxy(server.url)
        try:
            yield relay
        finally:
            relay.close()


def test_a_control_layer_on_flux_canny_names_the_model_and_the_server_runs_it(flux_canny_server):
    doc = painted_doc(Rect(0, 0, 64, 64))
    edges = add_layer(doc, "Edges", Rect(20, 20, 24, 24))
    controller, _host = connect(flux_canny_server.url, doc, seed=5, model="flux-canny")
    try:
        doc.active = edges
        assert controller.mark_active_layer(ControlSpec("canny", 0.6, 0.1, 0.8))
        job_id = controller.start(Action.GENERATE)
        assert job_id is not None, controller.view.message
        finish(controller)
        unit = flux_canny_server.log.submitted[job_id]["controls"]
        assert [(u["model"], u["weight"], u["start"], u["end"]) for u in unit] == [("flux-canny", 1.0, 0.0, 1.0)]
        assert doc.layers[-1].name.endswith("seed 5")  # the server ran it and the result landed
        depth = add_layer(doc, "Depth", Rect(0, 0, 10, 10))
        doc.active = depth
        controller.mark_active_layer(ControlSpec("depth"))
        assert controller.start(Action.GENERATE) is None
        assert "takes no depth ControlNet, only its own canny image" in controller.view.message
    finally:
        controller.connection.close()
