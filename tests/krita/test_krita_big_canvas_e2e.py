"""Big canvases in real Krita 5.1 under Xvfb, against a real ``easel serve`` (demo model; issue 13).

Generate on a 640×480 canvas (the demo model draws ~152²): the compact docker says the plan before
the click ("Big canvas: Generate makes 176×136, then ×3.6 in a tiled pass."), the plugin sends one ``txt2img`` at the
first size and one tiled ``upscale`` per pass, each fed the previous image, the progress line names
the passes, and one result layer covers the canvas. Screenshots land in ``artifacts/krita/``.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from easel_krita.big_canvas import PLAN_PREFIX
from easel_krita.size_plan import plan_size
from krita_harness import KritaHarness, keep_artifacts, krita_available

pytestmark = [pytest.mark.krita, pytest.mark.skipif(krita_available() is not None, reason=str(krita_available()))]

SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def test_generate_on_a_big_canvas_says_the_plan_and_refines_up_through_tiled_passes(plugin_zip, backend, tmp_path):
    harness = KritaHarness(tmp_path, plugin_zip)
    result = harness.run(SCENARIOS / "big_canvas.py", name="big", timeout=400,
                         settings={"easel": {"server_url": backend.url}})
    keep_artifacts(harness)
    result.check()
    seen = result.observations
    plan = plan_size(640, 480, seen["native"])
    assert plan.refines and plan.stretch < 1.02
    assert seen["before_click"] == f"{PLAN_PREFIX}{plan.describe()}."  # said before anything is sent
    assert "scaled" not in seen["before_click"]  # refined all the way: no stretch to mention
    jobs = seen["jobs"]
    assert [job["task"] for job in jobs] == ["txt2img"] + ["upscale"] * len(plan.passes)
    assert (jobs[0]["width"], jobs[0]["height"]) == plan.first and jobs[0]["inputs"] == []
    sizes = plan.sizes()
    for index, job in enumerate(jobs[1:]):
        assert job["factor"] == pytest.approx(plan.passes[index]) and job["seed"] == 31
        assert job["inputs"] == [list(sizes[index])]  # each pass is fed the previous image
    lines = seen["lines"]
    assert any(plan.describe() in line for line in lines), lines
    assert any("refining" in line for line in lines), lines
    assert seen["layers"] == ["Background", "a harbour at dawn · seed 31"]
    assert seen["result_bounds"] == [0, 0, 640, 480]
    assert seen["message"].startswith("Generate done: seed 31")
