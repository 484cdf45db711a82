"""plugin_blender.model_setup (no bpy): what the panel names as missing for the scene's settings, and
how it follows a download through the events the dispatcher polls. The link is a recorder here;
the same flow against a real server and the loopback hub runs in Blender
(``in_blender/test_model_download.py``)."""
from __future__ import annotations

from plugin_blender.model_setup import ModelSetup, lines
from protocol import DownloadFinished, DownloadInfo, DownloadProgress, ModelInfo, ModelList, Welcome
from protocol.messages import Capabilities, Limits
from protocol.transport import Connected

DEMO = ModelInfo("demo", "Demo", "base", "demo", ("txt2img", "img2img"), demo=True)
SD15 = ModelInfo("v1-5", "SD 1.5", "base", "sd15", ("txt2img", "img2img"))
DEPTH15 = ModelInfo("depth15", "Depth", "controlnet", "sd15", control_type="depth")
OFFERS = (DownloadInfo("sd15", "base", "sd15", "Stable Diffusion 1.5", 4_265_000_000),
          DownloadInfo("sd15-depth", "controlnet-depth", "sd15", "ControlNet depth for SD 1.x", 723_000_000),
          DownloadInfo("sd15-canny", "controlnet-canny", "sd15", "ControlNet canny for SD 1.x", 723_000_000))


class Link:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def list_models(self) -> None:
        self.calls.append(("list_models",))

    def download(self, download_id: str, name: str) -> None:
        self.calls.append(("download", download_id, name))


def welcome() -> Welcome:
    caps = Capabilities(tasks=("txt2img",), samplers=(), models=(DEMO,), device="cpu")
    return Welcome(server_name="easel", server_version="t", protocol_version=1, client_id="c", capabilities=caps,
                   limits=Limits(max_frame_bytes=1 << 20))


def test_a_connect_asks_for_the_list_and_the_panel_names_the_base_model():
    link = Link()
    setup = ModelSetup(lambda: link)
    setup.handle([Connected(welcome())])
    assert link.calls == [("list_models",)] and setup.busy
    needs = setup.needs("", "txt2img", depth_controlnet=True)
    assert setup.banner(needs).text == ""  # nothing said before the list came
    setup.handle([ModelList((DEMO,), downloads=OFFERS)])
    assert not setup.busy
    shown = setup.banner(setup.needs("", "txt2img", depth_controlnet=True))
    assert shown.text.startswith("The server has only the demo model") and shown.button == "Download (4.3 GB)"


def test_the_depth_and_line_guides_need_controlnets_of_the_models_family():
    link = Link()
    setup = ModelSetup(lambda: link)
    setup.handle([ModelList((DEMO, SD15, DEPTH15), downloads=OFFERS)])
    assert setup.banner(setup.needs("v1-5", "txt2img", depth_controlnet=True)).text == ""
    missing = setup.missing(setup.needs("v1-5", "txt2img", depth_controlnet=True, line_type="canny"))
    assert missing.message == "The line guide needs a canny ControlNet for SD 1.5 models; the server has none."
    assert missing.offer.name == "sd15-canny"
    assert setup.missing(setup.needs("v1-5", "txt2img", depth_controlnet=False, line_type="canny")) is None
    link = Link()  # another server (a new URL): its list has not come yet, nothing is said
    assert not setup.listed and setup.banner(setup.needs("v1-5", "txt2img", True, "canny")).text == ""


def test_a_download_runs_with_progress_and_lists_the_models_again():
    link = Link()
    setup = ModelSetup(lambda: link)
    setup.handle([ModelList((DEMO,), downloads=OFFERS)])
    download_id = setup.download("sd15")
    assert link.calls == [("download", download_id, "sd15")] and setup.busy
    setup.handle([DownloadProgress(download_id, "v1-5.safetensors", 1, 4)])
    shown = setup.banner(setup.needs("", "txt2img", False))
    assert shown.progress == 0.25 and shown.button == "" and shown.text.startswith("Downloading Stable Diffusion 1.5")
    setup.handle([DownloadFinished(download_id, "sd15")])
    assert link.calls[-1] == ("list_models",) and setup.busy  # until the list comes
    setup.handle([ModelList((DEMO, SD15), downloads=OFFERS)])
    shown = setup.banner(setup.needs("", "txt2img", False))
    assert shown.text == "Stable Diffusion 1.5 is on the server now. Pick it in the model list." and not setup.busy
    setup.dismiss()
    assert setup.banner(setup.needs("", "txt2img", False)).text == ""


def test_without_a_connection_the_download_says_so():
    setup = ModelSetup(lambda: None)
    setup.handle([ModelList((DEMO,), downloads=OFFERS)])
    setup.download("sd15")
    assert setup.tracker.view.state == "failed" and "press the refresh button" in setup.tracker.view.text


def test_panel_lines_wrap():
    assert lines("a " * 30, 20) == ["a a a a a a a a a a"] * 3
