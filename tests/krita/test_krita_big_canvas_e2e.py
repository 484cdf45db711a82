"""Big canvases in real Krita 5.1 under Xvfb, against a real ``easel serve`` (demo model; issue 13).

Generate on a 640×480 canvas (the demo model draws ~152²): the compact docker says the plan before
the click ("Big canvas: Generate makes 176×136, then ×3.6 in a tiled pass."), the plugin sends one ``txt2img`` at the
first size and one tiled ``upscale`` per pass, each fed the previous image, the progress line names
the passes, and one result layer covers the canvas. A second Generate whose last pass the server
refuses still places the image as far as it got (one undo step) and says which pass failed and
why. Screenshots land in ``artifacts/krita/``.
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

    # the last pass refused by the server: the image of the pass before (or the first image) is
    # placed over the whole canvas as one undo step, and the message line says which pass failed
    failed = seen["failed_pass"]
    last = len(plan.passes)
    best = list(plan.sizes()[last - 1])
    what = "the first image" if last == 1 else f"pass {last - 1}'s image"
    assert len(failed["failing"]) == 1 and failed["image"] == best and failed["seeds"] == [32]
    assert failed["layers"] == ["Background", "a harbour at dawn · seed 31", "a harbour at dawn · seed 32"]
    assert failed["bounds"] == [0, 0, 640, 480] and failed["opaque"]
    assert failed["rows_added"] == 1, failed
    assert failed["error"] and failed["message"].startswith("Generate done: seed 32"), failed["message"]
    assert f"Refine pass {last} of {last} failed (invalid_parameter: " in failed["message"]
    assert f"; placed {what} ({best[0]}×{best[1]}) scaled ×" in failed["message"]
    assert failed["shown"] == failed["message"]  # on the docker's message line
    assert seen["failed_pass_undone"] == ["Background", "a harbour at dawn · seed 31"]
