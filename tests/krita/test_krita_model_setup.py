"""Missing models in the Krita plugin (model_setup.py) with a STUB HOST (``FakeCanvas``) against a
real ``easel serve --allow-downloads`` whose downloads come from the loopback hub
(``krita_downloads_kit``). The banner names the missing base model with its download; the download
runs with progress and the model is listed afterwards; a canny control layer on the new SD 1.5
model then names the missing canny ControlNet, whose download makes the next job's ControlNet pick
work without a restart. The same in real Krita: ``test_krita_model_download_e2e.py``."""
from __future__ import annotations

import pytest

from easel_krita.clientkit.links import AsyncLink
from easel_krita.control import ControlError, ControlSpec
from easel_krita.controller import Controller
from easel_krita.clientkit.downloads import BannerState
from easel_krita.model_setup import ModelSetup
from easel_krita.request import GenerationSettings
from krita_downloads_kit import CANNY_ID, SD15_ID, download_server
from krita_fake_host import FakeCanvas
from krita_jobs_kit import add_layer, painted_doc, pump
from easel_krita.geometry import Rect

pytest.importorskip("diffusers")


def test_the_missing_model_is_named_downloaded_with_progress_and_listed(tmp_path):
    with download_server(tmp_path / "ComfyUI") as (server, hub):
        doc = painted_doc()
        controller = Controller(FakeCanvas(doc), AsyncLink(lambda e: None, client_name="krita", client_version="test"))
        setup = ModelSetup(controller)
        banners: list[BannerState] = []
        setup.subscribe(banners.append)
        controller.settings = GenerationSettings(prompt="a lighthouse")
        try:
            controller.connect(server.url)
            pump(controller, lambda: setup.banner.button)
            assert setup.banner.text.startswith("The server has only the demo model, which paints noise")
            assert setup.banner.button == "Download (4.3 GB)" and not setup.banner.error

            setup.download()
            pump(controller, lambda: setup.tracker.view.state != "running", 120)
            assert setup.tracker.view.state == "finished", setup.tracker.view.text
            shown = [b for b in banners if b.progress is not None]
            assert shown and shown[-1].progress == 1.0 and shown[-1].text.startswith("Downloading Stable Diffusion 1.5")
            assert all(b.button == "" for b in shown)  # no second click while it runs
            pump(controller, lambda: any(m.id == SD15_ID for m in controller.view.models))
            assert setup.banner == BannerState("Stable Diffusion 1.5 (pruned, EMA) is on the server now. Pick it in the model list.")

            # The new model, and a canny control layer on it: its ControlNet is missing.
            controller.set_settings(GenerationSettings(prompt="a lighthouse", model=SD15_ID))
            doc.active = add_layer(doc, "Sketch", Rect(10, 10, 20, 20))
            assert controller.mark_active_layer(ControlSpec("canny"))
            pump(controller, lambda: "ControlNet" in setup.banner.text)
            assert setup.banner.text.startswith("The control layer “Sketch” needs a canny ControlNet for SD 1.5 models")
            assert setup.banner.button == "Download (723 MB)"
            with pytest.raises(ControlError):
                controller.guidance(doc, controller.current_model())
            setup.download()
            pump(controller, lambda: any(m.id == CANNY_ID for m in controller.view.server_models), 120)
            _, inputs, _ = controller.guidance(doc, controller.current_model())
            assert [i.model for i in inputs] == [CANNY_ID]  # the next job picks it: no restart
            assert setup.missing is None and "is on the server now" in setup.banner.text
            setup.dismiss()
            assert setup.banner == BannerState()
        finally:
            controller.connection.close()
    assert [r for r in hub.requests if r[0] == "GET" and "/cdn/" in r[1]]  # the bytes came from the hub


def test_a_reference_layer_is_not_named_as_a_missing_controlnet():
    # A reference layer is a control layer of a reference type: it needs a reference adapter (the
    # server's default for the family), never a ControlNet; a canny layer beside it still does.
    from easel_krita.protocol import ModelInfo

    doc = painted_doc()
    controller = Controller(FakeCanvas(doc), AsyncLink(lambda e: None, client_name="krita", client_version="test"))
    try:
        setup = ModelSetup(controller)
        controller._update(models=(ModelInfo("sd15-model", "SD", "base", "sd15"),))
        doc.active = add_layer(doc, "Photo", Rect(10, 10, 20, 20))
        assert controller.mark_active_layer(ControlSpec("reference"))
        nets = lambda: [(n.feature, n.family) for n in setup.needs() if n.feature.startswith("controlnet-")]  # noqa: E731
        assert nets() == []
        doc.active = add_layer(doc, "Sketch", Rect(40, 10, 20, 20))
        assert controller.mark_active_layer(ControlSpec("canny"))
        assert nets() == [("controlnet-canny", "sd15")]
    finally:
        controller.connection.close()
