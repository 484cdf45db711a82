"""A reference layer and two region layers in real Krita 5.1 under Xvfb, marked with the compact
docker's own controls, against a real ``easel serve`` (demo models) behind ``krita_proxy.DropProxy``,
which logs every ``submit_job`` and the pixels of every uploaded image. Checked: what the plugin
sends (the masks' and the reference's pixels, the prompts); that the server runs the reference and
the regions on the demo model and the result lands as a painted layer; that the marks survive
saving the image as ``.kra`` and opening it again; and that closing the image right after a result
layer is finished does not crash Krita (its layer list's delayed redraw did, before the plugin
flushed it). The scenario is ``scenarios/guides.py``."""
from __future__ import annotations

import hashlib
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
W, H = 160, 128  # the scenario's image


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_reference_layer_and_two_regions_are_sent_and_survive_save_and_reopen(plugin_zip, backend, tmp_path):
    proxy = DropProxy(backend.url)
    harness = KritaHarness(tmp_path, plugin_zip)
    try:
        result = harness.run(SCENARIOS / "guides.py", name="guides", timeout=600,
                             settings={"easel": {"server_url": proxy.url}})
    finally:
        proxy.close()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for path in (harness.workdir / "artifacts").glob("*.png"):
        shutil.copy2(path, ARTIFACTS / path.name)
    result.check()
    seen = result.observations
    ids = seen["marked"]["ids"]

    # marked with the docker: the reference is a control layer of type reference at 0.6; the regions
    # are listed with their prompts and stored in the image under their layers' ids
    marked = seen["marked"]
    assert marked["controls"] == [["Photo", "reference", 0.6]]
    assert marked["panel"] == [["Door", "a red door"], ["Cat group", "a sleeping cat"]]
    assert json.loads(marked["annotation"])["layers"] == {ids["door"]: {"prompt": "a red door"},
                                                          ids["group"]: {"prompt": "a sleeping cat"}}
    assert marked["message"].startswith("Cat group is a region")

    # Refine in the selection: one reference (the Photo layer's painted box, RGBA) and two regions
    # whose masks are the layers' alpha over the selection (the group's merged alpha: 0 and 128)
    refine = seen["refine"]
    sent, uploads = proxy.log.submitted[refine["job"]], proxy.log.uploads
    [reference] = sent["references"]
    assert (reference["weight"], reference["start"], reference["end"], reference["model"]) == (0.6, 0.0, 1.0, "")
    picture = uploads[reference["image"]]
    assert (picture["format"], picture["width"], picture["height"]) == ("rgba8", *refine["photo_size"])
    assert _digest(picture["data"]) == refine["photo"]
    assert [r["prompt"] for r in sent["regions"]] == ["a red door", "a sleeping cat"]
    door_mask, cat_mask = (uploads[r["mask"]] for r in sent["regions"])
    for mask in (door_mask, cat_mask):
        assert (mask["format"], mask["width"], mask["height"]) == ("grey8", 100, 72)
    assert _digest(door_mask["data"]) == refine["door_mask"]
    assert _digest(cat_mask["data"]) == refine["group_mask"] and refine["group_alphas"] == [0, 128]
    assert sorted(set(door_mask["data"])) == [0, 255] and door_mask["data"].count(255) == 24 * 40
    assert cat_mask["data"].count(128) == 40 * 28
    assert sent["prompt"] == "a quiet street" and refine["photo_visible"]  # shown again after the read
    assert sent["region_mode"] == "separate"  # "Keep regions apart (slower)": checked by default
    # the server runs the reference and the regions on the demo model: the result is a painted layer
    # painted all over the selection
    assert refine["message"].startswith("Refine done: seed 7"), refine["message"]
    layer = refine["layer"]
    assert layer["name"] == "a quiet street · seed 7" and layer["visible"], layer
    assert layer["painted"] == layer["area"] == 100 * 72, layer

    # reopened from the .kra: the same layers are a reference and regions, and the docker lists them
    reopened = seen["reopened"]
    assert reopened["regions"] == [["Door", "a red door", ids["door"]], ["Cat group", "a sleeping cat", ids["group"]]]
    assert reopened["controls"] == [["Photo", "reference", 0.6, ids["photo"]]]
    assert reopened["panel"] == [["Door", "a red door"], ["Cat group", "a sleeping cat"]]
    # and Generate on the copy sends them again, masks at the generation size
    generate = seen["generate"]
    sent = proxy.log.submitted[generate["job"]]
    assert [r["prompt"] for r in sent["regions"]] == ["a red door", "a sleeping cat"]
    assert sent["region_mode"] == "attention" and generate["apart"] is False  # the option unchecked before Generate
    assert len(sent["references"]) == 1 and _digest(uploads[sent["references"][0]["image"]]["data"]) == refine["photo"]
    door = uploads[sent["regions"][0]["mask"]]
    assert [door["width"], door["height"]] == generate["size"] == [sent["width"], sent["height"]]
    assert _digest(door["data"]) == generate["door_scaled_mask"]
    assert generate["message"].startswith("Generate done: seed 7"), generate["message"]
    layer = generate["layer"]
    assert layer["name"] == "a quiet street · seed 7" and layer["visible"] and layer["painted"] == W * H, layer
    # the flush that keeps Krita alive then: the plugin finds the Layers docker's list and runs its slot
    assert reopened["flushed"] == 1 and "layer list" not in result.log
    assert Path(seen["screenshot"]).name == "krita-easel-regions.png"
