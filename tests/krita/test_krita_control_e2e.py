"""Control layers, LoRA, Upscale and a dropped connection in real Krita 5.1 under Xvfb, against a
real ``easel serve`` (demo models) reached through ``krita_proxy.DropProxy``, which logs what the
plugin submitted and aborts the sockets once mid-job. The scenario (``scenarios/control_layers.py``)
clicks the docker's own buttons and triggers the plugin's actions; the assertions are here."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from krita_harness import KritaHarness, krita_available
from krita_proxy import DropProxy

pytestmark = [pytest.mark.krita, pytest.mark.skipif(krita_available() is not None, reason=str(krita_available()))]

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
ARTIFACTS = ROOT / "artifacts" / "krita"
W, H = 160, 128
SEL = [24, 16, 96, 80]


def test_control_layers_lora_upscale_and_a_dropped_connection_in_real_krita(plugin_zip, backend, tmp_path):
    proxy = DropProxy(backend.url)
    proxy.drop_on("step_preview", count=2, prompt="resume me")
    harness = KritaHarness(tmp_path, plugin_zip)
    try:
        result = harness.run(SCENARIOS / "control_layers.py", name="control", timeout=600,
                             settings={"easel": {"server_url": proxy.url}})
    finally:
        proxy.close()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for path in (harness.workdir / "artifacts").glob("*.png"):
        shutil.copy2(path, ARTIFACTS / path.name)
    result.check()
    seen = result.observations
    submitted = proxy.log.submitted

    # marking: the docker's button, saved in the document's annotation under the layer's id
    marked = seen["marked"]
    assert marked["rows"] == [["Edges", "canny", 0.8]] and marked["docker_rows"] == 1
    assert marked["message"].startswith("Edges is a control layer: canny 0.8.")
    assert json.loads(marked["annotation"])["layers"][marked["edges_id"]]["type"] == "canny"
    assert seen["lora_settings"] == [["demo-style", 0.7]]

    # Refine and Generate sent the layer as a ControlUnit (the demo canny ControlNet, weight 0.8)
    for key in ("refine", "generate"):
        job = seen[key]
        assert not job["error"], (key, job["message"])
        assert job["new_layers"] == ["a lighthouse · seed 77"], key
        assert job["edges_visible"], key  # kept out of the picture while read, shown again
        controls = job["history"]["request"]["controls"]
        assert [(c["layer_name"], c["model"], c["strength"]) for c in controls] == [("Edges", "demo-canny", 0.8)]
    sent = [params for params in submitted.values() if params.get("controls")]
    assert len(sent) >= 2
    for params in sent[:2]:
        unit = params["controls"][0]
        assert (unit["model"], unit["weight"]) == ("demo-canny", 0.8)
        assert params["loras"] == [{"id": "demo-style", "weight": 0.7}]
    # Refine: the control image is exactly the Edges layer's pixels over the selection, and the
    # image it repaints is the visible image without the control layer
    refine_job = next(job_id for job_id, params in submitted.items() if params.get("controls"))
    assert submitted[refine_job]["controls"][0]["image"] == seen["refine"]["edges_control_id"]
    sources = seen["sources"]
    assert sources["with_edges"] != sources["without_edges"]
    assert proxy.log.images[refine_job]["image"] == sources["without_edges"]

    # the preprocessor button: a new, marked, touchable layer; one undo step; redo brings the mark back
    made = seen["preprocess"]
    assert not made["error"], made["message"]
    assert made["new_layers"] == ["Control: canny (canny)"] and made["preprocessor"] == "canny"
    assert made["box"] == [0, 0, W, H] and made["min_alpha"] == 255
    assert made["rgb_count"] == 2 and made["edge_pixels"] > 0  # canny: white edges on black
    assert made["controls"] == [["Edges", "canny", 0.8], ["Control: canny (canny)", "canny", 1.0]]
    assert made["docker_rows"] == 2
    assert made["projection_corner"] == made["layer_corner"]  # the new layer shows on the canvas
    assert any(params.get("preprocessor") == "canny" for params in submitted.values())
    undo = seen["preprocess_undo"]
    assert undo["layers_after_undo"] == undo["layers_after_redo"][:-1]
    assert undo["controls_after_undo"] == ["Edges"]
    assert undo["controls_after_redo"] == ["Edges", "Control: canny (canny)"]

    # the drop: both sockets aborted at the 2nd preview; the plugin reconnected with its client id,
    # named the job, and the result landed as if nothing had happened
    resume = seen["resume"]
    assert proxy.dropped == 1 and proxy.log.drops[0].startswith("after step_preview")
    assert not resume["error"], resume["message"]
    assert resume["new_layers"] == ["resume me · seed 77"] and resume["history"]["status"] == "applied"
    assert "reconnecting" in resume["connection_states"] and resume["connection"] == "online"
    assert resume["preview_on_canvas"]  # the canvas (the image's projection) showed a step preview
    resumed = [h for h in proxy.log.hellos if h["open_jobs"]]
    assert len(resumed) == 1 and resumed[0]["client_id"] == proxy.log.welcomes[0]

    # saved and loaded: the marks come back with the layers
    reloaded = seen["reloaded"]
    assert reloaded["saved"]
    assert [c[:3] for c in reloaded["controls"]] == [["Edges", "canny", 0.8], ["Control: canny (canny)", "canny", 1.0]]
    assert reloaded["controls"][0][3] == marked["edges_id"]

    # Upscale x2: the document doubles, the result covers it, every layer keeps its place; 2 undos
    upscale = seen["upscale"]
    assert not upscale["error"], upscale["message"]
    assert upscale["size"] == [2 * W, 2 * H]
    assert upscale["new_layers"] == ["a lighthouse ×2 · seed 77"] and upscale["box"] == [0, 0, 2 * W, 2 * H]
    assert upscale["history"]["image"] == [2 * W, 2 * H]
    assert upscale["background_same_place"]
    ex, ey, ew, eh = 60, 20, 12, 80
    assert upscale["edges_box"] == [2 * ex, 2 * ey, 2 * ew, 2 * eh]
    assert seen["upscale_undone"]["size"] == [W, H]
    assert seen["upscale_undone"]["layers"] == upscale_layers_before(seen)


    # the image closed mid-job: kept with its pixels, "not applied", then applied to the open image
    closed = seen["closed"]
    assert closed["message"].startswith("Generate finished but was not placed: the image was closed.")
    assert closed["history"]["status"] == "not applied" and closed["history"]["image"] == [W, H]
    assert closed["button"] == "Apply to current image"
    assert closed["item"] == "Generate: a lighthouse · seed 77 (not applied: the image was closed)"
    assert closed["applied_layer"] == "a lighthouse · seed 77" and closed["applied_status"] == "applied"
    assert closed["applied_box"] == [0, 0, W, H] and closed["on_canvas"]
    assert closed["applied_message"] == "Applied a lighthouse · seed 77 to the current image as a new layer."
    assert closed["button_after"] == "Apply again"
    assert closed["menu"] == ["Apply again", "Reuse seed", "Copy settings", "Discard"]


def upscale_layers_before(seen) -> list[str]:
    return seen["preprocess_undo"]["layers_after_redo"] + seen["resume"]["new_layers"]
