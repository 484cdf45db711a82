"""Live mode and Upscale with a reference layer and a region layer in real Krita 5.1 under Xvfb,
against a real ``easel serve`` (demo models: the demo family takes references and regions) behind
``krita_proxy.DropProxy``, which logs every ``submit_job`` and the pixels of every upload. Checked:
the live job started with the docker's Live button carries the reference (the layer's painted box)
and the region (its prompt; the mask is the layer's alpha over the selection); a stroke makes a job
that names both again and uploads only the picture; a new region prompt makes a job that uploads
nothing; Upscale says before the click that it does not use them, sends none and says so with its
result. The stub-host version is ``test_krita_live_guides.py``; the scenario is
``scenarios/live_guides.py``; screenshots land in ``artifacts/krita/live_guides_*.png``."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from krita_harness import KritaHarness, keep_artifacts, krita_available
from krita_proxy import DropProxy

pytestmark = [pytest.mark.krita, pytest.mark.skipif(krita_available() is not None, reason=str(krita_available()))]

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
SEL_W, SEL_H = 100, 72


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_live_jobs_carry_the_reference_and_region_layers_and_upscale_says_it_leaves_them_out(
        plugin_zip, backend, tmp_path):
    proxy = DropProxy(backend.url)
    harness = KritaHarness(tmp_path, plugin_zip)
    try:
        result = harness.run(SCENARIOS / "live_guides.py", name="live-guides", timeout=600,
                             settings={"easel": {"server_url": proxy.url}})
    finally:
        proxy.close()
    keep_artifacts(harness)
    result.check()
    seen = result.observations
    uploads = proxy.log.uploads

    on = seen["on"]
    assert not on["error"], on["status"]
    sent = proxy.log.submitted[on["job"]]
    assert sent["live"] and sent["prompt"] == "a quiet street"
    [reference] = sent["references"]
    assert (reference["weight"], reference["model"]) == (0.6, "")
    picture = uploads[reference["image"]]
    assert (picture["format"], picture["width"], picture["height"]) == ("rgba8", 40, 30)
    assert _digest(picture["data"]) == on["photo"]  # uploaded once: a second upload would double it
    [region] = sent["regions"]
    mask = uploads[region["mask"]]
    assert region["prompt"] == "a red door"
    assert (mask["format"], mask["width"], mask["height"]) == ("grey8", SEL_W, SEL_H)
    assert _digest(mask["data"]) == on["door_mask"] and mask["data"].count(255) == 24 * 40
    assert on["photo_visible"]  # the reference is hidden only while the live job reads the picture
    area = SEL_W * SEL_H
    assert on["uploaded"] == area * 4 + 40 * 30 * 4 + area  # picture, reference, mask

    stroke = seen["stroke"]
    again = proxy.log.submitted[stroke["job"]]
    assert again["references"][0]["image"] == reference["image"] and again["regions"][0]["mask"] == region["mask"]
    assert stroke["uploaded"] == area * 4 and not stroke["error"]  # the picture only

    prompt = seen["prompt"]
    assert [r["prompt"] for r in proxy.log.submitted[prompt["job"]]["regions"]] == ["a blue door"]
    assert prompt["uploaded"] == 0 and prompt["status"].startswith("Live: done")
    assert "Easel live" not in seen["off"]["names"]

    sentence = ("Upscale does not use the reference layer 'Photo' and the region layer 'Door': "
                "the server's upscale takes no references or regions.")
    assert seen["upscale_before"] == sentence
    upscale = seen["upscale"]
    [job] = upscale["jobs"]
    assert not proxy.log.submitted[job].get("references") and not proxy.log.submitted[job].get("regions")
    assert upscale["message"].startswith("Upscale done") and upscale["message"].endswith(sentence)
    assert not upscale["error"] and upscale["size"] == [320, 256]
