"""A batch is one undo step, in real Krita 5.1 under Xvfb against a real ``easel serve`` (issue 13).

Generate with batch 3 lands as one group holding a layer per image (named with its seed, each with
pixels); the Undo History grows by one step (the preview layer's own step was undone, no trace);
one undo takes all three away and one redo brings them back. Then the history grid's actions: a click
previews a result on the canvas, a second click hides it leaving no undo step, a double click applies
it as a new layer.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from krita_harness import KritaHarness, krita_available

pytestmark = [pytest.mark.krita, pytest.mark.skipif(krita_available() is not None, reason=str(krita_available()))]

SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def test_a_batch_of_three_is_one_group_and_one_undo_takes_all_of_it_away(plugin_zip, backend, tmp_path):
    harness = KritaHarness(tmp_path, plugin_zip)
    result = harness.run(SCENARIOS / "batch_undo.py", name="batch", timeout=300,
                         settings={"easel": {"server_url": backend.url}})
    result.check()
    seen = result.observations
    assert seen["message"].startswith("Generate done: seed 40"), seen["message"]
    group = ["three pears · 3 images, seeds 40–42",
             [[f"three pears · seed {seed}", True, 128, 96] for seed in (40, 41, 42)]]
    assert seen["tree"] == ["Background", group]
    assert seen["steps_added"] == 1
    assert seen["after_undo"] == ["Background"]
    assert seen["after_redo"] == ["Background", group]

    # history grid: a click previews (a locked layer, for the look), a second click leaves no trace,
    # a double click applies the image as a layer of its own
    preview = seen["preview"]
    assert preview["name"] == "Easel preview: three pears · seed 41" and preview["locked"], preview
    assert "double-click it to apply" in preview["message"]
    assert seen["preview_hidden"] == {"tree": ["Background", group], "current_step_moved": 0}
    assert seen["applied"]["tree"] == ["Background", group, "three pears · seed 41"]
    assert seen["applied"]["steps"] == 1
