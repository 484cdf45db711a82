"""The panel's Models sub-panel in the real host (issue 17), against ``easel serve --allow-downloads
--models-dir DIR`` whose downloads come from the hub-shaped loopback server (``HF_ENDPOINT``;
``tests/backend/hub_presets.py``, stdlib only, runs here). The missing base model is named with a
Download button; the Download operator runs it while the panel shows the progress bar; afterwards
the model is in the server's list, and picking it with Depth Guide: ControlNet Depth and a canny
line guide names the missing canny ControlNet next. The dispatcher is called directly: timers never
fire in the module build. The panel is drawn into a recording layout (the module build has no window)."""
from __future__ import annotations

import sys
import time
import types
from pathlib import Path

import bpy
import pytest

from conftest import ROOT, WAIT_S, serve
from test_actions import OperatorProperties, RecordingLayout
from test_texture_from_depth import configure

sys.path.insert(0, str(ROOT / "tests" / "backend"))
from hub_presets import SD15_ID, preset_hub  # noqa: E402


class PanelLayout(RecordingLayout):
    """Also records the progress bars (``UILayout.progress``, Blender 4.0+) and operator values."""

    def __init__(self) -> None:
        super().__init__()
        self.progress_bars: list[float] = []
        self.buttons: list[tuple[str, str, dict]] = []

    def progress(self, factor=0.0, type="BAR", text=""):
        parameters = bpy.types.UILayout.bl_rna.functions["progress"].parameters  # the real layout's
        assert {"factor", "type", "text"} <= set(parameters.keys()) and type in ("BAR", "RING")
        self.progress_bars.append(factor)

    def operator(self, idname, text="", **_):
        props = super().operator(idname)
        self.buttons.append((idname, text, props.values))
        return props


def draw(easel) -> PanelLayout | None:
    """The Models sub-panel as the sidebar would draw it now (``None`` when its poll hides it)."""
    panel = easel.setup_panel.VIEW3D_PT_easel_models
    if not panel.poll(bpy.context):
        return None
    layout = PanelLayout()
    panel.draw(types.SimpleNamespace(layout=layout), bpy.context)
    return layout


def pump(easel, until, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, easel.runtime.get().setup.tracker.view
        easel.runtime.dispatch()
        time.sleep(0.02)


@pytest.fixture
def download_server(backend_cache, tmp_path):
    hub = preset_hub(pace=0.04)
    models = tmp_path / "ComfyUI"
    (models / "models" / "checkpoints").mkdir(parents=True)
    try:
        with serve(backend_cache, tmp_path / "serve.log", "--models-dir", str(models), "--allow-downloads",
                   env={"HF_ENDPOINT": hub.url}) as server:
            yield server
    finally:
        hub.close()


def test_the_panel_names_the_missing_model_and_downloads_it_with_progress(extension, download_server):
    easel = extension
    configure(easel, download_server.url)
    assert bpy.ops.easel.connect() == {"FINISHED"}
    state = easel.runtime.get()
    pump(easel, lambda: state.setup.listed)
    layout = draw(easel)
    assert layout is not None
    assert " ".join(layout.labels).startswith("The server has only the demo model, which paints noise.")
    assert layout.buttons == [("easel.download_model", "Download (4.3 GB)", {"download": "sd15"})]

    assert bpy.ops.easel.download_model(download="sd15") == {"FINISHED"}
    assert not easel.setup_panel.EASEL_OT_download_model.poll(bpy.context)  # one at a time
    bars = []
    while state.setup.running:
        easel.runtime.dispatch()
        layout = draw(easel)
        if layout.progress_bars:
            bars.append(layout.progress_bars[-1])
            said = " ".join(layout.labels)
            assert not layout.buttons and said.startswith("Downloading Stable Diffusion 1.5" if bars[-1] else "Asking")
        time.sleep(0.02)
    assert bars and bars == sorted(bars) and any(0 < b < 1 for b in bars)  # it moved, never back
    assert state.setup.tracker.view.state == "finished", state.setup.tracker.view.text
    assert state.setup.tracker.view.fraction == 1.0
    pump(easel, lambda: any(m.id == SD15_ID for m in state.book.models))  # the list came again by itself
    layout = draw(easel)
    assert " ".join(layout.labels) == "Stable Diffusion 1.5 (pruned, EMA) is on the server now. Pick it in the model list."
    assert [b[0] for b in layout.buttons] == ["easel.dismiss_download"]

    # The new model, guided by a depth ControlNet and canny lines: its ControlNets are named next.
    configure(easel, download_server.url, model=SD15_ID, depth_guide="CONTROLNET", line_guide="CANNY")
    layout = draw(easel)
    assert " ".join(layout.labels).startswith("Texture from Depth's depth guide needs a depth ControlNet for SD 1.5 "
                                              "models; the server has none.")
    assert layout.buttons == [("easel.download_model", "Download (723 MB)", {"download": "sd15-depth"})]
    assert bpy.ops.easel.dismiss_download() == {"FINISHED"}
    bpy.context.scene.easel.depth_guide = "DEPTH2IMG"
    assert draw(easel) is None  # nothing missing, nothing said
