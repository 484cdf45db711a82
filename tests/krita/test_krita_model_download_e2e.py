"""The missing-model banner in real Krita 5.1 under Xvfb (issue 17), against a real
``easel serve --allow-downloads`` whose downloads come from the loopback hub (``HF_ENDPOINT``;
``krita_downloads_kit``), in a 260x240 dock: the banner names the missing base model and offers
"Download (4.3 GB)"; clicking it downloads with the progress bar moving (the hub is paced);
afterwards the model is in the docker's model list, with no restart; on it, a layer marked canny
with the docker's controls names the missing canny ControlNet, and after its download the next
job's ControlNet is picked. Screenshots land in ``artifacts/krita/``."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from krita_downloads_kit import CANNY_ID, SD15_ID, download_server
from krita_harness import KritaHarness, krita_available

pytestmark = [pytest.mark.krita, pytest.mark.skipif(krita_available() is not None, reason=str(krita_available()))]

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
ARTIFACTS = ROOT / "artifacts" / "krita"


def test_the_banner_names_the_missing_model_and_downloads_it_with_progress(plugin_zip, tmp_path):
    pytest.importorskip("diffusers")
    with download_server(tmp_path / "ComfyUI", pace=0.03) as (server, hub):
        harness = KritaHarness(tmp_path / "krita", plugin_zip)
        result = harness.run(SCENARIOS / "model_download.py", name="download", timeout=400,
                             settings={"easel": {"server_url": server.url}})
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for path in (harness.workdir / "artifacts").glob("*.png"):
        shutil.copy2(path, ARTIFACTS / path.name)
    result.check()
    seen = result.observations
    before = seen["before"]
    assert before["text"].startswith("The server has only the demo model, which paints noise.")
    assert before["button"] == "Download (4.3 GB)" and not before["progress_shown"]
    # At 260x240 the banner tops the scrolling part, whole; the rows above it stay in view.
    assert before["top_of_scroll"] == 0 and before["label_whole"] and before["button_inside"]
    assert before["primary_inside"] and before["message_inside"]
    assert SD15_ID not in before["models"]
    progress = seen["progress"]
    values = [p["value"] for p in progress]
    assert values and values == sorted(values) and max(values) > 0  # it moved, never back
    assert any(0 < v < 1000 for v in values)  # seen midway, not only at the end
    assert all(p["text"].startswith("Downloading Stable Diffusion 1.5") and not p["button"] for p in progress if p["value"])
    assert seen["ended"] == "finished"
    after = seen["after"]
    assert SD15_ID in after["models"] and after["text"] == ("Stable Diffusion 1.5 (pruned, EMA) is on the server now. Pick it in the model list.")
    assert not after["button"] and seen["closed"] is False
    assert seen["controlnet"]["text"].startswith("The control layer “Sketch” needs a canny ControlNet for SD 1.5 models")
    assert seen["controlnet"]["button"] == "Download (723 MB)"
    assert seen["model_used"] == SD15_ID and seen["guided_by"] == [CANNY_ID]  # picked for the next job, no restart
